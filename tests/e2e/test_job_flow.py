"""The whole job through the real path: producer -> Redis -> real worker
processes -> chord -> stored images -> result document in Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from celery.backends.base import COMPRESSED_PAYLOAD_MAGIC, decompress_payload

from contract.events import NOT_KEPT, announce_variation, event_record, events_key
from contract.queue import FINALIZE, GENERATE_VARIATION, RUN_JOB, dispatch_key, job_key
from contract.result import GenerationMetadata, ImageRecord, JobResult
from contract.settings import Settings
from contract.work import JobOrder, JobSummary, VariationWork
from devtools.redis_server import start_redis
from devtools.worker_process import WorkerProcess
from producer.client import ImageGenClient
from tests.broker.conftest import wait_for_log
from tests.conftest import StartWorker
from tests.e2e.helpers import assert_images_on_disk, assert_matches_published_schema, image_file
from tests.redis_scan import all_redis_entries


def test_seed_example_succeeds_with_result_under_job_id(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], redis_url: str
) -> None:
    start_worker()
    handle = client.submit(offline_node, job_id="seed-example-1")
    result = handle.wait(timeout=60)

    assert result.status == "succeeded" and result.job_id == "seed-example-1"
    assert (result.name, result.model, result.model_id, result.size) == (
        "Test Image Generation",
        "offline_preview",
        "offline-preview-1",
        "1024x1024",
    )
    [image] = result.images
    assert (image.width, image.height, image.mime_type, image.attempts) == (1024, 1024, "image/png", 1)
    assert result.errors == [] and result.estimated_cost_usd == 0.0
    assert result.submitted_at <= result.started_at <= result.finished_at
    assert_images_on_disk(result)
    assert_matches_published_schema(result)

    # The document is stored in the Redis result backend under the run's task id (job id @ run), with a TTL.
    raw = redis.Redis.from_url(redis_url)
    stored = json.loads(decompress_payload(raw.get("celery-task-meta-seed-example-1@1") or b"{}"))
    assert stored["status"] == "SUCCESS" and stored["result"] == result.model_dump(mode="json")
    assert 0 < raw.ttl("celery-task-meta-seed-example-1@1") <= client.settings.result_ttl_s
    status = client.status("seed-example-1")
    assert (status.state, status.done, status.variations) == ("succeeded", 1, 1)


def test_one_permanent_failure_gives_partial(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    start_worker({"IMAGEGEN_OFFLINE_FAILURES": "1:permanent"})
    offline_node["inputs"]["variations"] = 4
    result = client.submit(offline_node).wait(timeout=60)

    assert result.status == "partial"
    assert [i.index for i in result.images] == [0, 2, 3]
    [error] = result.errors
    assert (error.index, error.kind, error.attempts) == (1, "permanent", 1)
    assert "injected permanent failure" in error.message
    assert_images_on_disk(result)
    assert_matches_published_schema(result)


def test_transient_failures_are_retried_then_succeed(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    worker = start_worker({"IMAGEGEN_OFFLINE_FAILURES": "0:transient*2"})
    offline_node["inputs"]["variations"] = 2
    result = client.submit(offline_node).wait(timeout=60)

    assert result.status == "succeeded"
    attempts = {i.index: i.attempts for i in result.images}
    assert attempts == {0: 3, 1: 1}
    assert worker.log().count("retrying in") == 2  # Celery retries with a countdown, not sleeps
    assert "another delivery is generating it" not in worker.log()  # each attempt released its lease


def test_exhausted_retries_blocked_and_timeouts_are_error_records(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    start_worker({"IMAGEGEN_OFFLINE_FAILURES": "0:transient,1:blocked,2:timeout", "IMAGEGEN_RETRY_MAX_RETRIES": "2"})
    offline_node["inputs"]["variations"] = 3
    result = client.submit(offline_node).wait(timeout=60)

    assert result.status == "failed" and result.images == []
    errors = {e.index: e for e in result.errors}
    assert (errors[0].kind, errors[0].attempts) == ("transient_exhausted", 3)
    assert (errors[1].kind, errors[1].attempts, errors[1].reason) == ("blocked", 1, "IMAGE_SAFETY")  # never retried
    assert (errors[2].kind, errors[2].attempts) == ("timeout", 3)
    assert_matches_published_schema(result)


@pytest.fixture
def private_redis(job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Redis of this test alone: every value in it is this job's (the suite's Redis also holds
    other tests' data, e.g. an engine's 100 KB upstream result in tests/e2e/test_llm_to_image.py).
    Name it before ``start_worker``: fixtures end in reverse order, so the worker then stops while
    its Redis is still up (the other way round, its warm shutdown waited 30 s for a dead Redis)."""
    server = start_redis()
    for name, value in {**job_env, "REDIS_URL": server.url}.items():
        monkeypatch.setenv(name, value)
    yield server.url
    server.stop()


