"""Brokers the suite finds or starts itself: RabbitMQ (devtools/rabbitmq.py) and a
Redis Sentinel set-up (devtools/sentinel.py). Missing ones skip with the reason."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from devtools import rabbitmq as rabbitmq_tools
from devtools.rabbitmq import RabbitMQ, find_rabbitmq
from devtools.worker_process import WorkerProcess


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
