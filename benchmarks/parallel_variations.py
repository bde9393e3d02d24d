"""Do variations run in parallel? A job of 4 variations on the offline model
with 1 s of artificial latency each, on one worker (one pod), 5 runs.

In sequence it would take >= 4 s; in parallel, ~1 s plus overhead.
"""

from __future__ import annotations

import statistics

from benchmarks.harness import offline_node, running_worker, timed_job
from contract.settings import Settings

RUNS = 5
VARIATIONS = 4
LATENCY_S = 1.0


def main() -> None:
    settings = Settings()
    pool, concurrency = settings.worker_pool, settings.worker_concurrency
    with running_worker(pool, concurrency, {"IMAGEGEN_OFFLINE_LATENCY_S": str(LATENCY_S)}) as (client, _):
        timed_job(client, offline_node(1))  # warm-up: connections, imports
        walls = []
        for run in range(1, RUNS + 1):
            wall, status = timed_job(client, offline_node(VARIATIONS))
            walls.append(wall)
            print(f"run {run}: {wall:.3f} s wall, status {status}")
    print(
        f"pool={pool} in-flight capacity={concurrency} variations={VARIATIONS} latency={LATENCY_S:g} s: "
        f"median {statistics.median(walls):.3f} s, min {min(walls):.3f} s, max {max(walls):.3f} s "
        f"(sequential would be >= {VARIATIONS * LATENCY_S:g} s)"
    )


if __name__ == "__main__":
    main()
