"""Redis Sentinel for broker, result backend and job store at once (one sentinel:// URL),
through a real worker: a job end to end, then a real failover (the master is killed) while a job is in flight."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from contract.queue import job_key
from contract.redis_client import redis_client
from devtools.sentinel import SentinelCluster, sentinel_command, start_sentinel_cluster
from producer.client import ImageGenClient
from tests.broker.conftest import wait_for_log
from tests.conftest import StartWorker
from tests.e2e.helpers import assert_images_on_disk


@pytest.fixture
def sentinel_cluster() -> Iterator[SentinelCluster]:
    if sentinel_command() is None:
        pytest.skip("no redis-sentinel binary and no redis-server to run in --sentinel mode")
    cluster = start_sentinel_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def job_env(job_env: dict[str, str], sentinel_cluster: SentinelCluster) -> dict[str, str]:
    return {**job_env, "REDIS_URL": sentinel_cluster.url(db=2)}


def test_a_job_with_broker_backend_and_job_store_on_sentinel(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    sentinel_cluster: SentinelCluster,
) -> None:
    worker = start_worker()
    offline_node["inputs"]["variations"] = 2
    handle = client.submit(offline_node)
    result = handle.wait(timeout=60)

    assert result.status == "succeeded" and len(result.images) == 2
    assert_images_on_disk(result)
    assert "Connected to sentinel://" in worker.log()
    master = redis.Redis(port=sentinel_cluster.master_port, db=2)
    assert master.exists(job_key(handle.job_id))  # the job store is the sentinels' master, db 2
    assert any(key.startswith(b"celery-task-meta-") for key in master.scan_iter())  # so is the result backend


def test_a_failover_mid_job_loses_nothing(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    sentinel_cluster: SentinelCluster,
) -> None:
    worker = start_worker({"IMAGEGEN_OFFLINE_LATENCY_S": "3"})
    offline_node["inputs"]["variations"] = 2
    handle = client.submit(offline_node)
    wait_for_log(worker, "imagegen.generate_variation[", count=2)

    started = time.monotonic()
    # The master crashes mid-generation (SIGKILL): the sentinels notice after 1 s
    # (down-after-milliseconds here), elect a leader and promote the replica.
    new_master = sentinel_cluster.kill_master()
    print(f"\nSentinel failover done {time.monotonic() - started:.2f} s after the master died (port {new_master})")
    assert new_master == sentinel_cluster.replica_port

    result = handle.wait(timeout=60)
    assert result.status == "succeeded" and len(result.images) == 2, result.errors
    assert_images_on_disk(result)
    assert worker.process is not None and worker.process.poll() is None  # the worker lived through it
    # ...and it consumes from the new master: a second job after the failover.
    assert client.submit(offline_node).wait(timeout=60).status == "succeeded"
    print(f"job finished {time.monotonic() - started:.2f} s after the failover began")


def test_a_script_and_its_writes_survive_a_sentinel_failover() -> None:
    """``SENTINEL FAILOVER`` with ``min-replicas-to-write 1`` (deploy/k8s/redis.yaml): the script
    cache of the new master is empty (NOSCRIPT), the old master answers NOREPLICAS and then
    READONLY, the new one NOREPLICAS until the old one follows it. The next call waits that out
    on the new master, and no write acknowledged before it is lost."""
    if sentinel_command() is None:
        pytest.skip("no redis-sentinel binary and no redis-server to run in --sentinel mode")
    cluster = start_sentinel_cluster(min_replicas_to_write=1)
    try:
        client = redis_client(cluster.url())
        increment = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        assert increment(keys=["counter"], args=[1]) == 1  # loaded on the first master only

        new_master = cluster.failover()
        assert new_master == cluster.replica_port
        assert increment(keys=["counter"], args=[1]) == 2
        assert redis.Redis(port=new_master).get("counter") == b"2"
        assert client.connection_pool.master_address[1] == new_master
    finally:
        cluster.stop()
