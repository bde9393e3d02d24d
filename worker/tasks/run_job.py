"""The job task: parses the node once, then dispatches the chord
``generate_variation x N -> finalize`` whose body takes the job task's own id,
so the run's task id resolves to the chord body's result document.

That is what ``Task.replace`` does, without its control flow: replace raises
``Ignore`` after publishing, and Celery formats a traceback for it (twice) and
logs the task as ignored, on every job. Here the task publishes the chord and
returns; it stores no result of its own (``ignore_result``: the id's result is
the document finalize stores), but a crash is still stored as FAILURE."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime
from typing import Any

from celery import Task
from pydantic import BaseModel, ConfigDict, ValidationError

from contract.clouds import Target, TargetError, node_target
from contract.errors import NodeValidationError
from contract.job_ids import check_new_job_id
from contract.jobs import utcnow
from contract.node import ImageGenerationNode, validate_node
from contract.queue import RUN_JOB, job_task_id
from contract.settings import get_settings
from contract.tenancy import check_tenant_refs
from contract.work import JobId, JobOrder, JobSummary, Run, VariationWork
from worker.celery_app import app
from worker.dispatch_lease import DISPATCH_LEASE_S
from worker.lifecycle import publish
from worker.payloads import PayloadRefused
from worker.state import dispatch_leases, job_records
from worker.tasks.dispatch import dispatch_variations
from worker.tasks.finalize import fail_unstarted_job
from worker.tasks.prompt_step import start_prompt_step

log = logging.getLogger(__name__)

_BUSY_POLL_S = 0.25  # a copy that finds another delivery dispatching asks again this often


class _NamedRun(BaseModel):
    """The run a refused order names, by the payloads' own bounds (contract/work.py)."""

    model_config = ConfigDict(extra="ignore")
    job_id: JobId
    run: Run = 1


def end_refused_order(task: Task, order: Any, problem: str, result_id: str | None = None) -> None:
    """A job order that does not parse (a message sent past the producer) ends its job ``failed``
    with the problem, when the order names a job (a valid id and run) whose run's task id is the
    message's; else it is only logged (a message may not end another run than its own)."""
    try:
        named = _NamedRun.model_validate(order, strict=True)
    except ValidationError:
        return None
    own_id = job_task_id(named.job_id, named.run)
    if result_id is not None and result_id != own_id:
        return None
    node = order.get("node")
    submitted_at = order.get("submitted_at")
    ending = JobOrder.model_construct(
        job_id=named.job_id,
        run=named.run,
        node=node if isinstance(node, dict) else {},
        submitted_at=submitted_at if isinstance(submitted_at, datetime) else utcnow(),
    )
    fail_unstarted_job(task.backend, own_id, ending, f"the job's order was refused: {problem}")
    return None


def _refused(task: Task, refusal: PayloadRefused) -> None:
    return end_refused_order(task, refusal.arguments.get("order"), refusal.problem, task.request.id)


@app.task(
    name=RUN_JOB,
    bind=True,
    pydantic=True,
    ignore_result=True,
    store_errors_even_if_ignored=True,
    refused=_refused,
)
def run_job(self: Task, order: JobOrder) -> None:
    settings = get_settings()
    records = job_records()
    try:
        # Again in the worker: a message may bypass the producer, and the catalog may have changed.
        job_id = check_new_job_id(order.job_id)
        parsed = validate_node(order.node, settings)
        target = node_target(parsed.inputs.model_dump(), settings.target_policy) if parsed.inputs.use_cloud else None
        if target is not None:  # a tenant's job names only its own secrets (contract/tenancy.py)
            check_tenant_refs(job_id, {"inputs.credentials": target.credentials}, settings)
    except (NodeValidationError, TargetError) as exc:
        log.warning("job %r rejected by the worker: %s", order.job_id[:200], exc)
        fail_unstarted_job(self.backend, self.request.id, order, str(exc))
        return None

    # acks_late redelivers this task if the worker dies: after a whole dispatch the guard says
    # "done" and the redelivery stops here; a worker that died between claiming and publishing
    # left its claim, and the redelivery dispatches once the claim's lease has run out (its
    # holder renews it while alive: worker/dispatch_lease.py). A copy that arrives while another
    # delivery is publishing (a chain link sent twice, a duplicate delivery) waits for it instead
    # of publishing a second chord, which would pay for every variation twice.
    token = uuid.uuid4().hex
    started_at = utcnow()
    claim = records.begin_dispatch(job_id, order.run, started_at, DISPATCH_LEASE_S, token)
    if claim.outcome == "busy":
        log.info("job %s run %d: another delivery is dispatching it; waiting for it", job_id, order.run)
    while claim.outcome == "busy":
        time.sleep(min(claim.lease_left_s, _BUSY_POLL_S))
        started_at = utcnow()
        claim = records.begin_dispatch(job_id, order.run, started_at, DISPATCH_LEASE_S, token)
    if claim.outcome == "done":
        log.info("job %s run %d already dispatched; ignoring the redelivery", job_id, order.run)
        return None
    if claim.outcome == "stale":
        log.info("job %s run %d ended (lost) or was replaced by a rerun; not started", job_id, order.run)
        return None
    if claim.outcome == "again":
        log.warning("job %s run %d: an earlier delivery died while dispatching; dispatching again", job_id, order.run)
    with dispatch_leases().holding((job_id, order.run, token)):
        _dispatch(self.request.id, job_id, order, parsed, target, started_at)
        records.end_dispatch(job_id, order.run)
    return None


def _dispatch(
    result_id: str,
    job_id: str,
    order: JobOrder,
    parsed: ImageGenerationNode,
    target: Target | None,
    started_at: datetime,
) -> None:
    """Announce the run and publish its chord (or its prompt step, which publishes the chord)."""
    inputs = parsed.inputs
    started = {"job_id": job_id, "run": order.run, "name": parsed.name, "model": inputs.model}
    publish(job_id, order.run, "started", {**started, "variations": inputs.variations, "started_at": started_at})
    works = [
        VariationWork(
            job_id=job_id,
            run=order.run,
            index=index,
            prompt=inputs.user_query,
            model=inputs.model,
            size=inputs.size,
            seed=None if inputs.seed is None else inputs.seed + index,  # distinct, reproducible
            target=target,
        )
        for index in range(inputs.variations)
    ]
    summary = JobSummary(
        job_id=job_id,
        run=order.run,
        name=parsed.name,
        model=inputs.model,
        size=inputs.size,
        variations=inputs.variations,
        submitted_at=order.submitted_at,
        started_at=started_at,
        original_prompt=inputs.user_query,
    )
    log.info("job %s run %d: %d variation(s) of %s at %s", job_id, order.run, len(works), inputs.model, inputs.size)
    if inputs.prompt_enhancement != "off":
        # The prompt step writes the prompt(s) first, then publishes this chord with them (prompt_step.py).
        start_prompt_step(result_id, inputs, works, summary)
    else:
        dispatch_variations(works, summary, result_id)
