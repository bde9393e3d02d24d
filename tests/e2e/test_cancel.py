"""Cooperative cancel through the real path: the client flags the job, real
worker processes skip what has not started (no provider call), the job ends
``canceled`` with the images already made."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from contract.jobs import utcnow
from devtools.fake_gemini import FakeGemini
from producer.client import ImageGenClient, JobConflict, JobNotFound
from tests.conftest import StartWorker
from tests.e2e.helpers import assert_images_on_disk, assert_matches_published_schema

IMAGE_MODEL_ID = "gemini-3-pro-image"


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini(api_key="AIza-cancel-test", latency_s=2.0) as server:
        yield server


def test_cancel_during_a_job_skips_what_has_not_started(
    start_worker: StartWorker, client: ImageGenClient, seed_node: dict[str, Any], fake: FakeGemini
) -> None:
    start_worker(
        {
            "GOOGLE_GEMINI_BASE_URL": fake.base_url,
            "GEMINI_API_KEY": "AIza-cancel-test",
            "GOOGLE_API_KEY": "",
            "GOOGLE_GENAI_USE_VERTEXAI": "false",
        },
        concurrency=2,  # with 6 variations of 2 s each, some have not started when the cancel lands
    )
    seed_node["inputs"]["variations"] = 6
    handle = client.submit(seed_node, job_id="cancel-live")
    events = client.events("cancel-live", timeout=90)
    before_cancel = []
    for event in events:
        if event.event == "variation":
            before_cancel.append(event.data["index"])
            break
    outcome = client.cancel("cancel-live")
    assert outcome.changed and outcome.state == "running" and outcome.job_id == "cancel-live"
    rest = list(events)
    result = handle.wait(timeout=60)

    assert result.status == "canceled" and client.status("cancel-live").state == "canceled"
    assert 1 <= len(result.images) < 6
    assert set(before_cancel) <= {image.index for image in result.images}  # made before the cancel: kept
    assert {image.index for image in result.images} | {error.index for error in result.errors} == set(range(6))
    assert result.errors and all(error.kind == "canceled" and error.attempts == 0 for error in result.errors)
    image_calls = [r for r in fake.requests if r.model == IMAGE_MODEL_ID]
    assert len(image_calls) == len(result.images) < 6  # a canceled variation made no provider call
    assert_images_on_disk(result)
    assert_matches_published_schema(result)
    # The log: the cancel marker, the variations still reported, then completed with the document.
    kinds = [e.event for e in rest]
    assert kinds.index("canceled") < kinds.index("completed") == len(kinds) - 1
    assert rest[-1].data == result.model_dump(mode="json")


def test_cancel_of_a_queued_job_makes_no_image(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    offline_node["inputs"]["variations"] = 3
    handle = client.submit(offline_node, job_id="cancel-queued")
    outcome = client.cancel("cancel-queued")  # no worker yet: still queued
    assert (outcome.changed, outcome.state) == (True, "queued")
    again = client.cancel("cancel-queued")
    assert not again.changed and "requested before" in again.message
    assert client.status("cancel-queued").cancel_requested

    start_worker()
    result = handle.wait(timeout=60)
    assert result.status == "canceled" and result.images == []
    assert [(e.index, e.kind, e.attempts) for e in result.errors] == [(i, "canceled", 0) for i in range(3)]
    assert_matches_published_schema(result)
    # Not rerunnable: a cancel is a decision, not a failure to retry.
    with pytest.raises(JobConflict, match="is canceled"):
        client.submit(offline_node, job_id="cancel-queued", rerun=True)


def test_a_waiting_retry_stops_at_its_next_wake(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    worker = start_worker(
        {
            "IMAGEGEN_OFFLINE_FAILURES": "0:transient*9",
            "IMAGEGEN_RETRY_BASE_DELAY_S": "2",
            "IMAGEGEN_RETRY_MAX_DELAY_S": "3",
        }
    )
    handle = client.submit(offline_node, job_id="cancel-retry")
    deadline = time.monotonic() + 30
    while "retrying in" not in worker.log():
        assert time.monotonic() < deadline, worker.log()[-2000:]
        time.sleep(0.1)
    assert client.cancel("cancel-retry").changed
    result = handle.wait(timeout=60)
    [error] = result.errors
    assert result.status == "canceled" and error.kind == "canceled"
    assert error.attempts >= 1 and "waited to retry" in error.message


def test_cancel_of_a_finished_job_changes_nothing_and_says_so(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    start_worker()
    result = client.submit(offline_node, job_id="cancel-done").wait(timeout=60)
    assert result.status == "succeeded"
    outcome = client.cancel("cancel-done")
    assert (outcome.changed, outcome.state) == (False, "succeeded")
    assert outcome.message == "job cancel-done is already succeeded; nothing to cancel"
    assert client.status("cancel-done").state == "succeeded" and not client.status("cancel-done").cancel_requested
    assert client.result("cancel-done") == result
    events = [e.event for e in client.events("cancel-done", timeout=5)]
    assert events == ["started", "variation_started", "variation", "completed"]
    with pytest.raises(JobNotFound):
        client.cancel("never-submitted")


def test_the_lost_job_sweep_leaves_a_canceled_job_alone(client: ImageGenClient) -> None:
    records = client.records
    records.claim("cancel-swept", node_fingerprint="x", model="offline_preview", variations=1, submitted_at=utcnow())
    assert client.cancel("cancel-swept").changed
    assert records.finish_run("cancel-swept", 1, "succeeded", utcnow())[0] == "canceled"
    assert records.end_lost("cancel-swept", deadline_s=0) is None  # finished: not lost
    assert "cancel-swept" not in records.stalled(deadline_s=0)
    status = client.status("cancel-swept")
    assert status.finished and status.state == "canceled" and not status.lost
