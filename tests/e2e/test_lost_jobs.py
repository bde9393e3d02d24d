"""A job whose messages are gone is ended `failed` with a `lost` error, by the
workers' sweep or by the waiting client: never queued or running for good,
never "never submitted". What the run had finished is kept (it ends `partial`),
and a run whose cancel was asked ends `canceled`."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import redis

from contract.settings import Settings
from producer.client import ImageGenClient, JobConflict, JobNotFound
from tests.conftest import StartWorker

FAST = {"IMAGEGEN_JOB_DEADLINE_S": "2", "IMAGEGEN_LOST_SWEEP_S": "1"}


def lose_the_queue(redis_url: str, queue: str) -> None:
    """What a broker that lost its data looks like: the job's message is gone."""
    assert redis.Redis.from_url(redis_url).delete(queue) == 1


def test_a_waiting_client_ends_a_lost_job(
    job_env: dict[str, str], redis_url: str, offline_node: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {**job_env, **FAST}.items():
        monkeypatch.setenv(name, value)
    client = ImageGenClient(Settings())
    try:
        handle = client.submit(offline_node, job_id="lost-1")
        lose_the_queue(redis_url, job_env["IMAGEGEN_QUEUE"])
        result = handle.wait(timeout=30)
        assert result.status == "failed" and result.job_id == "lost-1"
        [error] = result.errors
        assert error.kind == "lost" and "IMAGEGEN_JOB_DEADLINE_S" in error.message
        status = client.status("lost-1")
        assert (status.state, status.lost) == ("failed", True)
        assert client.result("lost-1") == result
        # Followers of the job's event log learn the ending as well (SSE, webhooks).
        [completed] = list(client.events("lost-1", timeout=5))
        assert completed.event == "completed" and completed.data == result.model_dump(mode="json")
    finally:
        client.close()


def test_the_workers_sweep_ends_a_lost_job_nobody_waits_for(
    start_worker: StartWorker,
    client: ImageGenClient,
    job_env: dict[str, str],
    redis_url: str,
    offline_node: dict[str, Any],
) -> None:
    client.submit(offline_node, job_id="lost-2")
    lose_the_queue(redis_url, job_env["IMAGEGEN_QUEUE"])
    worker = start_worker(FAST)
    deadline = time.monotonic() + 30
    while client.status("lost-2").state != "failed":
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.5)
    document = client.result("lost-2")
    assert document is not None and document.errors[0].kind == "lost"
    assert "ended as lost" in worker.log()
    # A job that makes progress is not lost, however long it runs.
    offline_node["inputs"]["variations"] = 4
    slow = start_worker({**FAST, "IMAGEGEN_OFFLINE_LATENCY_S": "1.5"}, concurrency=1)
    assert client.submit(offline_node, job_id="slow-but-alive").wait(timeout=60).status == "succeeded", slow.log()


def test_a_handle_whose_record_vanished_says_so(
    client: ImageGenClient, offline_node: dict[str, Any], redis_url: str
) -> None:
    handle = client.submit(offline_node, job_id="vanished-1")
    redis.Redis.from_url(redis_url).delete("imagegen:job:vanished-1")  # a Redis restart without persistence
    with pytest.raises(JobNotFound, match="was submitted, but its record is gone"):
        handle.wait(timeout=5)


def test_a_lost_run_keeps_the_images_it_had_stored(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    job_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Variation 0 is stored (and paid for); the worker dies during variation 1 and nothing
    redelivers it. The lost run's document keeps image 0 and says that variation 1 was lost."""
    offline_node["inputs"]["variations"] = 2
    worker = start_worker({**FAST, "IMAGEGEN_OFFLINE_LATENCY_S": "1.2"}, concurrency=1)
    client.submit(offline_node, job_id="lost-after-one")
    deadline = time.monotonic() + 30
    while client.status("lost-after-one").done < 1:
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.05)
    worker.kill()  # SIGKILL during variation 1; no other worker restores its message
    result = _wait_fast(job_env, monkeypatch, "lost-after-one")
    assert result.status == "partial" and [i.index for i in result.images] == [0], result.model_dump_json()
    [image] = result.images
    assert image.url and image.sha256 and image.metadata.provider == ""
    assert "was not kept" in (image.metadata.text or "")
    [error] = result.errors
    assert (error.index, error.kind) == (1, "lost") and "rerun" in error.message
    assert client.status("lost-after-one").state == "partial"  # so it can be rerun, like any partial job
    assert client.submit(offline_node, job_id="lost-after-one", rerun=True).run == 2
    assert client.status("lost-after-one").lost is False  # the rerun is not the lost run