def test_no_image_bytes_in_redis(private_redis: str, start_worker: StartWorker, offline_node: dict[str, Any]) -> None:
    start_worker({"REDIS_URL": private_redis})
    client = ImageGenClient(Settings())
    offline_node["inputs"].update(variations=4, size="2048x2048")
    try:
        result = client.submit(offline_node).wait(timeout=60)
    finally:
        client.close()
    assert result.status == "succeeded" and min(i.bytes for i in result.images) > 20_000

    entries = all_redis_entries(private_redis)
    assert entries, "the scan must see the job's keys"
    biggest = max(len(value) for value in entries.values())
    assert biggest < 16_000, f"a Redis value of {biggest} bytes: image bytes leaked?"
    for key, value in entries.items():
        assert b"\x89PNG" not in value and b"iVBORw0KGgo" not in value, key  # raw or base64 PNG
        assert len(key) < 200


def test_the_result_document_is_stored_compressed_and_the_scans_see_through_it(
    private_redis: str, start_worker: StartWorker, offline_node: dict[str, Any]
) -> None:
    """``result_compression``: the document takes a third of the memory, every reader decodes it,
    and the suite's Redis scans (no secrets, no image bytes) still read what it says."""
    start_worker({"REDIS_URL": private_redis})
    client = ImageGenClient(Settings())
    offline_node["inputs"].update(variations=4)
    try:
        result = client.submit(offline_node, job_id="compressed-doc").wait(timeout=60)
        document = client.result("compressed-doc")
    finally:
        client.close()
    assert result.status == "succeeded" and document is not None and document.images == result.images
    stored = redis.Redis.from_url(private_redis).get("celery-task-meta-compressed-doc@1") or b""
    assert stored.startswith(COMPRESSED_PAYLOAD_MAGIC)
    as_json = json.dumps(result.model_dump(mode="json")).encode()
    assert len(stored) * 2 < len(as_json), (len(stored), len(as_json))
    seen = all_redis_entries(private_redis)[b"0:celery-task-meta-compressed-doc@1"]
    assert all(image.sha256.encode() in seen for image in result.images)


