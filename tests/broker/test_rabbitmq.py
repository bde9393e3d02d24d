"""RabbitMQ as the broker (Redis stays result backend and job store), through real
worker processes: a job end to end on a quorum queue, countdown retries through
native delayed delivery, and a SIGKILLed worker's variation finished by another
worker within seconds, with the default settings (no short visibility timeout)."""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

import amqp
import pytest
from kombu import Connection

from devtools.rabbitmq import RabbitMQ
from producer.client import ImageGenClient
from tests.broker.conftest import wait_for_log
from tests.conftest import StartWorker
from tests.e2e.helpers import assert_images_on_disk, assert_matches_published_schema
from worker.dispatch_lease import VARIATION_LEASE_S


@pytest.fixture
def job_env(job_env: dict[str, str], rabbitmq: RabbitMQ) -> dict[str, str]:
    return {**job_env, "IMAGEGEN_BROKER_URL": rabbitmq.url}


def test_a_job_end_to_end_on_a_quorum_queue(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], job_env: dict[str, str]
) -> None:
    worker = start_worker()
    offline_node["inputs"]["variations"] = 3
    result = client.submit(offline_node).wait(timeout=60)

    assert result.status == "succeeded" and len(result.images) == 3
    assert_images_on_disk(result)
    assert_matches_published_schema(result)
    assert re.search(r"Connected to amqp://guest:\*\*@127\.0\.0\.1:\d+/", worker.log()), worker.log()[:3000]
    # The queue is a quorum queue: declaring it as a classic one is refused as inequivalent.
    with Connection(job_env["IMAGEGEN_BROKER_URL"]) as connection:
        channel = connection.channel()
        with pytest.raises(amqp.exceptions.PreconditionFailed, match="x-queue-type"):
            channel.queue_declare(job_env["IMAGEGEN_QUEUE"], durable=True, auto_delete=False)


def _log_times(log: str, *markers: str) -> list[datetime]:
    """Timestamps of the log lines containing every marker (Celery's "[2026-01-01 12:00:00,123: ..." prefix)."""
    return [
        datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
        for line in log.splitlines()
        if all(marker in line for marker in markers)
    ]


def test_countdown_retries_wait_in_the_broker(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    # Two transient failures: retries after 1-2 s and 2-4 s (equal jitter, rounded up to
    # whole seconds), waiting in RabbitMQ's delay queues, not unacked in the worker.
    worker = start_worker(
        {
            "IMAGEGEN_OFFLINE_FAILURES": "0:transient*2",
            "IMAGEGEN_RETRY_BASE_DELAY_S": "2",
            "IMAGEGEN_RETRY_MAX_DELAY_S": "4",
        }
    )
    result = client.submit(offline_node).wait(timeout=60)

    assert result.status == "succeeded"
    assert [image.attempts for image in result.images] == [3]
    log = worker.log()
    retried = _log_times(log, "retrying in")
    received = _log_times(log, "imagegen.generate_variation[", "] received")
    assert len(retried) == 2, log[-3000:]
    for retry_at in retried:
        # The next delivery comes when the broker releases it, at least a second later
        # (a worker-held ETA message would be "received" within milliseconds).
        next_delivery = min(t for t in received if t > retry_at)
        assert (next_delivery - retry_at).total_seconds() >= 0.9, log[-3000:]
    # Celery's delay levels exist in the vhost (a passive declare of a missing queue fails).
    with Connection(worker.env["IMAGEGEN_BROKER_URL"]) as connection:
        connection.channel().queue_declare("celery_delayed_0", passive=True)


def test_a_killed_worker_s_variation_is_finished_by_another_within_seconds(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    env = {"IMAGEGEN_OFFLINE_LATENCY_S": "3"}  # default visibility/redelivery settings: RabbitMQ needs none
    doomed = start_worker(env)
    offline_node["inputs"]["variations"] = 2
    handle = client.submit(offline_node)
    wait_for_log(doomed, "imagegen.generate_variation[", count=2)  # both variations running there
    rescuer = start_worker(env)

    killed_at = time.monotonic()
    doomed.kill()  # SIGKILL mid-generation: nothing acked, the TCP connection drops
    redelivered_at = wait_for_log(rescuer, "imagegen.generate_variation[", timeout=20, count=2)
    result = handle.wait(timeout=30)
    finished_at = time.monotonic()

    print(
        f"\nRabbitMQ: SIGKILLed worker's variations redelivered after {redelivered_at - killed_at:.2f} s; "
        f"job finished {finished_at - killed_at:.2f} s after the kill (3 s generations)"
    )
    assert result.status == "succeeded" and len(result.images) == 2
    assert_images_on_disk(result)
    assert redelivered_at - killed_at < 5
    # Redelivered at once, but generated again only once the dead execution's variation lease
    # has run out (at most one lease after its last renewal; a live holder would still be paying).
    assert finished_at - killed_at < 15 + VARIATION_LEASE_S


def test_retries_on_every_pool_thread_never_stall_the_worker(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    """Eight pool threads retrying at once buffer task events faster than the 50 ms window drains
    them. Celery's dispatcher flushed a full buffer on the sending pool thread, which then waited
    for RabbitMQ's publisher confirm holding the dispatcher's lock while the hub waited for the
    lock: the worker took no message until RabbitMQ dropped the connection a minute later
    (worker/event_batching.py). Every flush now runs on the hub's thread."""
    worker = start_worker({"IMAGEGEN_OFFLINE_FAILURES": "0:transient*4,1:transient*4,2:transient*4,3:transient*4"})
    offline_node["inputs"]["variations"] = 4
    handles = [client.submit(offline_node) for _ in range(8)]  # 32 variations, 128 retries
    results = [handle.wait(timeout=45) for handle in handles]  # a stall lasts about a minute

    assert [r.status for r in results] == ["succeeded"] * 8, worker.log()[-3000:]
    assert all(image.attempts == 5 for r in results for image in r.images)
