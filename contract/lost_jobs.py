"""Ending lost jobs: a job whose messages are gone must not stay queued or running.

A job that made no progress (submitted, started, a variation finished) for
``IMAGEGEN_JOB_DEADLINE_S`` is ended; its result document is stored where the
run's result belongs, so a waiting client wakes up with an answer it can read.
What the run had finished is kept: each finished variation's record comes back
from the run's ``variation`` events (its image was stored and paid for), and
every other variation gets an error of kind ``lost``. The run ends ``partial``
when it has images, ``succeeded`` when every variation had finished (only the
chord's gathering was lost), else ``failed``; ``canceled`` when a cancel was asked (its
unfinished variations then say ``canceled``). Workers sweep for such jobs
periodically (worker/sweeper.py) and a waiting client checks its own job; the
check is one atomic script, so a job is ended once. If a worker finishes the run
later after all, it does nothing: the run's document is final (contract/jobs.py ``_STALE``), and
a rerun finishes what it lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from contract.events import JobEvents, announce, completed_data
from contract.jobs import JobRecords, JobStatus, utcnow
from contract.queue import job_task_id
from contract.result import ErrorRecord, ImageRecord, JobResult


def lost_result(
    status: JobStatus, deadline_s: float, finished: Mapping[int, ImageRecord | ErrorRecord] | None = None
) -> JobResult:
    """The run's document: ``finished`` are its finished variations' records by index, from
    their ``variation`` events (``JobEvents.finished_records``)."""
    now = utcnow()
    submitted = datetime.fromisoformat(status.submitted_at) if status.submitted_at else now
    started = datetime.fromisoformat(status.started_at) if status.started_at else now
    records = finished or {}
    images = {i: r for i, r in records.items() if isinstance(r, ImageRecord)}
    errors = {i: r for i, r in records.items() if isinstance(r, ErrorRecord)}
    canceled = status.state == "canceled"
    message = (
        f"the job was canceled, and no worker made progress on it for {deadline_s:.0f} s (IMAGEGEN_JOB_DEADLINE_S)"
        if canceled
        else f"no worker made progress on this job for {deadline_s:.0f} s (IMAGEGEN_JOB_DEADLINE_S): its work "
        "was lost, e.g. a broker that lost its data. Submit it again with rerun to retry the rest."
    )
    for index in range(status.variations):
        if index not in images and index not in errors:
            errors[index] = ErrorRecord(
                index=index, kind="canceled" if canceled else "lost", message=message, attempts=0, duration_ms=0
            )
    return JobResult(
        job_id=status.job_id,
        name=status.name,
        status="canceled" if canceled else ("succeeded" if not errors else "partial") if images else "failed",
        model=status.model,
        model_id="",
        provider="",
        size=next((f"{i.width}x{i.height}" for i in images.values()), ""),
        variations=status.variations,
        images=[images[i] for i in sorted(images)],
        errors=[errors[i] for i in sorted(errors)],
        submitted_at=submitted,
        started_at=started,
        finished_at=now,
        duration_ms=int((now - submitted).total_seconds() * 1000),
    )


def end_if_lost(records: JobRecords, backend: Any, job_id: str, deadline_s: float) -> JobResult | None:
    """End ``job_id`` as lost if it is; store and return its document, else None.
    ``backend``: the Celery result backend (its store wakes waiting clients)."""
    status = records.end_lost(job_id, deadline_s)
    if status is None:
        return None
    finished = JobEvents(records.client, records.ttl_s).finished_records(job_id, status.run)
    result = lost_result(status, deadline_s, finished)
    if result.status in ("partial", "succeeded"):  # ended "failed" a moment ago; it has images
        records.lost_run_recovered(job_id, status.run, result.status)
    document = result.model_dump(mode="json")
    backend.store_result(job_task_id(job_id, status.run), document, "SUCCESS")
    # Followers of the event log (SSE, client.events, a webhook) learn the ending too.
    announce(records, backend.app, job_id, status.run, "completed", completed_data(document))
    return result


def sweep(records: JobRecords, backend: Any, deadline_s: float) -> list[str]:
    """End every lost job; their ids."""
    return [job_id for job_id in records.stalled(deadline_s) if end_if_lost(records, backend, job_id, deadline_s)]
