"""The job task: parses the node once, then replaces itself with the chord
``generate_variation x N -> finalize``, so the run's task id resolves to the
chord body's result document."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, chord
from celery.exceptions import Ignore

from contract.clouds import TargetError, node_target
from contract.errors import NodeValidationError
from contract.job_ids import check_job_id
from contract.jobs import utcnow
from contract.node import validate_node
from contract.queue import FINALIZE, GENERATE_VARIATION, RUN_JOB, dispatch_key
from contract.settings import get_settings
from contract.work import JobOrder, JobSummary, VariationWork
from worker.celery_app import app
from worker.state import job_records
from worker.tasks.finalize import invalid_job_result

log = logging.getLogger(__name__)


@app.task(name=RUN_JOB, bind=True, pydantic=True)
def run_job(self: Task, order: JobOrder) -> Any:
    settings = get_settings()
    records = job_records()
    try:
        # Again in the worker: a message may bypass the producer, and the catalog may have changed.
        job_id = check_job_id(order.job_id)
        parsed = validate_node(order.node, settings)
        target = node_target(parsed.inputs.model_dump(), settings.target_policy) if parsed.inputs.use_cloud else None
    except (NodeValidationError, TargetError) as exc:
        log.warning("job %r rejected by the worker: %s", order.job_id[:200], exc)
        return invalid_job_result(order, str(exc))

    # acks_late redelivers this task if the worker dies: after a whole dispatch the
    # guard says "done" and the redelivery stops here; a worker that died between
    # claiming and publishing left "pending", and the redelivery dispatches again.
    guard = dispatch_key(job_id, order.run)
    if not records.client.set(guard, "pending", nx=True, ex=settings.result_ttl_s):
        if records.client.get(guard) == b"done":
            log.info("job %s run %d already dispatched; ignoring the redelivery", job_id, order.run)
            raise Ignore()
        log.warning("job %s run %d: an earlier delivery died while dispatching; dispatching again", job_id, order.run)

    started_at = utcnow()
    records.mark_running(job_id, started_at)
    inputs = parsed.inputs
    header = [
        app.signature(
            GENERATE_VARIATION,
            args=(
                VariationWork(
                    job_id=job_id,
                    run=order.run,
                    index=index,
                    prompt=inputs.user_query,
                    model=inputs.model,
                    size=inputs.size,
                    seed=None if inputs.seed is None else inputs.seed + index,  # distinct, reproducible
                    target=target,
                ).model_dump(mode="json"),
            ),
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
    )
    body = app.signature(FINALIZE, args=(summary.model_dump(mode="json"),))
    log.info("job %s run %d: %d variation(s) of %s at %s", job_id, order.run, len(header), inputs.model, inputs.size)
    try:
        return self.replace(chord(header, body))
    except Ignore:  # replace publishes the chord, then raises Ignore
        records.client.set(guard, "done", xx=True, keepttl=True)
        raise
