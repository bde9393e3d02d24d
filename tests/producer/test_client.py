"""The producer API's edges, against the real Redis result backend."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis
from kombu.exceptions import OperationalError

from contract.errors import NodeValidationError
from contract.events import events_key
from contract.lost_jobs import end_if_lost
from contract.queue import SIGN_RESULT_TTL_S, SIGN_TASK_PREFIX, SIGN_URL, job_key, job_task_id, sign_task_id
from contract.work import SignRequest
from producer.client import ImageGenClient, JobCrashed, JobNotFound, JobTimeout, QueueUnavailable
from tests.conftest import StartWorker


def test_unknown_job_ids_fail_fast(client: ImageGenClient) -> None:
    with pytest.raises(JobNotFound):
        client.status("nope")
    with pytest.raises(JobNotFound):
        client.wait("nope", timeout=1)


def test_a_job_nobody_runs_times_out(client: ImageGenClient, offline_node: dict[str, object]) -> None:
    handle = client.submit(offline_node)  # no worker on this test's queue
    assert handle.status().state == "queued" and client.result(handle.job_id) is None
    with pytest.raises(JobTimeout, match=r"did not finish within 0\.5 s"):
        handle.wait(timeout=0.5)


def test_a_wait_ends_with_its_timeout_not_at_celerys_next_second(
    client: ImageGenClient, offline_node: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery's drainer waited for the result message in steps of one second and checked the
    timeout only between them: ``wait(timeout=0.3)`` took 1.0 s, ``wait(timeout=1.5)`` 2.0 s."""
    handle = client.submit(offline_node)  # no worker on this test's queue
    consumer = client.celery.backend.result_consumer
    drain, asked = consumer.drain_events, []

    def recording(timeout: float | None = None) -> Any:
        asked.append((time.monotonic(), timeout))
        return drain(timeout=timeout)

    monkeypatch.setattr(consumer, "drain_events", recording)
    for timeout in (0.3, 1.5):
        asked.clear()
        started = time.monotonic()
        with pytest.raises(JobTimeout, match=f"did not finish within {timeout} s"):
            handle.wait(timeout=timeout)
        elapsed = time.monotonic() - started
        assert asked
        # No wait for the result message reaches past the caller's timeout (the margin: the
        # status read and the subscription come first; the old steps overshot by 0.5 s and more).
        assert all(at + (wait or 0) <= started + timeout + 0.25 for at, wait in asked), asked
        assert timeout <= elapsed < timeout + 0.45


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1.0, "5", True])
def test_a_timeout_no_clock_reaches_is_refused_before_waiting(
    client: ImageGenClient, offline_node: dict[str, object], timeout: Any
) -> None:
    """nan never expired (the wait spun, ~7,000 Redis commands a second); inf overflowed a clock;
    a string raised a bare TypeError and True waited one second. Each is a problem on ``timeout``,
    in the client's error family."""
    handle = client.submit(offline_node)
    for call in (handle.wait, lambda timeout: list(handle.events(timeout=timeout))):
        with pytest.raises(NodeValidationError, match=r"timeout = .*must be a number of seconds"):
            call(timeout=timeout)


def test_a_crashed_job_task_is_reported_not_raised_raw(client: ImageGenClient, offline_node: dict[str, object]) -> None:
    handle = client.submit(offline_node, job_id="crashed-1")
    client.celery.backend.mark_as_failure("crashed-1@1", ConnectionError("redis went away"))
    with pytest.raises(JobCrashed, match="crashed in the worker: ConnectionError: redis went away"):
        handle.wait(timeout=5)


