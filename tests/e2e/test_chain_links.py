"""A job as a Celery chain's link, end to end, with a real image worker, a real engine worker
(tests/e2e/upstream_app.py, with JSON or, for an engine that pickles, pickle) and real
Redis: what an engine's own serializer, a revoked upstream task, a task chained after the link
and a rerun do to the job."""

from __future__ import annotations

import copy
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, chain
from celery.exceptions import TimeoutError as CeleryTimeout

from contract.queue import RUN_JOB, progress_key
from devtools.worker_process import WorkerProcess
from producer.client import ImageGenClient, JobConflict, JobNotFound
from tests.conftest import StartWorker, wait_for
from tests.e2e.upstream_app import SERIALIZERS

WAIT_S = 30


def _engine(
    job_env: dict[str, str], tmp_path: Path, serializer: str, env: dict[str, str] | None = None
) -> Iterator[tuple[Celery, str]]:
    """The workflow engine: its own Celery app sending with ``serializer``, and a real worker of it."""
    queue = f"engine-{uuid.uuid4().hex[:8]}"
    log_dir = tmp_path / f"engine-{serializer}"
    log_dir.mkdir()
    worker = WorkerProcess(
        {**job_env, "ENGINE_QUEUE": queue, "ENGINE_SERIALIZER": serializer, **(env or {})},
        concurrency=2,
        log_dir=str(log_dir),
        app="tests.e2e.upstream_app",
    )
    worker.start()
    app = Celery("engine-test", broker=job_env["REDIS_URL"], backend=job_env["REDIS_URL"])
    app.conf.update(SERIALIZERS[serializer])
    try:
        yield app, queue
    finally:
        app.close()
        worker.stop()


@pytest.fixture
def engine(job_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Celery, str]]:
    yield from _engine(job_env, tmp_path, "json")


@pytest.fixture
def pickling_engine(job_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Celery, str]]:
    # Celery refuses to run a worker that accepts pickle as root (CI containers): this one reads
    # only this test's private Redis.
    root = {"C_FORCE_ROOT": "1"} if os.geteuid() == 0 else {}
    yield from _engine(job_env, tmp_path, "pickle", root)


@pytest.fixture
def worker(start_worker: StartWorker) -> WorkerProcess:
    return start_worker()


@pytest.fixture
def node(offline_node: dict[str, Any]) -> dict[str, Any]:
    offline_node["inputs"]["variations"] = 1
    return offline_node


def _job_id(label: str) -> str:
    return f"chain-{label}-{uuid.uuid4().hex[:6]}"


def _images(job_env: dict[str, str]) -> list[Path]:
    root = Path(job_env["IMAGEGEN_STORAGE_URL"])
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


# --- an engine whose Celery app pickles ------------------------------------------------------


def test_an_engine_that_pickles_its_messages_still_runs_the_link_and_its_errback(
    worker: WorkerProcess, pickling_engine: tuple[Celery, str], client: ImageGenClient, node: dict[str, Any]
) -> None:
    """The engine's worker sent the link (and the errback) with its own task_serializer: the
    image worker, JSON only, discarded them ("ContentDisallowed") and the job waited ``queued``
    until the lost-job deadline (2 h), the caller told nothing."""
    app, queue = pickling_engine
    ok, failing = _job_id("pickle-ok"), _job_id("pickle-boom")
    client.chain(app.signature("engine.echo", args=("a lighthouse",), queue=queue), node, ok).apply_async()
    client.chain(app.signature("engine.boom", args=("x",), queue=queue), node, failing).apply_async()

    result = client.wait(ok, timeout=WAIT_S)
    assert result.status == "succeeded" and result.original_prompt == "a lighthouse", result.errors
    failed = client.wait(failing, timeout=WAIT_S)
    assert failed.status == "failed" and "the upstream task" in failed.errors[0].message
    assert "ContentDisallowed" not in worker.log()


# --- canceled while it waits for its upstream ------------------------------------------------


def test_a_chain_job_whose_upstream_was_revoked_ends_canceled_at_once_when_canceled(
    worker: WorkerProcess, engine: tuple[Celery, str], client: ImageGenClient, node: dict[str, Any]
) -> None:
    """Celery calls no errback for a revoked (or expired) task: the engine cancels the job. Before,
    the cancel only flagged it, and it stayed ``queued`` until the lost-job deadline (2 h)."""
    app, queue = engine
    job_id = _job_id("revoked")
    upstream = app.signature("engine.echo", args=("a lighthouse",), queue=queue).set(countdown=60)
    sent = client.chain(upstream, node, job_id).apply_async()
    app.control.revoke(sent.parent.id if sent.parent else sent.id)

    outcome = client.cancel(job_id)

    assert outcome.changed and outcome.state == "queued" and "waiting for its upstream" in outcome.message
    result = client.wait(job_id, timeout=5)
    assert result.status == "canceled" and [e.kind for e in result.errors] == ["canceled"]
    assert "before it started" in result.errors[0].message
    status = client.status(job_id)
    assert (status.state, status.finished_at is not None, status.result_run) == ("canceled", True, 1)
    assert [e.event for e in client.events(job_id, timeout=5)] == ["canceled", "completed"]
    assert not client.cancel(job_id).changed  # finished: nothing more to cancel
    with pytest.raises(JobConflict, match="was canceled, and a canceled job does not run again"):
        client.signature(node, job_id)
    with pytest.raises(JobConflict, match="was canceled"):
        client.chain(app.signature("engine.echo", args=("x",), queue=queue), node, job_id)
    assert client.records.client.zscore(progress_key(), job_id) is None  # no lost-job sweep for it


