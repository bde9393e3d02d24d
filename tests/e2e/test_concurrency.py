"""The largest concurrency Settings allow runs a batch through a real worker process:
every job succeeds, and no connection pool runs dry, no chord fails, nothing crashes.

Every pool in the worker is sized from IMAGEGEN_WORKER_CONCURRENCY (Settings.pool_size);
before that, 256 threads ran redis-py out of connections (MaxConnectionsError), chords
failed (ChordError) and jobs crashed. Not timed: figures are benchmarks/figures.py's.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from contract.settings import Settings
from producer.client import ImageGenClient
from tests.conftest import StartWorker

JOBS, VARIATIONS = 48, 8  # 384 variations, all in flight at once at the ceiling
CRASH_MARKS = ("MaxConnectionsError", "Too many connections", "ChordError", "Traceback", "CRITICAL", "ERROR/")


def largest_allowed_concurrency() -> int:
    bounds = Settings.model_fields["worker_concurrency"].metadata
    ceiling = next((getattr(bound, "le", None) for bound in bounds if getattr(bound, "le", None)), None)
    assert ceiling is not None, "IMAGEGEN_WORKER_CONCURRENCY needs an upper bound (docs/pools.md)"
    return int(ceiling)


@pytest.mark.parametrize("pool", ["threads", "gevent"])
def test_the_largest_allowed_concurrency_runs_a_batch_cleanly(
    pool: str, start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    if pool == "gevent" and importlib.util.find_spec("gevent") is None:
        pytest.skip("gevent is not installed (pip install '.[bench]')")
    worker = start_worker({"IMAGEGEN_OFFLINE_LATENCY_S": "0.5"}, pool=pool, concurrency=largest_allowed_concurrency())
    offline_node["inputs"]["variations"] = VARIATIONS
    handles = [client.submit(offline_node) for _ in range(JOBS)]
    results = [handle.wait(timeout=120) for handle in handles]

    assert [result.status for result in results] == ["succeeded"] * JOBS
    assert sum(len(result.images) for result in results) == JOBS * VARIATIONS
    log = worker.log()
    assert {mark: log.count(mark) for mark in CRASH_MARKS if mark in log} == {}
    assert log.count("imagegen.generate_variation[") // 2 == JOBS * VARIATIONS  # received + succeeded: once each
