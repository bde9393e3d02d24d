"""A Redis broker that crashes and comes back (AOF) while variations run: the worker
stays up (worker/consumer.py) and the job finishes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.redis_server import answers, free_port, redis_binary
from producer.client import ImageGenClient
from tests.broker.conftest import wait_for_log
from tests.conftest import StartWorker
from tests.e2e.helpers import assert_images_on_disk


class AofRedis:
    def __init__(self, workdir: Path) -> None:
        self.port, self.workdir = free_port(), workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # fsync always: the crash below comes within a second of the writes it must keep
        # (production uses everysec: at most ~1 s lost).
        self.process = subprocess.Popen(
            [
                *(redis_binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir)),
                *("--appendonly", "yes", "--appendfsync", "always", "--save", "", "--loglevel", "warning"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not answers(self.url):
            assert self.process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def crash(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[AofRedis]:
    server = AofRedis(tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.process.terminate()
        server.process.wait(timeout=10)


@pytest.fixture
def job_env(job_env: dict[str, str], aof_redis: AofRedis) -> dict[str, str]:
    return {**job_env, "REDIS_URL": aof_redis.url}


def test_a_redis_crash_mid_job_loses_nothing_and_the_worker_stays_up(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], aof_redis: AofRedis
) -> None:
    worker = start_worker({"IMAGEGEN_OFFLINE_LATENCY_S": "3"})
    offline_node["inputs"]["variations"] = 2
    handle = client.submit(offline_node)
    wait_for_log(worker, "imagegen.generate_variation[", count=2)

    aof_redis.crash()  # SIGKILL: only what the AOF holds survives
    time.sleep(1)
    aof_redis.start()  # same port and directory: the AOF is replayed

    result = handle.wait(timeout=60)
    assert result.status == "succeeded" and len(result.images) == 2
    assert_images_on_disk(result)
    assert worker.process is not None and worker.process.poll() is None, worker.log()[-3000:]
    assert "Unrecoverable error" not in worker.log()
    assert client.submit(offline_node).wait(timeout=60).status == "succeeded"  # it consumes again