def test_a_link_delivered_after_its_job_was_canceled_starts_nothing(
    worker: WorkerProcess, engine: tuple[Celery, str], client: ImageGenClient, node: dict[str, Any], job_env: Any
) -> None:
    app, queue = engine
    job_id = _job_id("late-link")
    upstream = app.signature("engine.echo", args=("a lighthouse",), queue=queue).set(countdown=2)
    client.chain(upstream, node, job_id).apply_async()
    assert client.cancel(job_id).changed
    assert client.wait(job_id, timeout=1).status == "canceled"  # at once, not when the link arrives

    assert wait_for(lambda: "its link starts nothing" in worker.log(), timeout=20), worker.log()[-3000:]
    assert f"{RUN_JOB}[" not in worker.log()  # never sent on
    assert client.status(job_id).state == "canceled"
    assert [e.event for e in client.events(job_id, timeout=5)] == ["canceled", "completed"]
    assert _images(job_env) == []


# --- a task chained after the link -----------------------------------------------------------


def test_a_task_chained_after_the_link_is_refused_and_the_job_is_not_run(
    worker: WorkerProcess, engine: tuple[Celery, str], client: ImageGenClient, node: dict[str, Any], job_env: Any
) -> None:
    """The link returns before the job runs: a downstream task got None at once, while the job
    still ran (or, without a queue of its own, was sent to the image worker as unknown)."""
    app, queue = engine
    job_id = _job_id("downstream")
    link = client.signature(node, job_id)
    downstream = app.signature("engine.echo", queue=queue)
    sent = chain(app.signature("engine.echo", args=("a lighthouse",), queue=queue), link, downstream).on_error(
        client.upstream_failed(link)
    )
    outcome = sent.apply_async()

    with pytest.raises(Exception, match="chained after this image job's link") as refused:
        outcome.get(timeout=WAIT_S)
    assert not isinstance(refused.value, CeleryTimeout)
    result = client.wait(job_id, timeout=WAIT_S)
    assert result.status == "failed" and result.images == []
    [error] = result.errors
    assert error.kind == "permanent" and "engine.echo" in error.message
    assert "ImageGenClient.wait, events or a webhook" in error.message
    assert f"{RUN_JOB}[" not in worker.log() and _images(job_env) == []


# --- running a failed chain job again --------------------------------------------------------


def test_a_failed_chain_job_runs_again_through_a_rerun_link(
    worker: WorkerProcess, engine: tuple[Celery, str], client: ImageGenClient, node: dict[str, Any]
) -> None:
    """Before, nothing could run it again, and the messages misled: submit said "a different
    node", signature "has started; a chain link needs a new job id"."""
    app, queue = engine
    job_id = _job_id("rerun")
    client.chain(app.signature("engine.boom", args=("x",), queue=queue), node, job_id).apply_async()
    assert client.wait(job_id, timeout=WAIT_S).status == "failed"

    prompted = copy.deepcopy(node)
    prompted["inputs"]["user_query"] = "a lighthouse"
    with pytest.raises(JobConflict, match=r"is failed and is a chain link's job; .*rerun=True"):
        client.submit(prompted, job_id, rerun=True)
    with pytest.raises(JobConflict, match=r"is failed; a chain job runs again only through a new link"):
        client.signature(node, job_id)

    upstream = app.signature("engine.echo", args=("a lighthouse",), queue=queue)
    again = client.chain(upstream, node, job_id, rerun=True)
    assert again.tasks[-1].kwargs["order"]["run"] == 2
    assert client.signature(node, job_id, rerun=True).kwargs["order"]["run"] == 2  # built again: the same run
    again.apply_async()

    result = client.wait(job_id, timeout=WAIT_S)
    assert result.status == "succeeded" and result.original_prompt == "a lighthouse", result.errors
    assert client.status(job_id).run == 2
    with pytest.raises(JobConflict, match=r"is succeeded \(it has started"):
        client.signature(node, job_id, rerun=True)
    with pytest.raises(JobNotFound, match="rerun = true: no job"):
        client.signature(node, _job_id("never"), rerun=True)
