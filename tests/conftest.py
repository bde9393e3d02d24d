"""Shared fixtures: a real Redis the suite owns, real worker processes, and a
producer client, each test on its own queue and storage directory."""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import trustme
from prometheus_client.parser import text_string_to_metric_families

from contract.settings import Settings
from devtools.redis_server import start_redis
from devtools.worker_process import WorkerProcess
from producer.client import ImageGenClient

ROOT = Path(__file__).resolve().parent.parent
SEED_NODE = ROOT / "examples" / "seed-node.json"

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server on a free port: the suite may scan every key."""
    server = start_redis()
    yield server.url
    server.stop()


@pytest.fixture
def seed_node() -> dict[str, Any]:
    return dict(json.loads(SEED_NODE.read_text()))


@pytest.fixture
def offline_node(seed_node: dict[str, Any]) -> dict[str, Any]:
    seed_node["inputs"]["model"] = "offline_preview"
    return seed_node


@pytest.fixture
def job_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment shared by the producer and the workers of one test."""
    return {
        "REDIS_URL": redis_url,
        "IMAGEGEN_QUEUE": f"test-{uuid.uuid4().hex[:8]}",
        "IMAGEGEN_STORAGE_URL": str(tmp_path / "images"),
        "IMAGEGEN_RETRY_BASE_DELAY_S": "0.2",
        "IMAGEGEN_RETRY_MAX_DELAY_S": "2",
        # The tests read Celery's "received" line as the sign that a worker holds a task.
        "IMAGEGEN_LOG_TASK_RECEIVED": "true",
    }


@pytest.fixture
def start_worker(job_env: dict[str, str], tmp_path: Path) -> Iterator[StartWorker]:
    """Start real ``celery -A worker worker`` processes, each with a log file of its own; stopped after the test."""
    workers: list[WorkerProcess] = []

    def start(
        env: dict[str, str] | None = None, pool: str = "threads", concurrency: int = 8, mingle: bool = False
    ) -> WorkerProcess:
        log_dir = tmp_path / f"worker-{len(workers)}"
        log_dir.mkdir()
        worker = WorkerProcess(
            {**job_env, **(env or {})}, pool=pool, concurrency=concurrency, log_dir=str(log_dir), mingle=mingle
        )
        workers.append(worker)
        worker.start()
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def settings(job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in job_env.items():
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.fixture
def client(settings: Settings) -> Iterator[ImageGenClient]:
    producer = ImageGenClient(settings)
    yield producer
    producer.close()


def request_keys(client: redis.Redis) -> set[bytes]:
    """Every Redis key but the workers' own housekeeping, which comes and goes with other tests'
    workers and jobs (their in-flight lists and owner keys, worker/reliable_fetch.py; Celery's
    chord bookkeeping, ``celery-taskset-meta-<group>.*``, written when any chord finishes; the
    providers each worker reports, contract/providers.py): what a request that must write nothing
    is checked against, as "no key that was not there before" (``not request_keys(c) - before``):
    other tests' keys may expire meanwhile."""
    housekeeping = (b"imagegen:inflight", b"celery-taskset-meta-", b"imagegen:providers:")
    return {key for key in client.keys("*") if not key.startswith(housekeeping)}


def throwaway_ca_server(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a certificate for 127.0.0.1 from a throwaway CA, and the CA's file
    (in ``directory``) for a client's ``SSL_CERT_FILE``, as a deployment adds a private CA."""
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    bundle = directory / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    return context, bundle


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Whether ``condition`` came true within ``timeout`` seconds (polled): for what a worker
    does in the background, such as its first report."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def metric_samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A worker's Prometheus samples at ``url``, by (name, sorted labels)."""
    text = requests.get(url, timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
