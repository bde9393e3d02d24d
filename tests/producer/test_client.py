"""The producer API's edges, against the real Redis result backend."""

from __future__ import annotations

import pytest

from producer.client import ImageGenClient, JobCrashed, JobNotFound, JobTimeout


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


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1.0])
def test_a_timeout_no_clock_reaches_is_refused_before_waiting(
    client: ImageGenClient, offline_node: dict[str, object], timeout: float
) -> None:
    """nan never expired (the wait spun, ~7,000 Redis commands a second); inf overflowed a clock."""
    handle = client.submit(offline_node)
    for call in (handle.wait, lambda timeout: list(handle.events(timeout=timeout))):
        with pytest.raises(ValueError, match="is not a number of seconds"):
            call(timeout=timeout)


def test_a_crashed_job_task_is_reported_not_raised_raw(client: ImageGenClient, offline_node: dict[str, object]) -> None:
    handle = client.submit(offline_node, job_id="crashed-1")
    client.celery.backend.mark_as_failure("crashed-1@1", ConnectionError("redis went away"))
    with pytest.raises(JobCrashed, match="crashed in the worker: ConnectionError: redis went away"):
        handle.wait(timeout=5)
