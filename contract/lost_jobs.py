"""Ending lost jobs: a job whose messages are gone must not stay queued or running.

A job that made no progress (submitted, started, a variation finished) for
``IMAGEGEN_JOB_DEADLINE_S`` is ended ``failed`` with one error of kind
``lost``; its result document is stored where the run's result belongs, so a
waiting client wakes up with an answer it can read. Workers sweep for such jobs
periodically (worker/sweeper.py) and a waiting client checks its own job; the
check is one atomic script, so a job is ended once. If a worker finishes the run
after all, its real result replaces this one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from contract.events import announce, completed_data
from contract.jobs import JobRecords, JobStatus, utcnow
from contract.queue import job_task_id
from contract.result import ErrorRecord, JobResult


def lost_result(status: JobStatus, deadline_s: float) -> JobResult:
    now = utcnow()
    submitted = datetime.fromisoformat(status.submitted_at) if status.submitted_at else now
    started = datetime.fromisoformat(status.started_at) if status.started_at else now
    message = (
        f"no worker made progress on this job for {deadline_s:.0f} s (IMAGEGEN_JOB_DEADLINE_S): its work was lost, "
        f"e.g. a broker that lost its data; {status.done} of {status.variations} variation(s) had finished. "
        "Submit it again with rerun to retry."
    )
    return JobResult(
        job_id=status.job_id,
        name=status.name,
        status="failed",
        model=status.model,
        model_id="",
        provider="",
        size="",
        variations=status.variations,
        images=[],
        errors=[ErrorRecord(index=0, kind="lost", message=message, attempts=0, duration_ms=0)],
        submitted_at=submitted,
        started_at=started,
        finished_at=now,
        duration_ms=int((now - submitted).total_seconds() * 1000),
    )


def end_if_lost(records: JobRecords, backend: Any, job_id: str, deadline_s: float) -> JobResult | None:
    """End ``job_id`` as lost if it is; store and return its ``failed`` document, else None.
    ``backend``: the Celery result backend (its store wakes waiting clients)."""
    status = records.end_lost(job_id, deadline_s)
    if status is None:
        return None
    result = lost_result(status, deadline_s)
    document = result.model_dump(mode="json")
    backend.store_result(job_task_id(job_id, status.run), document, "SUCCESS")
    # Followers of the event log (SSE, client.events, a webhook) learn the ending too.
    announce(records, backend.app, job_id, status.run, "completed", completed_data(document))
    return result


def sweep(records: JobRecords, backend: Any, deadline_s: float) -> list[str]:
    """End every lost job; their ids."""
    return [job_id for job_id in records.stalled(deadline_s) if end_if_lost(records, backend, job_id, deadline_s)]
