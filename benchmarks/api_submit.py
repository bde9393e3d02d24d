"""Submit throughput and latency: the HTTP API (real uvicorn, one process) vs the Python client.

    python -m benchmarks.api_submit            # IMAGEGEN_BENCH_QUICK=1: fewer jobs

Both submit the same offline node with a fresh job id to the same embedded Redis
(no worker: only the submit path is measured: validation, the job record, the
in-flight booking for the API, the broker message). Each side runs sequentially
(one caller) and with 8 concurrent callers (threads; the API through one
keep-alive connection per thread). Prints jobs/s and latency percentiles; the
figures in docs/api.md come from this script. Not a test: nothing is asserted.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from contract.settings import Settings
from devtools.redis_server import free_port, start_redis
from producer.client import ImageGenClient

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-" + uuid.uuid4().hex
QUICK = os.environ.get("IMAGEGEN_BENCH_QUICK") == "1"
JOBS = 300 if QUICK else 1500
CONCURRENCY = 8


def node() -> dict[str, Any]:
    document = json.loads((ROOT / "examples" / "seed-node.json").read_text())
    document["inputs"].update(model="offline_preview", variations=4)
    return dict(document)


def start_api(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "producer.cli", "serve", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env={**os.environ, **env},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the API did not start")


def measure(submit: Callable[[], None], jobs: int, concurrency: int) -> dict[str, float]:
    """Runs ``jobs`` submits on ``concurrency`` threads: jobs/s and latency percentiles (ms)."""
    latencies: list[float] = []

    def one(_: int) -> None:
        start = time.perf_counter()
        submit()
        latencies.append(time.perf_counter() - start)

    for _ in range(min(20, jobs)):  # warm-up: connections, imports, Lua script loads
        submit()
    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(jobs)))
    wall = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "jobs_per_s": jobs / wall,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def http_submitter(url: str, body: dict[str, Any]) -> tuple[Callable[[], None], Callable[[], None]]:
    """A submit over HTTP with one keep-alive connection per thread, and how to close them."""
    local = threading.local()
    opened: list[httpx.Client] = []

    def submit() -> None:
        http = getattr(local, "http", None)
        if http is None:
            http = local.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
            opened.append(http)
        response = http.post("/v1/jobs", json=body)
        if response.status_code != 202:
            raise SystemExit(f"unexpected answer {response.status_code}: {response.text[:300]}")

    def close() -> None:
        for http in opened:
            http.close()

    return submit, close


def main() -> None:
    redis_server = start_redis()
    storage = tempfile.mkdtemp(prefix="imagegen-bench-")
    env = {
        "REDIS_URL": redis_server.url,
        "IMAGEGEN_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
        "IMAGEGEN_STORAGE_URL": storage,
        "IMAGEGEN_API_TOKENS": "bench=env:IMAGEGEN_BENCH_API_TOKEN",
        "IMAGEGEN_BENCH_API_TOKEN": TOKEN,
        "IMAGEGEN_API_MAX_JOBS_IN_FLIGHT": str(10 * JOBS),
    }
    process, url = start_api(env)
    body = node()
    client = ImageGenClient(Settings(REDIS_URL=redis_server.url, queue=env["IMAGEGEN_QUEUE"], storage_url=storage))

    def submit_with_client() -> None:
        client.submit(body)

    rows: list[tuple[str, int, dict[str, float]]] = []
    try:
        for concurrency in (1, CONCURRENCY):
            over_http, close = http_submitter(url, body)
            rows.append(("HTTP API (uvicorn, 1 process)", concurrency, measure(over_http, JOBS, concurrency)))
            close()
            rows.append(("Python client", concurrency, measure(submit_with_client, JOBS, concurrency)))
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=15)
        redis_server.stop()

    print(f"{JOBS} submits of a 4-variation offline node per row; embedded Redis; no worker")
    print(f"{'path':32} {'callers':>7} {'jobs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, concurrency, figures in rows:
        print(
            f"{name:32} {concurrency:>7} {figures['jobs_per_s']:>8.0f} {figures['p50_ms']:>8.2f} "
            f"{figures['p99_ms']:>8.2f} {figures['max_ms']:>8.2f}"
        )


if __name__ == "__main__":
    main()
