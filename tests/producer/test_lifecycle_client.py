"""The client's lifecycle methods (cancel, events, webhook deliveries) keep the
client's typed errors: a Redis fault is QueueUnavailable, never a raw traceback."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from contract.errors import NodeValidationError
from contract.jobs import utcnow
from contract.redis_client import transient_retry
from contract.settings import Settings
from devtools.redis_server import start_redis
from producer.client import ImageGenClient, JobNotFound, QueueUnavailable
from tests.cli import imagegen


@pytest.fixture
def broken_client(settings: Settings, redis_url: str) -> Iterator[ImageGenClient]:
    # A Redis that answers every connection with an error (database 99 does not exist): not retried.
    broken = settings.model_copy(update={"redis_url": redis_url.rsplit("/", 1)[0] + "/99"})
    producer = ImageGenClient(broken)
    yield producer
    producer.close()


def test_lifecycle_methods_raise_queue_unavailable(broken_client: ImageGenClient) -> None:
    with pytest.raises(QueueUnavailable, match="ResponseError"):
        broken_client.cancel("some-job")
    with pytest.raises(QueueUnavailable):
        broken_client.events("some-job")
    with pytest.raises(QueueUnavailable):
        broken_client.webhook_deliveries("some-job")


def test_deliveries_of_a_job_never_submitted_are_not_found(client: ImageGenClient, job_env: dict[str, str]) -> None:
    # They were [], where status, result and events say the job does not exist.
    with pytest.raises(JobNotFound, match="no job 'never-submitted' \\(never submitted"):
        client.webhook_deliveries("never-submitted")
    run = imagegen(job_env, "webhooks", "never-submitted")
    assert run.returncode == 4 and "Traceback" not in run.stderr
    assert "no job 'never-submitted'" in run.stderr, run.stderr  # as status says it, not the bare id


def test_cancel_and_deliveries_check_the_job_id(client: ImageGenClient) -> None:
    for hostile in ("imagegen:job:x", "a@1", "../x", ""):
        with pytest.raises(NodeValidationError):
            client.cancel(hostile)
        with pytest.raises(NodeValidationError):
            client.webhook_deliveries(hostile)
        with pytest.raises(NodeValidationError):
            client.events(hostile)


def test_a_wait_whose_redis_dies_ends_within_the_clients_patience(settings: Settings, offline_node: Any) -> None:
    """Celery's result backend retried its pub/sub reconnect for ever (result_backend_always_retry):
    a waiting client hung past its own timeout. Now it gives up after its patience."""
    server = start_redis()
    patient = settings.model_copy(update={"redis_url": server.url, "client_redis_patience_s": 2.0})
    client = ImageGenClient(patient)
    outcome: list[BaseException] = []
    try:
        handle = client.submit(offline_node)  # no worker: it waits

        def wait() -> None:
            try:
                handle.wait(timeout=600)
            except BaseException as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        time.sleep(1.0)
        server.stop()
        waiter.join(120)  # patience 2 s plus reconnect attempts; a hang is far longer
        assert not waiter.is_alive(), "the wait did not end after Redis went away"
        assert outcome and isinstance(outcome[0], QueueUnavailable), outcome
    finally:
        server.stop()
        client.close()


def test_a_redis_that_never_answers_costs_the_patience_not_a_socket_timeout_per_try() -> None:
    """A listener that accepts and never replies: each try waits a whole socket timeout, so the
    retry is ended by time (contract/redis_client.py), not only by its count."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, retry=transient_retry(3.0))
    try:
        with pytest.raises(redis.TimeoutError):
            client.ping()
        time.sleep(0.5)  # the last connection is accepted
    finally:
        client.close()
        listener.close()
    # One connection per try. With 2 s a try, a third try (the count allows it) would start after
    # the 3 s patience: it does not.
    assert len(accepted) == 2, len(accepted)


def test_a_submit_whose_message_cannot_be_sent_changes_nothing(
    client: ImageGenClient, settings: Settings, offline_node: Any
) -> None:
    """The broker is down, the job store is not: a first submit leaves no record and a rerun leaves
    the finished run as it was, so the caller can simply try again with the same id."""
    no_broker = ImageGenClient(
        settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0", "client_redis_patience_s": 1.0})
    )
    try:
        with pytest.raises(QueueUnavailable):
            no_broker.submit(offline_node, job_id="unsent-1")
        assert client.records.read("unsent-1") is None

        client.submit(offline_node, job_id="unsent-2")  # no worker: queued; then it ends failed
        client.records.finish_run("unsent-2", 1, "failed", utcnow())
        before = client.status("unsent-2")
        with pytest.raises(QueueUnavailable):
            no_broker.submit(offline_node, job_id="unsent-2", rerun=True)
        assert client.status("unsent-2") == before  # state, run, counts and times as they were
        assert client.submit(offline_node, job_id="unsent-2", rerun=True).run == 2  # a retry works
    finally:
        no_broker.close()