def test_same_job_id_enqueues_once(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    worker = start_worker()
    offline_node["inputs"]["variations"] = 2
    first = client.submit(offline_node, job_id="idempotent-1")
    second = client.submit(offline_node, job_id="idempotent-1")
    assert first.created and not second.created
    assert first.wait(timeout=60).status == "succeeded"
    time.sleep(1)  # a duplicate, if any, would have run by now
    assert worker.log().count("imagegen.run_job[idempotent-1@1] received") == 1
    assert worker.log().count("imagegen.generate_variation[") // 2 == 2  # "received" + "succeeded" per task


def test_by_default_a_worker_logs_no_received_line_per_task(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    assert Settings.model_fields["log_task_received"].default is False  # what a pod runs with
    worker = start_worker({"IMAGEGEN_LOG_TASK_RECEIVED": "false"})
    offline_node["inputs"]["variations"] = 2
    assert client.submit(offline_node, job_id="quiet-1").wait(timeout=60).status == "succeeded"
    # Each task's "succeeded" line stays (job task, 2 variations, finalize; finalize's comes
    # after the result is stored); no "received" line.
    wait_for_log(worker, "] succeeded in ", count=4)
    log = worker.log()
    assert "imagegen.run_job[quiet-1@1] succeeded in " in log
    assert "] received" not in log, log[-3000:]


def test_redelivered_job_task_does_not_start_a_second_chord(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    worker = start_worker()
    handle = client.submit(offline_node, job_id="redelivered-1")
    assert handle.wait(timeout=60).status == "succeeded"
    order = JobOrder(
        job_id="redelivered-1", node=client.validate(offline_node).to_task_payload(), submitted_at=datetime.now(UTC)
    )
    # What acks_late redelivery looks like: the same job task id arrives again.
    client.celery.send_task(RUN_JOB, args=(order.model_dump(mode="json"),), task_id="redelivered-1@1")
    deadline = time.monotonic() + 20
    while "already dispatched; ignoring the redelivery" not in worker.log():
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.2)
    assert worker.log().count("imagegen.generate_variation[") // 2 == 1
    assert client.wait("redelivered-1", timeout=5).status == "succeeded"  # the document is intact


def test_a_job_whose_dispatch_died_halfway_is_dispatched_by_the_redelivery(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], redis_url: str
) -> None:
    # What a worker killed between claiming the dispatch and publishing the chord leaves behind:
    # the guard "pending", the job task unacked (so redelivered), no chord.
    redis.Redis.from_url(redis_url).set(dispatch_key("half-dispatched-1", 1), "pending")
    order = JobOrder(
        job_id="half-dispatched-1", node=client.validate(offline_node).to_task_payload(), submitted_at=datetime.now(UTC)
    )
    client.records.claim(
        "half-dispatched-1",
        node_fingerprint="x",
        model="offline_preview",
        variations=1,
        submitted_at=order.submitted_at,
    )
    worker = start_worker()
    client.celery.send_task(RUN_JOB, args=(order.model_dump(mode="json"),), task_id="half-dispatched-1@1")
    assert client.wait("half-dispatched-1", timeout=30).status == "succeeded"
    assert "died while dispatching; dispatching again" in worker.log()
    assert redis.Redis.from_url(redis_url).get(dispatch_key("half-dispatched-1", 1)) == b"done"


def _held_lease(redis_url: str, job_id: str, seconds: float) -> None:
    """What another delivery of the job task leaves while it publishes the run's chord: its lease."""
    client = redis.Redis.from_url(redis_url)
    now_s, now_us = client.time()
    client.set(dispatch_key(job_id, 1), f"pending:{now_s * 1000 + now_us // 1000 + int(seconds * 1000)}")


def _queued(client: ImageGenClient, offline_node: dict[str, Any], job_id: str) -> JobOrder:
    offline_node["inputs"]["variations"] = 4
    order = JobOrder(
        job_id=job_id, node=client.validate(offline_node).to_task_payload(), submitted_at=datetime.now(UTC)
    )
    client.records.claim(
        job_id, node_fingerprint="x", model="offline_preview", variations=4, submitted_at=order.submitted_at
    )
    return order


def test_a_copy_of_the_job_task_waits_for_the_delivery_dispatching_it_and_publishes_no_second_chord(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], redis_url: str
) -> None:
    # A chain link sent twice, or a message delivered twice: one copy is publishing the chord
    # (its lease is live) when the other arrives. The other must not publish a second one.
    order = _queued(client, offline_node, "dispatching-1")
    _held_lease(redis_url, "dispatching-1", 60)
    worker = start_worker()
    client.celery.send_task(RUN_JOB, args=(order.model_dump(mode="json"),), task_id="dispatching-1@1")
    deadline = time.monotonic() + 20
    while "another delivery is dispatching it; waiting for it" not in worker.log():
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.1)
    time.sleep(0.5)
    assert "imagegen.generate_variation[" not in worker.log()
    redis.Redis.from_url(redis_url).set(dispatch_key("dispatching-1", 1), "done")  # the other delivery published
    while "already dispatched; ignoring the redelivery" not in worker.log():
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.1)
    time.sleep(0.5)
    assert "imagegen.generate_variation[" not in worker.log()


