"""How long until a SIGKILLed worker's in-flight variation runs again, per broker?

One job (one variation, 3 s of offline latency) goes to worker A. Once A has
received the variation, worker B starts; then A is SIGKILLed (an OOM kill, a lost
node). Printed: the time from the kill until B receives the variation, and until
the job's result document exists. One run per broker, with the DEFAULT settings
(IMAGEGEN_VISIBILITY_TIMEOUT_S, IMAGEGEN_REDELIVERY_SWEEP_S) unless given:

    python -m benchmarks.redelivery                      # both brokers (Redis: minutes)
    python -m benchmarks.redelivery --broker rabbitmq
    python -m benchmarks.redelivery --broker redis --visibility-timeout 3600

With Redis the message waits in the unacked set until it is older than the
visibility timeout and a worker's sweep (every IMAGEGEN_REDELIVERY_SWEEP_S)
finds it; with RabbitMQ the broker requeues it when A's connection drops.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from typing import Any

from contract.settings import Settings
from devtools.rabbitmq import find_rabbitmq
from devtools.redis_server import start_redis
from devtools.worker_process import ROOT, WorkerProcess

LATENCY_S = 3.0


def offline_node() -> dict[str, Any]:
    node = json.loads((ROOT / "examples" / "seed-node.json").read_text())
    node["inputs"].update(model="offline_preview", variations=1)
    return dict(node)


def wait_for(worker: WorkerProcess, text: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while text not in worker.log():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} not in {worker.log_path} within {timeout:g} s")
        time.sleep(0.05)
    return time.monotonic()


def measure(broker: str, overrides: dict[str, str]) -> str:
    redis = start_redis()
    rabbit = find_rabbitmq() if broker == "rabbitmq" else None
    if broker == "rabbitmq" and rabbit is None:
        redis.stop()
        return "rabbitmq: skipped (no RabbitMQ answers on 127.0.0.1:5672 and rabbitmq-server is not installed)"
    env = {
        "REDIS_URL": redis.url,
        "IMAGEGEN_QUEUE": f"bench-{uuid.uuid4().hex[:6]}",
        "IMAGEGEN_STORAGE_URL": tempfile.mkdtemp(prefix="imagegen-bench-"),
        "IMAGEGEN_OFFLINE_LATENCY_S": str(LATENCY_S),
        **({"IMAGEGEN_BROKER_URL": rabbit.url} if rabbit else {}),
        **overrides,
    }
    saved = dict(os.environ)
    os.environ.update(env)
    settings = Settings()
    from producer.client import ImageGenClient  # reads the environment

    workers: list[WorkerProcess] = []
    try:
        a = WorkerProcess(env, log_dir=tempfile.mkdtemp(prefix="imagegen-bench-a-"))
        workers.append(a)
        a.start()
        client = ImageGenClient(settings)
        handle = client.submit(offline_node())
        wait_for(a, "imagegen.generate_variation[", 30)
        b = WorkerProcess(env, log_dir=tempfile.mkdtemp(prefix="imagegen-bench-b-"))
        workers.append(b)
        b.start()
        killed = time.monotonic()
        a.kill()
        limit = settings.visibility_timeout_s + 2 * settings.redelivery_sweep_s + 60
        redelivered = wait_for(b, "imagegen.generate_variation[", limit)
        result = handle.wait(timeout=60)
        finished = time.monotonic()
        client.close()
    finally:
        for worker in workers:
            worker.stop()
        if rabbit is not None:
            rabbit.stop()
        redis.stop()
        os.environ.clear()
        os.environ.update(saved)
    knobs = (
        "no visibility timeout: the broker requeues on the dropped connection"
        if broker == "rabbitmq"
        else f"visibility timeout {settings.visibility_timeout_s} s, sweep every {settings.redelivery_sweep_s} s"
    )
    return (
        f"{broker:8}: redelivered {redelivered - killed:8.2f} s after the SIGKILL, job {result.status} "
        f"{finished - killed:8.2f} s after it ({LATENCY_S:g} s generation; {knobs})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=["redis", "rabbitmq", "both"], default="both")
    parser.add_argument("--visibility-timeout", type=int, help="IMAGEGEN_VISIBILITY_TIMEOUT_S (default: Settings')")
    parser.add_argument("--sweep", type=int, help="IMAGEGEN_REDELIVERY_SWEEP_S (default: Settings')")
    args = parser.parse_args()
    overrides: dict[str, str] = {}
    if args.visibility_timeout is not None:
        # A shorter visibility timeout is only valid with shorter time limits (Settings checks).
        limit = max(2, (args.visibility_timeout - 2) // 2)
        overrides |= {
            "IMAGEGEN_VISIBILITY_TIMEOUT_S": str(args.visibility_timeout),
            "IMAGEGEN_TASK_TIME_LIMIT_S": str(min(limit, 330)),
            "IMAGEGEN_TASK_SOFT_TIME_LIMIT_S": str(min(limit, 330) - 1),
            "IMAGEGEN_RETRY_MAX_DELAY_S": "1",
        }
    if args.sweep is not None:
        overrides["IMAGEGEN_REDELIVERY_SWEEP_S"] = str(args.sweep)
    brokers = ["rabbitmq", "redis"] if args.broker == "both" else [args.broker]
    print("SIGKILL a worker mid-variation; a second worker is already running")
    for broker in brokers:
        print(measure(broker, overrides), flush=True)


if __name__ == "__main__":
    main()
