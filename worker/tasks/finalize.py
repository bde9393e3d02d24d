"""The chord body: gathers the variation records into the result document,
stored in the Redis result backend under the job id."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, states

from contract.catalog import load_catalog
from contract.errors import NodeValidationError
from contract.events import completed_data
from contract.job_ids import check_job_id
from contract.jobs import JobState, utcnow
from contract.queue import FINALIZE
from contract.result import ErrorRecord, ImageRecord, JobResult, PromptStepRecord, Usage
from contract.settings import get_settings
from contract.work import JobOrder, JobSummary
from worker import metrics
from worker.celery_app import app
from worker.lifecycle import publish
from worker.state import job_records

log = logging.getLogger(__name__)


# The task stores its document itself (ignore_result), before it announces "completed": a
# follower that reads the event then finds the document (contract/events.py).
@app.task(name=FINALIZE, bind=True, pydantic=True, ignore_result=True, store_errors_even_if_ignored=True)
def finalize(self: Task, outcomes: list[dict[str, Any]], summary: JobSummary) -> None:
    settings = get_settings()
    entry = load_catalog(settings.model_catalog_file, settings.model_catalog_replace).get(summary.model)
    # Each variation returns {"kind", "record"}; a refused message's (worker/payloads.py) may be None.
    outcomes = [o for o in outcomes if isinstance(o, dict)]
    images = sorted(
        (ImageRecord.model_validate(o["record"]) for o in outcomes if o.get("kind") == "image"), key=lambda r: r.index
    )
    errors = sorted(
        (ErrorRecord.model_validate(o["record"]) for o in outcomes if o.get("kind") == "error"), key=lambda r: r.index
    )
    finished_at = utcnow()
    # The run's state, unless a cancel was requested before it finished (then "canceled",
    # decided in the same step that marks the job finished: contract/jobs.py _FINISH_RUN).
    status, now = job_records().finish_run(summary.job_id, summary.run, _status(len(images), len(errors)), finished_at)
    if status == "stale":  # the lost-job sweep ended the run, or a rerun replaced it: its document stands
        log.info("job %s run %d ended or was replaced; this late result is dropped", summary.job_id, summary.run)
        return None
    if not now and _stored_and_announced(self.backend, self.request.id, summary.job_id, summary.run):
        # A second finalize of the run (redelivered, or a second chord's after a dispatch died
        # halfway): its document is stored and announced already, and may hold fuller records.
        log.info("job %s run %d finished already; this finalize stores nothing", summary.job_id, summary.run)
        return None
    result = JobResult(
        job_id=summary.job_id,
        name=summary.name,
        status=status,
        model=summary.model,
        model_id=entry.model_id if entry else "",
        provider=entry.provider if entry else "",
        size=summary.size,
        variations=summary.variations,
        images=images,
        errors=errors,
        submitted_at=summary.submitted_at,
        started_at=summary.started_at,
        finished_at=finished_at,
        duration_ms=int((finished_at - summary.submitted_at).total_seconds() * 1000),
        usage=_total_usage(images, summary.prompt_step, errors),
        estimated_cost_usd=_total_cost(images, summary.prompt_step, errors),
        original_prompt=summary.original_prompt,
        prompt_step=summary.prompt_step,
    )
    log.info("job %s %s: %d image(s), %d error(s)", summary.job_id, result.status, len(images), len(errors))
    document = result.model_dump(mode="json")
    self.backend.store_result(self.request.id, document, states.SUCCESS)
    publish(summary.job_id, summary.run, "completed", completed_data(document))
    metrics.JOBS.labels(result.status).inc()


def fail_unstarted_job(backend: Any, result_id: str, order: JobOrder, message: str) -> None:
    """End a job the worker could not start (an invalid node, an unusable upstream value, a failed
    upstream task): mark the run ended, store its document under ``result_id``, then announce it
    (in that order, as finalize does). As finalize, through ``finish_run``: a run whose cancel was
    asked ends ``canceled``, and a run the lost-job sweep ended or a rerun replaced is left alone
    (its document stands)."""
    state: JobState = "failed"
    if _is_valid_id(order.job_id):
        ended, now = job_records().finish_run(order.job_id, order.run, "failed", utcnow())
        if ended == "stale":
            log.info("job %s run %d ended or was replaced; its late failure is dropped", order.job_id, order.run)
            return None
        if not now and _stored_and_announced(backend, result_id, order.job_id, order.run):
            return None  # ended, stored and announced before (a redelivery): nothing more to say
        state = ended
    document = _unstarted_job_result(order, message, state)
    backend.store_result(result_id, document, states.SUCCESS)
    metrics.JOBS.labels(state).inc()
    if _is_valid_id(order.job_id):
        publish(order.job_id, order.run, "completed", completed_data(document))
    return None


def _stored_and_announced(backend: Any, result_id: str, job_id: str, run: int) -> bool:
    """Whether an ended run's document is stored; if it is but its "completed" is not in the log
    (the delivery that stored it died before announcing it), it is announced now. Once: a first
    delivery still between storing and announcing, and this one, cannot both append it
    (``JobRecords.announce_ending``)."""
    meta = backend.get_task_meta(result_id)
    if meta.get("status") != states.SUCCESS or not isinstance(meta.get("result"), dict):
        return False
    if publish(job_id, run, "completed", completed_data(meta["result"])) is not None:
        log.warning("job %s run %d: its document was stored but never announced; announced it now", job_id, run)
    return True


def _unstarted_job_result(order: JobOrder, message: str, state: JobState = "failed") -> dict[str, Any]:
    """The document of a job the worker could not even start: ``failed``, or ``canceled`` when its
    cancel was asked before (the error then says so, and why it could not have run anyway)."""
    raw_inputs = order.node.get("inputs")
    inputs: dict[str, Any] = raw_inputs if isinstance(raw_inputs, dict) else {}
    error = ErrorRecord(index=0, kind="permanent", message=message, attempts=0, duration_ms=0)
    if state == "canceled":
        error = error.model_copy(
            update={"kind": "canceled", "message": f"the job was canceled before it started; {message}"}
        )
    result = JobResult.unstarted(
        job_id=order.job_id[:200],
        name=str(order.node.get("name", ""))[:200],
        model=str(inputs.get("model", ""))[:200],
        size=str(inputs.get("size", ""))[:32],
        submitted_at=order.submitted_at,
        error=error,
    )
    return result.model_dump(mode="json")


def _is_valid_id(job_id: str) -> bool:
    try:
        check_job_id(job_id)
    except NodeValidationError:
        return False
    return True


def _status(images: int, errors: int) -> JobState:
    if images and not errors:
        return "succeeded"
    return "partial" if images else "failed"


def _billed(errors: list[ErrorRecord]) -> list[ErrorRecord]:
    """The variations whose image was made and billed, then not stored (its upload failed)."""
    return [e for e in errors if e.estimated_cost_usd is not None or e.metadata is not None]


def _total_usage(
    images: list[ImageRecord], step: PromptStepRecord | None = None, errors: list[ErrorRecord] | None = None
) -> Usage | None:
    usages = [r.metadata.usage for r in images if r.metadata.usage is not None]
    usages += [e.metadata.usage for e in _billed(errors or []) if e.metadata and e.metadata.usage is not None]
    if step is not None and step.usage is not None:
        usages.append(step.usage)  # the prompt step's tokens count too
    return sum(usages[1:], usages[0]) if usages else None


def _total_cost(
    images: list[ImageRecord], step: PromptStepRecord | None = None, errors: list[ErrorRecord] | None = None
) -> float | None:
    costs = [r.estimated_cost_usd for r in images]
    costs += [e.estimated_cost_usd for e in _billed(errors or [])]  # paid for, though not stored
    if step is not None:
        costs.append(step.estimated_cost_usd)
    if any(cost is None for cost in costs):
        return None  # an unpriced model: unknown, not free
    return round(sum(cost or 0.0 for cost in costs), 6)