def test_a_copy_of_the_job_task_dispatches_once_the_lease_of_a_dead_delivery_runs_out(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], redis_url: str
) -> None:
    order = _queued(client, offline_node, "lease-ran-out-1")
    worker = start_worker()
    _held_lease(redis_url, "lease-ran-out-1", 3)  # its holder died while publishing
    client.celery.send_task(RUN_JOB, args=(order.model_dump(mode="json"),), task_id="lease-ran-out-1@1")
    result = client.wait("lease-ran-out-1", timeout=30)
    assert result.status == "succeeded" and len(result.images) == 4
    log = worker.log()
    assert log.index("waiting for it") < log.index("died while dispatching; dispatching again")
    assert log.count("imagegen.generate_variation[") // 2 == 4


def test_two_copies_of_the_job_task_at_once_run_one_chord(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    order = _queued(client, offline_node, "two-copies-1")
    worker = start_worker()
    for _ in range(2):
        client.celery.send_task(RUN_JOB, args=(order.model_dump(mode="json"),), task_id="two-copies-1@1")
    assert client.wait("two-copies-1", timeout=30).status == "succeeded"
    time.sleep(1)  # a second chord, if any, would have run by now
    assert worker.log().count("imagegen.generate_variation[") // 2 == 4
    assert worker.log().count("imagegen.finalize[") // 2 == 1


def test_job_survives_a_killed_worker(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    # A short visibility timeout (allowed because the time limits are short too)
    # so the redelivery after SIGKILL happens within the test.
    env = {
        "IMAGEGEN_OFFLINE_LATENCY_S": "3",
        "IMAGEGEN_TASK_SOFT_TIME_LIMIT_S": "5",
        "IMAGEGEN_TASK_TIME_LIMIT_S": "6",
        "IMAGEGEN_RETRY_MAX_DELAY_S": "1",
        "IMAGEGEN_VISIBILITY_TIMEOUT_S": "8",
        "IMAGEGEN_REDELIVERY_SWEEP_S": "2",
    }
    doomed = start_worker(env)
    handle = client.submit(offline_node)
    deadline = time.monotonic() + 20
    while "imagegen.generate_variation[" not in doomed.log():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    doomed.kill()  # SIGKILL mid-generation: the variation was never acked
    assert handle.status().state == "running"

    start_worker(env)
    result = handle.wait(timeout=60)
    assert result.status == "succeeded"
    assert_images_on_disk(result)


def test_a_node_the_worker_rejects_ends_failed_not_lost(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    # E.g. the operator's catalog dropped a model between submit and run.
    start_worker()
    offline_node["inputs"]["model"] = "retired_model"
    order = JobOrder(job_id="rejected-1", node=offline_node, submitted_at=datetime.now(UTC))
    client.celery.send_task(RUN_JOB, args=(order.model_dump(mode="json"),), task_id="rejected-1@1")
    result = client.celery.AsyncResult("rejected-1@1").get(timeout=30)
    assert result["status"] == "failed"
    [error] = result["errors"]
    assert error["kind"] == "permanent" and 'inputs.model = "retired_model"' in error["message"]


def test_a_quota_shared_by_two_workers_spaces_the_calls(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    # 120 calls a minute, no burst: six calls need at least 2.5 s whatever the
    # number of workers; waiting for a slot is not a failed attempt.
    env = {"IMAGEGEN_RATE_LIMITS": "offline-preview-1=120:1"}
    workers = [start_worker(env), start_worker(env)]
    offline_node["inputs"]["variations"] = 6
    result = client.submit(offline_node).wait(timeout=60)

    assert result.status == "succeeded"
    assert [i.attempts for i in result.images] == [1] * 6
    assert (result.finished_at - result.started_at).total_seconds() >= 2.5
    assert any("provider quota busy" in w.log() for w in workers)
    assert not any("another delivery is generating it" in w.log() for w in workers)  # a quota wait released it


def test_the_prompt_step_waits_for_its_text_models_quota_without_failing(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    # 60 text calls a minute, no burst: three jobs' prompt steps need at least 2 s; each step
    # waits for its slot (after its store check), and waiting is not a failed attempt.
    worker = start_worker({"IMAGEGEN_RATE_LIMITS": "offline-prompt-1=60:1"})
    offline_node["inputs"]["prompt_enhancement"] = "enhance"
    started = time.monotonic()
    handles = [client.submit(offline_node) for _ in range(3)]
    results = [handle.wait(timeout=60) for handle in handles]

    assert [r.status for r in results] == ["succeeded"] * 3, [r.errors for r in results]
    assert all(r.prompt_step is not None and r.prompt_step.attempts == 1 for r in results)
    assert time.monotonic() - started >= 2.0
    assert "prompt step: provider quota busy" in worker.log()


def test_a_redelivered_variation_that_finished_is_skipped(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    # A broker redelivers a message whose task ran but was never acked (a worker lost before
    # its ack, a Redis restart): the job record knows the variation finished, so the copy
    # neither generates (pays) again nor overwrites the stored image.
    worker = start_worker()
    offline_node["inputs"]["variations"] = 2
    result = client.submit(offline_node, job_id="redelivered-variation-1").wait(timeout=60)
    assert result.status == "succeeded"
    stored = image_file(result.images[0].uri)
    written = stored.stat().st_mtime_ns
    work = VariationWork(
        job_id="redelivered-variation-1", run=1, index=0, prompt="p", model="offline_preview", size="1024x1024"
    )
    client.celery.send_task(
        GENERATE_VARIATION, args=(work.model_dump(mode="json"),), delivery_info={"redelivered": True}
    )
    deadline = time.monotonic() + 20
    while "finished already; skipping a copy" not in worker.log():
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.2)
    assert stored.stat().st_mtime_ns == written
    assert client.status("redelivered-variation-1").done == 2


def test_two_copies_of_a_variation_at_once_generate_it_once(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    """RabbitMQ requeues an unacked message when the worker's connection drops during the
    provider call, and Celery keeps running the first execution: a copy that starts meanwhile
    finds the variation's lease "busy", looks again later without spending an attempt, and
    hands over the first execution's record once it is done. Before the lease both called the
    provider (and paid)."""
    worker = start_worker({"IMAGEGEN_OFFLINE_LATENCY_S": "3"}, concurrency=4)
    handle = client.submit(offline_node, job_id="variation-copies-1")
    deadline = time.monotonic() + 20
    while not any(e.event == "variation_started" for e in client.job_events.read("variation-copies-1")):
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.05)
    inputs = offline_node["inputs"]
    work = VariationWork(
        job_id="variation-copies-1",
        run=1,
        index=0,
        prompt=inputs["user_query"],
        model=inputs["model"],
        size=inputs["size"],
        seed=inputs.get("seed"),
    )
    client.celery.send_task(GENERATE_VARIATION, args=(work.model_dump(mode="json"),), task_id="variation-copies-1-copy")
    result = handle.wait(timeout=60)
    assert result.status == "succeeded" and [(i.index, i.attempts) for i in result.images] == [(0, 1)]
    written = image_file(result.images[0].uri).stat().st_mtime_ns
    while "variation 0 finished already; skipping a copy" not in worker.log():
        assert time.monotonic() < deadline + 20, worker.log()[-3000:]
        time.sleep(0.1)
    log = worker.log()
    assert "variation-copies-1 variation 0: another delivery is generating it" in log
    assert log.index("another delivery is generating it") < log.index("finished already; skipping a copy")
    time.sleep(0.5)
    assert image_file(result.images[0].uri).stat().st_mtime_ns == written  # not generated and stored again
    events = [e.event for e in client.job_events.read("variation-copies-1")]
    assert (events.count("variation_started"), events.count("variation")) == (1, 1)  # one provider call
    assert "variation_retrying" not in events  # the copy's wait is nobody's retry
    status = client.status("variation-copies-1")
    assert (status.state, status.done) == ("succeeded", 1)


def test_a_copy_of_a_finished_variation_still_completes_the_chord(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    """The first copy finished and was counted, then died before its entry reached the chord
    (a SIGKILL between the two writes). The copy skips the work and hands the chord the record
    from the run's event log, so the job finishes now instead of ending lost at its deadline."""
    offline_node["inputs"]["variations"] = 2
    handle = client.submit(offline_node, job_id="copy-completes-1")  # no worker yet
    records = client.records
    record = ImageRecord(
        index=0,
        url="file:///stored/by/the/first/copy.png",
        uri="file:///stored/by/the/first/copy.png",
        mime_type="image/png",
        width=1024,
        height=1024,
        bytes=10,
        sha256="0" * 64,
        attempts=1,
        duration_ms=5,
        metadata=GenerationMetadata(provider="offline"),
    )
    data = {"job_id": "copy-completes-1", "run": 1, "index": 0, "kind": "image", "record": event_record(record)}
    assert announce_variation(records, client.celery, "copy-completes-1", 1, 0, data, 100)  # the first copy's count
    worker = start_worker()
    result = handle.wait(timeout=60)
    assert result.status == "succeeded" and [i.index for i in result.images] == [0, 1]
    assert result.images[0].uri == record.uri and result.images[0].metadata.text == NOT_KEPT
    assert "variation 0 finished already; skipping a copy" in worker.log()


def _finalize_again(client: ImageGenClient, worker: WorkerProcess, result: JobResult) -> None:
    """Send run 1's finalize of a finished job again (a redelivery) and wait until it has run."""
    summary = JobSummary(
        job_id=result.job_id,
        run=1,
        name=result.name,
        model=result.model,
        size=result.size,
        variations=result.variations,
        submitted_at=result.submitted_at,
        started_at=result.started_at,
    )
    client.celery.send_task(FINALIZE, args=([], summary.model_dump(mode="json")), task_id=f"{result.job_id}@1")
    deadline = time.monotonic() + 20
    while "finished already; this finalize stores nothing" not in worker.log():
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.2)


def _announced_completed(client: ImageGenClient, job_id: str) -> list[Any]:
    """The job's "completed" events, once there is one: the client's wait returns when the
    document is stored, which finalize does just before it announces the ending."""
    deadline = time.monotonic() + 10
    while not (completed := [e for e in client.job_events.read(job_id) if e.event == "completed"]):
        assert time.monotonic() < deadline, f"job {job_id} was never announced completed"
        time.sleep(0.05)
    return completed


def test_a_second_finalize_of_a_finished_run_stores_and_announces_nothing(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    """A finalize delivered again (or a second chord's, after a dispatch that died halfway)
    would otherwise announce "completed" twice and send its webhook twice."""
    worker = start_worker()
    result = client.submit(offline_node, job_id="finalize-twice").wait(timeout=60)
    assert result.status == "succeeded"
    assert len(_announced_completed(client, "finalize-twice")) == 1  # the first finalize has ended
    _finalize_again(client, worker, result)
    assert client.result("finalize-twice") == result
    completed = [e for e in client.job_events.read("finalize-twice") if e.event == "completed"]
    assert len(completed) == 1


def test_a_finalize_that_died_before_announcing_is_announced_by_its_redelivery(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], redis_url: str
) -> None:
    """The first finalize stored the document and died before appending "completed" (and so
    before scheduling its webhook); acks_late redelivers it. The redelivery must announce the run's
    ending once, or followers and the webhook never hear of it."""
    worker = start_worker()
    result = client.submit(offline_node, job_id="finalize-died").wait(timeout=60)
    [completed] = _announced_completed(client, "finalize-died")
    raw = redis.Redis.from_url(redis_url)
    raw.xdel(events_key("finalize-died"), completed.id)  # never appended: neither the event
    raw.hdel(job_key("finalize-died"), "completed_run")  # nor the run's mark that it was announced
    _finalize_again(client, worker, result)
    time.sleep(0.3)
    assert client.result("finalize-died") == result  # the stored document stands
    announced = [e for e in client.job_events.read("finalize-died") if e.event == "completed"]
    assert [(e.run, e.data["status"], e.data["images"]) for e in announced] == [(1, "succeeded", 1)]
