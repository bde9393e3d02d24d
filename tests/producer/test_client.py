"""The producer API's edges, against the real Redis result backend."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from contract.errors import NodeValidationError
from producer.client import ImageGenClient, JobCrashed, JobNotFound, JobTimeout
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
    time.sleep(1)
    states = {}
    for key in store.scan_iter("celery-task-meta-*"):
        task_id = key.decode().removeprefix("celery-task-meta-")
        result = client.celery.AsyncResult(task_id)
        states[task_id] = (result.state, result.result)
    # This request's image only: the Redis is shared, and another test's sign may have left its result.
    signed = [r for _, r in states.values() if isinstance(r, dict) and "url" in r and r.get("uri") == image.uri]
    assert signed == [], states
    assert any(state == "REVOKED" for state, _ in states.values()), (states, late.log()[-2000:])


@pytest.mark.parametrize(("job_id", "rerun"), [(None, True), ("rerun-1", "no"), ("rerun-1", 1)])
def test_a_rerun_needs_a_job_id_and_a_boolean(
    client: ImageGenClient, offline_node: dict[str, object], job_id: str | None, rerun: Any
) -> None:
    """Before, ``rerun=True`` without an id quietly created a new job, and ``rerun="no"`` reran."""
    with pytest.raises(NodeValidationError, match=r"rerun = .*a rerun needs the job_id"):
        client.submit(offline_node, job_id=job_id, rerun=rerun)