def test_a_sign_request_nobody_waits_for_any_more_leaves_no_url_behind(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, object], redis_url: str
) -> None:
    """The signed URL is a bearer credential returned through the result backend, which the
    client deletes once read; a worker that reaches the request after the client gave up must not
    leave one there for the result TTL (7 days)."""
    worker = start_worker()
    [image] = client.submit(offline_node).wait(timeout=60).images
    worker.stop()
    with pytest.raises(JobTimeout, match="no worker signed"):
        client.sign(image.uri, timeout=1)
    late = start_worker()
    store = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 30
    while "sign_url" not in late.log() and time.monotonic() < deadline:
        time.sleep(0.2)

    def backend_states() -> dict[str, tuple[str, Any]]:
        states = {}
        for key in store.scan_iter("celery-task-meta-*"):
            task_id = key.decode().removeprefix("celery-task-meta-")
            result = client.celery.AsyncResult(task_id)
            states[task_id] = (result.state, result.result)
        return states

    # The late worker stores the request as REVOKED (expired) once it reaches it: on a loaded
    # machine that can be seconds after its log names the task.
    states = backend_states()
    while not any(state == "REVOKED" for state, _ in states.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
        states = backend_states()
    time.sleep(0.5)  # and nothing else lands after it
    states = backend_states()
    # This request's image only: the Redis is shared, and another test's sign may have left its result.
    signed = [r for _, r in states.values() if isinstance(r, dict) and "url" in r and r.get("uri") == image.uri]
    assert signed == [], states
    assert any(state == "REVOKED" for state, _ in states.values()), (states, late.log()[-2000:])


def test_a_signed_url_left_in_the_backend_expires_within_a_minute(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, object],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A URL the client never deletes (it died after reading it, or the worker signed in the moment
    after its deadline) expires after SIGN_RESULT_TTL_S; job documents keep the result TTL."""
    start_worker()
    handle = client.submit(offline_node)
    [image] = handle.wait(timeout=60).images
    task_id = sign_task_id()
    request = SignRequest(uri=image.uri).model_dump(mode="json")
    answer = client.celery.send_task(SIGN_URL, args=(request,), task_id=task_id).get(timeout=30)
    assert answer["url"]
    store = redis.Redis.from_url(redis_url)
    assert 0 < store.ttl(f"celery-task-meta-{task_id}") <= SIGN_RESULT_TTL_S
    assert store.ttl(f"celery-task-meta-{job_task_id(handle.job_id, 1)}") > SIGN_RESULT_TTL_S * 100
    # Any state of a sign request, a failure (a time limit, a lost worker) included.
    failed = sign_task_id()
    client.celery.backend.mark_as_failure(failed, RuntimeError("hard time limit"))
    assert 0 < store.ttl(f"celery-task-meta-{failed}") <= SIGN_RESULT_TTL_S
    # And the client's own sign requests are ones the backend knows as such.
    sent = []
    send_task = client.celery.send_task

    def recording(*args: Any, **kwargs: Any) -> Any:
        sent.append(kwargs.get("task_id"))
        return send_task(*args, **kwargs)

    monkeypatch.setattr(client.celery, "send_task", recording)
    assert client.sign(image.uri).url
    assert len(sent) == 1 and sent[0].startswith(SIGN_TASK_PREFIX)


@pytest.mark.parametrize(
    ("job_id", "rerun", "said"),
    [
        (None, True, "rerun = true: a rerun needs the job_id of the job to run again"),
        ("rerun-1", "no", 'rerun = "no": must be true or false'),
        ("rerun-1", 1, "rerun = 1: must be true or false"),
    ],
)
def test_a_rerun_needs_a_job_id_and_a_boolean(
    client: ImageGenClient, offline_node: dict[str, object], job_id: str | None, rerun: Any, said: str
) -> None:
    """Before, ``rerun=True`` without an id quietly created a new job, and ``rerun="no"`` reran;
    then the message for a missing id said "must be true or false" of a ``rerun`` that was true."""
    with pytest.raises(NodeValidationError) as caught:
        client.submit(offline_node, job_id=job_id, rerun=rerun)
    assert said in str(caught.value)
    if rerun is True:  # a rerun that is true is not told to be true or false
        assert "must be true or false" not in str(caught.value)
    with pytest.raises(NodeValidationError) as caught:
        client.signature(offline_node, job_id=job_id, rerun=rerun)
    assert said in str(caught.value)


def test_chain_names_an_upstream_that_is_no_signature_and_claims_nothing(
    client: ImageGenClient, offline_node: dict[str, object]
) -> None:
    """Before: a raw TypeError from Celery, after the link had claimed the id (a job left queued)."""
    job_id = f"chain-{uuid.uuid4().hex[:8]}"
    with pytest.raises(NodeValidationError) as caught:
        client.chain("llm", offline_node, job_id=job_id)  # type: ignore[arg-type]
    assert 'upstream = "llm": must be the upstream task\'s Celery signature' in str(caught.value)
    with pytest.raises(JobNotFound):
        client.status(job_id)


def test_a_rerun_of_a_job_never_submitted_is_refused_and_creates_nothing(
    client: ImageGenClient, offline_node: dict[str, object]
) -> None:
    """Before, it quietly created and enqueued a new job (a mistyped id ran a job nobody follows)."""
    job_id = f"never-{uuid.uuid4().hex[:8]}"
    with pytest.raises(JobNotFound, match=rf"rerun = true: no job '{job_id}' to run again"):
        client.submit(offline_node, job_id=job_id, rerun=True)
    with pytest.raises(JobNotFound, match="rerun = true: no job"):
        client.signature(offline_node, job_id=job_id, rerun=True)
    assert client.records.read(job_id) is None
    assert not client.records.client.exists(job_key(job_id), events_key(job_id))


def _unsent(client: ImageGenClient, cancel_first: bool) -> Any:
    """A send_task that fails as a broker that went away does, after another caller's cancel."""

    def send(job_id: str) -> Any:
        def failing(*_: Any, **__: Any) -> None:
            if cancel_first:
                client.cancel(job_id)
            raise OperationalError("broker down")

        return failing

    return send


def test_a_first_submit_that_cannot_be_sent_leaves_nothing_of_the_job(
    client: ImageGenClient, offline_node: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller may submit the id again: no record, and no event log a new job would inherit."""
    job_id = f"unsent-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(client.celery, "send_task", _unsent(client, cancel_first=False)(job_id))
    with pytest.raises(QueueUnavailable):
        client.submit(offline_node, job_id=job_id)
    assert client.records.read(job_id) is None
    assert not client.records.client.exists(events_key(job_id), job_key(job_id))


def test_a_cancel_of_a_submit_that_cannot_be_sent_stands(
    client: ImageGenClient, offline_node: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the record and its "canceled" were dropped apart: the record went, the event log
    stayed, and a new job under the id began with another's "canceled"."""
    job_id = f"unsent-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(client.celery, "send_task", _unsent(client, cancel_first=True)(job_id))
    with pytest.raises(QueueUnavailable):
        client.submit(offline_node, job_id=job_id)
    status = client.records.read(job_id)
    assert status is not None and status.state == "queued" and status.cancel_requested
    time.sleep(1.1)
    ended = end_if_lost(client.records, client.celery.backend, job_id, 0)
    assert ended is not None and ended.status == "canceled"


def test_a_rerun_canceled_before_it_could_be_sent_stays_canceled(
    client: ImageGenClient, offline_node: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Undoing the rerun had left its cancel (run 2) in the record: the next rerun took run 2 and
    found itself canceled before it began."""
    job_id = f"unsent-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(client.celery, "send_task", lambda *_, **__: None)  # sent to no worker
    client.submit(offline_node, job_id=job_id)
    time.sleep(1.1)
    assert end_if_lost(client.records, client.celery.backend, job_id, 0) is not None  # run 1 ends failed
    monkeypatch.setattr(client.celery, "send_task", _unsent(client, cancel_first=True)(job_id))
    with pytest.raises(QueueUnavailable):
        client.submit(offline_node, job_id=job_id, rerun=True)
    status = client.records.read(job_id)
    assert status is not None and (status.run, status.state, status.cancel_requested) == (2, "queued", True)
    # Without a cancel, an unsent rerun is undone and may be asked again.
    monkeypatch.setattr(client.celery, "send_task", lambda *_, **__: None)
    time.sleep(1.1)
    ended = end_if_lost(client.records, client.celery.backend, job_id, 0)
    assert ended is not None and ended.status == "canceled"
    other = f"unsent-{uuid.uuid4().hex[:8]}"
    client.submit(offline_node, job_id=other)
    time.sleep(1.1)
    end_if_lost(client.records, client.celery.backend, other, 0)
    monkeypatch.setattr(client.celery, "send_task", _unsent(client, cancel_first=False)(other))
    with pytest.raises(QueueUnavailable):
        client.submit(offline_node, job_id=other, rerun=True)
    undone = client.records.read(other)
    assert undone is not None and (undone.run, undone.state) == (1, "failed")


@pytest.mark.parametrize("repaired_by", ["cancel", "wait"])
def test_a_canceled_chain_job_whose_document_was_not_stored_gets_it_later(
    client: ImageGenClient, offline_node: dict[str, object], monkeypatch: pytest.MonkeyPatch, repaired_by: str
) -> None:
    """The cancel script ends a chain job waiting for its upstream, then the client stores its
    document. Before, a Redis fault between the two left it without one for good: the sweep passes
    over a finished job, a second cancel had nothing to do, and ``wait()`` never returned."""
    job_id = f"chain-{uuid.uuid4().hex[:8]}"
    client.signature(offline_node, job_id)  # claimed, never sent: it waits for its upstream
    store_result = client.celery.backend.store_result
    with monkeypatch.context() as patch:
        patch.setattr(client.celery.backend, "store_result", _raising(redis.ConnectionError("dropped")))
        with pytest.raises(QueueUnavailable):
            client.cancel(job_id)
    assert client.celery.backend.store_result == store_result
    assert client.status(job_id).state == "canceled" and client.result(job_id) is None
    if repaired_by == "cancel":
        assert not client.cancel(job_id).changed
        assert client.result(job_id) is not None
    result = client.wait(job_id, timeout=5)
    assert result.status == "canceled" and [e.kind for e in result.errors] == ["canceled"]
    assert [e.event for e in client.events(job_id, timeout=5)] == ["canceled", "completed"]


def _raising(error: Exception) -> Any:
    def fail(*_: Any, **__: Any) -> None:
        raise error

    return fail
