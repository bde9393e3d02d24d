"""A job's event log through the real path: real worker processes append to the
job's Redis Stream, the client follows it with blocking reads."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from contract.errors import NodeValidationError
from contract.events import JobEvents, decode, event_record, events_key
from contract.queue import RUN_JOB, job_key, job_task_id
from contract.work import JobOrder
from producer.client import ImageGenClient, JobNotFound, JobTimeout
from tests.conftest import StartWorker


def test_a_four_variation_job_tells_started_each_variation_and_completed(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], redis_url: str
) -> None:
    offline_node["inputs"]["variations"] = 4
    handle = client.submit(offline_node, job_id="events-4")
    # The worker starts after the reader is created: the first reads block until events come.
    events = client.events("events-4", timeout=60)
    start_worker({"IMAGEGEN_OFFLINE_LATENCY_S": "0.3"}, concurrency=2)
    everything = list(events)
    result = handle.wait(timeout=30)

    # Progress (an attempt starting) comes before each variation's outcome.
    begun = [e for e in everything if e.event == "variation_started"]
    assert sorted(e.data["index"] for e in begun) == [0, 1, 2, 3] and all(e.data["attempt"] == 1 for e in begun)
    for event in begun:
        outcome = next(e for e in everything if e.event == "variation" and e.data["index"] == event.data["index"])
        assert everything.index(event) < everything.index(outcome)
    seen = [e for e in everything if e.event != "variation_started"]
    assert [e.event for e in seen] == ["started", "variation", "variation", "variation", "variation", "completed"]
    assert all(e.run == 1 for e in everything)
    all_ids = [e.id for e in everything]
    assert all_ids == sorted(all_ids, key=lambda i: tuple(int(p) for p in i.split("-"))) and len(set(all_ids)) == 10
    ids = [e.id for e in seen]
    started = seen[0].data
    assert (started["job_id"], started["run"], started["variations"]) == ("events-4", 1, 4)
    variations = seen[1:5]
    assert sorted(e.data["index"] for e in variations) == [0, 1, 2, 3]
    # Each variation's record is the one the result document lists, outlined (no provider
    # metadata, no null fields); the completed event carries the whole document.
    by_index = {image.index: image for image in result.images}
    for event in variations:
        assert event.data["kind"] == "image" and event.data["run"] == 1
        assert event.data["record"] == event_record(by_index[event.data["index"]])
    assert seen[-1].data == result.model_dump(mode="json")

    # Resuming after a given id returns only the later events (Last-Event-ID).
    later = list(client.events("events-4", after=seen[2].id, timeout=10))
    assert [e.id for e in later] == all_ids[all_ids.index(seen[2].id) + 1 :]
    reader = JobEvents(client.records.client, 60)
    assert [e.id for e in reader.read("events-4", after=seen[4].id)] == all_ids[all_ids.index(seen[4].id) + 1 :]
    assert reader.read("events-4", after=ids[-1]) == []
    # After the run's "completed" nothing follows: at once, not after a wait and a repeat.
    started = time.monotonic()
    assert list(client.events("events-4", after=seen[-1].id, timeout=10)) == []
    assert time.monotonic() - started < 2
    # A finished job's events are read even with no time left to wait.
    assert [e.id for e in client.events("events-4", timeout=0)] == all_ids

    # Bounded; kept IMAGEGEN_EVENTS_RETENTION_S after the job ended, the job record much longer.
    raw = redis.Redis.from_url(redis_url)
    assert 0 < raw.ttl(events_key("events-4")) <= client.settings.events_retention_s
    assert raw.ttl(job_key("events-4")) > client.settings.events_retention_s
    entry_id, fields = raw.xrange(events_key("events-4"), count=1)[0]
    assert decode(entry_id, fields, "events-4") == seen[0]  # what an asyncio reader gets from the same entry

    # Once the log has expired, a reader still gets the ending: the document as one "completed".
    raw.delete(events_key("events-4"))
    [ending] = list(client.events("events-4", timeout=10))
    assert (ending.event, ending.run, ending.data) == ("completed", 1, result.model_dump(mode="json"))


def test_a_failed_variation_is_an_error_record_event(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    start_worker({"IMAGEGEN_OFFLINE_FAILURES": "1:permanent"})
    offline_node["inputs"]["variations"] = 2
    handle = client.submit(offline_node)
    seen = list(client.events(handle.job_id, timeout=60))
    result = handle.wait(timeout=10)

    [error_event] = [e for e in seen if e.event == "variation" and e.data["kind"] == "error"]
    assert error_event.data["index"] == 1 and error_event.data["record"]["kind"] == "permanent"
    assert error_event.data["record"] == event_record(result.errors[0])
    assert seen[-1].event == "completed" and seen[-1].data["status"] == "partial"


def test_an_invalid_job_still_completes_its_event_log(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    """A job message that bypassed the producer and fails the worker's own validation."""
    start_worker()
    offline_node["inputs"]["variations"] = 999
    submitted_at = _now()
    client.records.claim(
        "events-invalid", node_fingerprint="x", model="offline_preview", variations=1, submitted_at=submitted_at
    )
    order = JobOrder(job_id="events-invalid", node=offline_node, submitted_at=submitted_at)
    client.celery.send_task(RUN_JOB, args=(order.model_dump(mode="json"),), task_id=job_task_id("events-invalid", 1))
    seen = list(client.events("events-invalid", timeout=60))
    assert [e.event for e in seen] == ["completed"]
    assert seen[0].data["status"] == "failed" and "variations" in seen[0].data["errors"][0]["message"]
    assert client.status("events-invalid").state == "failed"


