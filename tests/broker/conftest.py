"""Brokers the suite finds or starts itself: RabbitMQ (devtools/rabbitmq.py) and a
Redis Sentinel set-up (devtools/sentinel.py). Missing ones skip with the reason."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import rabbitmq as rabbitmq_tools
from devtools.rabbitmq import RabbitMQ, find_rabbitmq
from devtools.worker_process import WorkerProcess
from tests.conftest import StartWorker


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQ]:
    server = find_rabbitmq()
    if server is None:
        pytest.skip(f"no RabbitMQ for the broker tests: {rabbitmq_tools.why_not}")
    yield server
    server.stop()


def wait_for_log(worker: WorkerProcess, text: str, timeout: float = 30.0, count: int = 1) -> float:
    """Poll the worker's log until ``text`` occurs ``count`` times; the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while worker.log().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} x{count} not in the log:\n{worker.log()[-4000:]}"
        time.sleep(0.05)
    return time.monotonic()


@pytest.fixture
def start_worker(job_env: dict[str, str], tmp_path: Path) -> Iterator[StartWorker]:
    """As tests/conftest.py's, but each worker logs to a file of its own (two run at once here)."""
    workers: list[WorkerProcess] = []

    def start(env: dict[str, str] | None = None, pool: str = "threads", concurrency: int = 8) -> WorkerProcess:
        log_dir = tmp_path / f"worker-{len(workers)}"
        log_dir.mkdir()
        worker = WorkerProcess({**job_env, **(env or {})}, pool=pool, concurrency=concurrency, log_dir=str(log_dir))
        workers.append(worker)
        worker.start()
        return worker

    yield start
    for worker in workers:
        worker.stop()
