"""Which Celery pool keeps the most slow generation calls in flight per pod?

32 variations (4 jobs x 8) of the offline model with 2 s of artificial
latency each, submitted at once to one worker; wall time and the worker's
resident memory (parent plus children) per pool and concurrency.
"""

from __future__ import annotations

import importlib.util
import time

from benchmarks.harness import offline_node, rss_mib, running_worker

JOBS, VARIATIONS, LATENCY_S = 4, 8, 2.0
CANDIDATES = [("prefork", 4), ("prefork", 8), ("threads", 8), ("threads", 32), ("gevent", 32)]


def measure(pool: str, concurrency: int) -> str:
    with running_worker(pool, concurrency, {"IMAGEGEN_OFFLINE_LATENCY_S": str(LATENCY_S)}) as (client, worker):
        client.submit(offline_node(1)).wait(timeout=120)  # warm-up
        start = time.perf_counter()
        handles = [client.submit(offline_node(VARIATIONS)) for _ in range(JOBS)]
        statuses = [h.wait(timeout=300).status for h in handles]
        wall = time.perf_counter() - start
        memory = rss_mib(worker.pid)
    images = JOBS * VARIATIONS
    return (
        f"{pool:8} concurrency={concurrency:3}: {images} images in {wall:6.2f} s "
        f"({images * LATENCY_S / wall:5.1f} calls in flight on average), RSS {memory:6.1f} MiB, "
        f"{'all succeeded' if set(statuses) == {'succeeded'} else statuses}"
    )


def main() -> None:
    print(f"{JOBS} jobs x {VARIATIONS} variations, {LATENCY_S:g} s per call; ideal wall = {LATENCY_S:g} s")
    for pool, concurrency in CANDIDATES:
        if pool == "gevent" and importlib.util.find_spec("gevent") is None:
            print(f"{pool:8} skipped: gevent is not installed (pip install gevent)")
            continue
        print(measure(pool, concurrency), flush=True)


if __name__ == "__main__":
    main()