def test_a_rerun_follows_its_own_run(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    start_worker({"IMAGEGEN_OFFLINE_FAILURES": "0:permanent*1"})  # fails on run 1 only (attempt 1)
    first = client.submit(offline_node, job_id="events-rerun")
    assert first.wait(timeout=60).status == "failed"
    second = client.submit(offline_node, job_id="events-rerun", rerun=True)
    seen = list(client.events("events-rerun", timeout=60))  # from the start: run 1's completed does not end it
    assert second.wait(timeout=30).status in ("succeeded", "failed")
    assert [(e.event, e.run) for e in seen if e.event not in ("variation", "variation_started")] == [
        ("started", 1),
        ("completed", 1),
        ("started", 2),
        ("completed", 2),
    ]


def test_reading_events_of_no_job_or_after_a_hostile_id_is_refused(client: ImageGenClient) -> None:
    with pytest.raises(JobNotFound):
        client.events("never-submitted")
    client.records.claim(
        "events-quiet", node_fingerprint="x", model="offline_preview", variations=1, submitted_at=_now()
    )
    for hostile in ("$", "+", "0-0 junk", "1-2-3", "-", "x" * 300, "9" * 30 + "-0"):
        with pytest.raises(NodeValidationError) as refused:
            client.events("events-quiet", after=hostile)
        assert refused.value.problems[0].field == "after"
    with pytest.raises(JobTimeout):  # nothing comes: a bounded wait, then a typed error
        list(client.events("events-quiet", timeout=0.5))


def _now() -> Any:
    from contract.jobs import utcnow

    return utcnow()


def test_a_retry_is_announced_with_its_reason_and_wait(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    """What the Playground shows on a variation's tile while it waits to try again."""
    start_worker({"IMAGEGEN_OFFLINE_FAILURES": "0:transient*1"})  # attempt 1 fails, attempt 2 succeeds
    handle = client.submit(offline_node, job_id="events-retry")
    seen = list(client.events("events-retry", timeout=60))
    assert handle.wait(timeout=10).status == "succeeded"

    [retrying] = [e for e in seen if e.event == "variation_retrying"]
    assert (retrying.data["index"], retrying.data["attempt"]) == (0, 1)
    assert retrying.data["reason"] and 0 < retrying.data["retry_in_s"] <= 2
    starts = [e.data["attempt"] for e in seen if e.event == "variation_started"]
    assert starts == [1, 2]  # each attempt announces its start
    kinds = [e.event for e in seen]
    assert kinds.index("variation_retrying") < kinds.index("variation") < kinds.index("completed")
