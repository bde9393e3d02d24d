"""The job task: replaces itself with the chord, so the job id resolves to
the chord body's result document."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, chord
from celery.exceptions import Ignore

from contract.jobs import utcnow
from contract.node import NodeValidationError, validate_node
from contract.queue import FINALIZE, GENERATE_VARIATION, RUN_JOB, dispatch_key
from contract.settings import get_settings
from worker.celery_app import app
from worker.state import job_records
from worker.tasks.finalize import invalid_job_result

log = logging.getLogger(__name__)


@app.task(name=RUN_JOB, bind=True)
def run_job(self: Task, node: dict[str, Any], submitted_at: str) -> Any:
    job_id: str = self.request.id
    settings = get_settings()
    records = job_records()
    try:
        parsed = validate_node(node, settings)
    except NodeValidationError as exc:
        # The producer validated already; this catches a catalog changed since.
        log.warning("job %s rejected by the worker: %s", job_id, exc)
        return invalid_job_result(job_id, node, submitted_at, str(exc))

    # acks_late redelivers this task if the worker dies after dispatching the
    # chord: only the first delivery may dispatch it.
    if not records.client.set(dispatch_key(job_id), "1", nx=True, ex=settings.result_ttl_s):
        log.info("job %s already dispatched; ignoring the redelivery", job_id)
        raise Ignore()

    started_at = utcnow()
    records.mark_running(job_id, started_at)
    payload = parsed.to_task_payload()
    header = [
        app.signature(GENERATE_VARIATION, args=(job_id, payload, index)) for index in range(parsed.inputs.variations)
    ]
    body = app.signature(FINALIZE, args=(job_id, payload, submitted_at, started_at.isoformat()))
    log.info("job %s: %d variation(s) of %s at %s", job_id, len(header), parsed.inputs.model, parsed.inputs.size)
    return self.replace(chord(header, body))
