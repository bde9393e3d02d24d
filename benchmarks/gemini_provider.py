"""Wall time of one job of N variations through a real worker, the real
google-genai SDK and FakeGemini with a fixed latency per image.

    python -m benchmarks.gemini_provider --variations 8 --latency 2 --concurrency 8

With enough worker slots the job should take about one latency, not N.
Prints figures only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid

from contract.settings import Settings
from devtools.fake_gemini import FakeGemini
from devtools.redis_server import start_redis
from devtools.worker_process import ROOT, WorkerProcess
from producer.client import ImageGenClient

API_KEY = "benchmark-key"
SEED_NODE = ROOT / "examples" / "seed-node.json"


def run(variations: int, latency_s: float, concurrency: int, pool: str) -> None:
    redis_server = start_redis()
    workdir = tempfile.mkdtemp(prefix="imagegen-bench-")
    env = {
        "REDIS_URL": redis_server.url,
        "IMAGEGEN_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
        "IMAGEGEN_STORAGE_URL": f"{workdir}/images",
        "IMAGEGEN_MAX_VARIATIONS": str(variations),
        "GOOGLE_GEMINI_BASE_URL": "",  # set below, once the fake has a port
        "GEMINI_API_KEY": API_KEY,
        "GOOGLE_API_KEY": "",
    }
    try:
        with FakeGemini(api_key=API_KEY, latency_s=latency_s) as fake:
            env["GOOGLE_GEMINI_BASE_URL"] = fake.base_url
            with WorkerProcess(env, pool=pool, concurrency=concurrency, log_dir=workdir):
                client = ImageGenClient(
                    Settings(
                        REDIS_URL=env["REDIS_URL"],
                        queue=env["IMAGEGEN_QUEUE"],
                        storage_url=env["IMAGEGEN_STORAGE_URL"],
                        max_variations=variations,
                    )
                )
                node = json.loads(SEED_NODE.read_text())
                node["inputs"]["variations"] = str(variations)
                started = time.perf_counter()
                result = client.submit(node).wait(timeout=max(60.0, 4 * variations * latency_s))
                wall_s = time.perf_counter() - started
                client.close()
                arrivals = [r.timestamp for r in fake.requests]
    finally:
        redis_server.stop()
    spread_s = max(arrivals) - min(arrivals) if arrivals else 0.0
    print(
        f"variations={variations} latency_s={latency_s:g} pool={pool} concurrency={concurrency} "
        f"status={result.status} images={len(result.images)} requests={len(arrivals)} "
        f"wall_s={wall_s:.2f} serial_s={variations * latency_s:.2f} request_spread_s={spread_s:.2f} "
        f"overhead_s={wall_s - latency_s:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Gemini provider job wall time against FakeGemini")
    parser.add_argument("--variations", type=int, default=8)
    parser.add_argument("--latency", type=float, default=2.0, help="fake seconds per image")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pool", default="threads", choices=["threads", "prefork", "solo"])
    args = parser.parse_args()
    run(args.variations, args.latency, args.concurrency, args.pool)


if __name__ == "__main__":
    main()