def _wait_fast(job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, job_id: str) -> Any:
    """Wait as a client whose lost-job deadline is the test's 2 s."""
    for name, value in {**job_env, **FAST}.items():
        monkeypatch.setenv(name, value)
    waiting = ImageGenClient(Settings())
    try:
        return waiting.wait(job_id, timeout=30)
    finally:
        waiting.close()


def test_a_canceled_job_that_no_worker_ran_ends_canceled(
    client: ImageGenClient, offline_node: dict[str, Any], job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    offline_node["inputs"]["variations"] = 3
    handle = client.submit(offline_node, job_id="canceled-unrun")  # no worker on this test's queue
    assert client.cancel("canceled-unrun").changed
    result = _wait_fast(job_env, monkeypatch, handle.job_id)
    assert result.status == "canceled" and [e.kind for e in result.errors] == ["canceled"] * 3
    assert client.status("canceled-unrun").state == "canceled"
    with pytest.raises(JobConflict, match="only a failed or partial job can be rerun"):
        client.submit(offline_node, job_id="canceled-unrun", rerun=True)


def test_a_worker_back_after_the_deadline_runs_nothing_of_the_lost_run(
    start_worker: StartWorker,
    job_env: dict[str, str],
    redis_url: str,
    offline_node: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    """No worker for longer than the deadline, the message still queued: the waiting client ends
    the job lost. A worker then comes back and takes the message: it must not generate (and
    bill) the images of a run whose document is final, and the job stays rerunnable."""
    images = tmp_path / "images"
    for name, value in {**job_env, **FAST, "IMAGEGEN_STORAGE_URL": str(images)}.items():
        monkeypatch.setenv(name, value)
    client = ImageGenClient(Settings())
    try:
        lost = client.submit(offline_node, job_id="lost-then-worker").wait(timeout=30)
        assert lost.status == "failed" and [e.kind for e in lost.errors] == ["lost"]
        assert redis.Redis.from_url(redis_url).llen(job_env["IMAGEGEN_QUEUE"]) == 1  # its message waits
        worker = start_worker({**FAST, "IMAGEGEN_STORAGE_URL": str(images)})
        deadline = time.monotonic() + 20
        while "not started" not in worker.log():
            assert time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.2)
        assert not images.exists() or not any(images.rglob("*.png"))  # nothing generated, nothing paid
        status = client.status("lost-then-worker")
        assert (status.state, status.lost, status.result_run) == ("failed", True, 1)
        assert client.result("lost-then-worker") == lost
        rerun = client.submit(offline_node, job_id="lost-then-worker", rerun=True).wait(timeout=30)
        assert rerun.status == "succeeded" and len(rerun.images) == 1
    finally:
        client.close()


def test_a_variation_that_finishes_after_its_run_ended_lost_announces_nothing(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    """The sweep ends a run whose one variation is still running (slower than the deadline); the
    variation then finishes. The run's document is final: no "variation" event may follow its
    "completed" (nor go to a webhook), and nothing is counted."""
    offline_node["inputs"]["variations"] = 1
    worker = start_worker({**FAST, "IMAGEGEN_OFFLINE_LATENCY_S": "5"}, concurrency=1)
    client.submit(offline_node, job_id="lost-then-late")
    deadline = time.monotonic() + 30
    while not client.status("lost-then-late").lost:
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.2)
    while not re.search(r"imagegen\.generate_variation\[[^]]*\] succeeded", worker.log()):
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.2)
    time.sleep(0.5)
    events = [e.event for e in client.job_events.read("lost-then-late")]
    assert events[-1] == "completed", events
    assert "variation" not in events, worker.log()[-4000:]
    status = client.status("lost-then-late")
    assert (status.state, status.done, status.lost) == ("failed", 0, True)
