"""Faults injected while jobs with latency are in flight; the goal in every row:
0 lost, 0 duplicated, 0 worker deaths, 0 stuck; recovery after SIGKILL within
2 minutes on RabbitMQ and within the documented bound on a Redis broker."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from devtools.fake_gemini import Behaviour, FakeGemini
from devtools.rabbitmq import RabbitMQ
from devtools.redis_server import start_redis
from devtools.sentinel import sentinel_command, start_sentinel_cluster
from devtools.worker_process import WorkerProcess
from producer.client import ImageGenClient
from tests.broker.test_redis_restart import AofRedis
from tests.chaos.conftest import MakeClient
from tests.chaos.harness import (
    CHAOS_ENV,
    REDIS_BOUND_S,
    Row,
    assert_goal,
    collect,
    started_variations,
    submit_batch,
    wait_until,
)
from tests.cloud.helpers import FlakyProxy
from worker.storage.keys import WRITE_CHECK_NAME

pytestmark = pytest.mark.chaos

StartWorker = Callable[..., WorkerProcess]
JOBS, VARIATIONS = 12, 2


def in_flight(worker: WorkerProcess, count: int = 2) -> float:
    """Wait until ``worker`` runs variations; the moment the fault is injected."""
    wait_until(lambda: started_variations(worker) >= count, 60, "variations to start")
    return time.monotonic()


def test_sigkill_redis_broker(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], tmp_path: Path
) -> None:
    a, b = start_worker(CHAOS_ENV), start_worker(CHAOS_ENV)
    handles = submit_batch(client, offline_node, JOBS, VARIATIONS)
    fault = in_flight(a)
    a.kill()
    c = start_worker(CHAOS_ENV)  # the replacement pod
    row = collect(Row("SIGKILL a worker (Redis broker)"), handles, fault, [a, b, c], (a,), tmp_path / "images")
    row.note = f"bound {REDIS_BOUND_S} s = visibility timeout + sweep (chaos settings)"
    assert_goal(row, REDIS_BOUND_S + 30)


def test_sigkill_rabbitmq_broker(
    start_worker: StartWorker,
    make_client: MakeClient,
    job_env: dict[str, str],
    rabbitmq: RabbitMQ,
    offline_node: dict[str, Any],
    tmp_path: Path,
) -> None:
    env = {**CHAOS_ENV, "IMAGEGEN_BROKER_URL": rabbitmq.url}
    client = make_client({**job_env, **env})
    a, b = start_worker(env), start_worker(env)
    handles = submit_batch(client, offline_node, JOBS, VARIATIONS)
    fault = in_flight(a)
    a.kill()
    c = start_worker(env)
    row = collect(Row("SIGKILL a worker (RabbitMQ broker)"), handles, fault, [a, b, c], (a,), tmp_path / "images")
    row.note = "the broker requeues at once"
    assert_goal(row, 120)


def test_sigterm_rolling_deploy(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], tmp_path: Path
) -> None:
    a, b = start_worker(CHAOS_ENV), start_worker(CHAOS_ENV)
    handles = submit_batch(client, offline_node, JOBS, VARIATIONS)
    fault = in_flight(a)
    assert a.process is not None
    a.process.send_signal(signal.SIGTERM)  # warm shutdown: finishes what it runs, takes nothing new
    c = start_worker(CHAOS_ENV)
    row = collect(Row("SIGTERM a worker (rolling deploy)"), handles, fault, [b, c], (a,), tmp_path / "images")
    a.process.wait(timeout=60)
    row.note = "warm shutdown finished its tasks"
    assert_goal(row)


def _fault_on_redis(
    name: str,
    redis_url: str,
    inject: Callable[[], object],
    start_worker: StartWorker,
    make_client: MakeClient,
    job_env: dict[str, str],
    offline_node: dict[str, Any],
    storage: Path,
    note: str = "",
) -> None:
    """Jobs in flight on the Redis at ``redis_url``; ``inject()`` does the fault and its end."""
    env = {**CHAOS_ENV, "REDIS_URL": redis_url}
    client = make_client({**job_env, **env})
    a, b = start_worker(env), start_worker(env)
    handles = submit_batch(client, offline_node, JOBS, VARIATIONS)
    at = in_flight(a)
    inject()
    row = collect(Row(name), handles, at, [a, b], (), storage)
    row.note = note
    assert_goal(row)


def test_redis_restart_with_aof(
    start_worker: StartWorker,
    make_client: MakeClient,
    job_env: dict[str, str],
    offline_node: dict[str, Any],
    tmp_path: Path,
) -> None:
    server = AofRedis(tmp_path)
    server.start()

    def crash_and_restart() -> None:
        server.crash()
        time.sleep(2)
        server.start()

    try:
        _fault_on_redis(
            "Redis crash + restart (AOF)",
            server.url,
            crash_and_restart,
            start_worker,
            make_client,
            job_env,
            offline_node,
            tmp_path / "images",
            note="appendfsync always here; everysec in deploy",
        )
    finally:
        if server.process is not None:
            server.process.terminate()


@pytest.mark.skipif(sentinel_command() is None, reason="no redis-sentinel or redis-server --sentinel on this machine")
def test_redis_failover_through_sentinel(
    start_worker: StartWorker,
    make_client: MakeClient,
    job_env: dict[str, str],
    offline_node: dict[str, Any],
    tmp_path: Path,
) -> None:
    cluster = start_sentinel_cluster(min_replicas_to_write=1)  # as deploy/k8s/redis.yaml
    try:
        _fault_on_redis(
            "Redis failover (Sentinel)",
            cluster.url(),
            cluster.failover,
            start_worker,
            make_client,
            job_env,
            offline_node,
            tmp_path / "images",
        )
    finally:
        cluster.stop()


def _for_8_s(start: Callable[[Any], Callable[[], None]], server: Any) -> Callable[[], None]:
    """``start(server)`` begins a fault and returns its end; the fault lasts 8 s."""

    def inject() -> None:
        end = start(server)
        time.sleep(8)
        end()

    return inject


def _fill(server: Any) -> Callable[[], None]:
    admin = redis.Redis.from_url(server.url)
    admin.config_set("maxmemory-policy", "noeviction")
    # Far over the limit (half the memory in use): every write answers OOM for the whole
    # window, not only the few that would cross a limit set at the current use.
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) // 2)
    return lambda: admin.config_set("maxmemory", 0)


def _pause(server: Any) -> Callable[[], None]:
    server.process.send_signal(signal.SIGSTOP)  # accepts nothing, answers nothing
    return lambda: server.process.send_signal(signal.SIGCONT)


@pytest.mark.parametrize(
    ("name", "start"),
    [("Redis far over maxmemory for 8 s (noeviction)", _fill), ("Redis unresponsive for 8 s (SIGSTOP)", _pause)],
    ids=["maxmemory", "unresponsive"],
)
def test_redis_fault_for_8_s(
    name: str,
    start: Callable[[Any], Callable[[], None]],
    start_worker: StartWorker,
    make_client: MakeClient,
    job_env: dict[str, str],
    offline_node: dict[str, Any],
    tmp_path: Path,
) -> None:
    server = start_redis()  # this test's own: the fault must not touch the suite's Redis
    try:
        _fault_on_redis(
            name,
            server.url,
            _for_8_s(start, server),
            start_worker,
            make_client,
            job_env,
            offline_node,
            tmp_path / "images",
        )
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
        server.stop()


def test_provider_storm(
    start_worker: StartWorker, client: ImageGenClient, seed_node: dict[str, Any], tmp_path: Path
) -> None:
    rng = random.Random(7)
    storm = [
        Behaviour("error", code=rng.choice((429, 503))) if rng.random() < 0.3 else Behaviour()
        for _ in range(JOBS * VARIATIONS * 4)
    ]
    with FakeGemini(api_key="chaos-key", latency_s=1.0) as fake:
        fake.script(*storm)
        env = {
            **CHAOS_ENV,
            "GOOGLE_GEMINI_BASE_URL": fake.base_url,
            "GEMINI_API_KEY": "chaos-key",
            "GOOGLE_API_KEY": "",
            "GOOGLE_GENAI_USE_VERTEXAI": "false",
            "IMAGEGEN_GEMINI_TIMEOUT_S": "10",
        }
        a, b = start_worker(env), start_worker(env)
        fault = time.monotonic()
        handles = submit_batch(client, seed_node, JOBS, VARIATIONS)
        row = collect(Row("provider storm (30 % 429/503)"), handles, fault, [a, b], (), tmp_path / "images")
        errors = sum(1 for r in fake.requests if r.behaviour == "error")
        row.note = f"{errors} of {len(fake.requests)} provider calls failed; retried with backoff"
        assert_goal(row)


def test_storage_faults(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    moto: Any,
    s3_admin: Any,
    s3_bucket: str,
) -> None:
    with FlakyProxy(moto.url, failures=10, status=503, only="PUT") as proxy:
        env = {
            **CHAOS_ENV,
            "IMAGEGEN_STORAGE_URL": f"s3://{s3_bucket}/chaos",
            "AWS_ENDPOINT_URL_S3": proxy.url,
            "AWS_ACCESS_KEY_ID": "platform",
            "AWS_SECRET_ACCESS_KEY": "platform",
            "AWS_EC2_METADATA_DISABLED": "true",
            "IMAGEGEN_STORAGE_RETRY_MAX_DELAY_S": "0.2",
        }
        a, b = start_worker(env), start_worker(env)
        fault = time.monotonic()
        handles = submit_batch(client, offline_node, JOBS, VARIATIONS)
        row = collect(Row("storage faults (10 S3 PUTs answer 503)"), handles, fault, [a, b], ())
        listed = s3_admin.list_objects_v2(Bucket=s3_bucket).get("Contents", [])
        stored = [o for o in listed if not o["Key"].endswith(f"/{WRITE_CHECK_NAME}")]  # the write check's marker
        row.duplicates = max(0, len(stored) - row.images)
        # (every job finished here, so every stored object belongs to a listed image or is a duplicate)
        row.note = f"{len(proxy.requests)} PUTs, {min(10, len(proxy.requests))} refused; retried by tenacity"
        assert_goal(row)
