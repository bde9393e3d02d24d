"""The chord body: gathers the variation records into the result document,
stored in the Redis result backend under the job id."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from contract.catalog import load_catalog
from contract.jobs import JobState, utcnow
from contract.node import ImageGenerationNode
from contract.queue import FINALIZE
from contract.result import ErrorRecord, ImageRecord, JobResult, Usage
from contract.settings import get_settings
from worker.celery_app import app
from worker.state import job_records

log = logging.getLogger(__name__)


@app.task(name=FINALIZE)
def finalize(
    outcomes: list[dict[str, Any]], job_id: str, node: dict[str, Any], submitted_at: str, started_at: str
) -> dict[str, Any]:
    settings = get_settings()
    parsed = ImageGenerationNode.model_validate(node)
    entry = load_catalog(settings.model_catalog_file, settings.model_catalog_replace).models[parsed.inputs.model]
    images = sorted(
        (ImageRecord.model_validate(o["record"]) for o in outcomes if o["kind"] == "image"), key=lambda r: r.index
    )
    errors = sorted(
        (ErrorRecord.model_validate(o["record"]) for o in outcomes if o["kind"] == "error"), key=lambda r: r.index
    )
    finished_at = utcnow()
    submitted = datetime.fromisoformat(submitted_at)
    result = JobResult(
        job_id=job_id,
        name=parsed.name,
        status=_status(len(images), len(errors)),
        model=parsed.inputs.model,
        model_id=entry.model_id,
        provider=entry.provider,
        size=parsed.inputs.size,
        variations=parsed.inputs.variations,
        images=images,
        errors=errors,
        submitted_at=submitted,
        started_at=datetime.fromisoformat(started_at),
        finished_at=finished_at,
        duration_ms=int((finished_at - submitted).total_seconds() * 1000),
        usage=_total_usage(images),
        estimated_cost_usd=_total_cost(images),
    )
    job_records().mark_finished(job_id, result.status, finished_at)
    log.info("job %s %s: %d image(s), %d error(s)", job_id, result.status, len(images), len(errors))
    return result.model_dump(mode="json")


def invalid_job_result(job_id: str, node: dict[str, Any], submitted_at: str, message: str) -> dict[str, Any]:
    """A ``failed`` document for a job the worker could not even start."""
    now = utcnow()
    node = node if isinstance(node, dict) else {}
    raw_inputs = node.get("inputs")
    inputs: dict[str, Any] = raw_inputs if isinstance(raw_inputs, dict) else {}
    result = JobResult(
        job_id=job_id,
        name=str(node.get("name", "")),
        status="failed",
        model=str(inputs.get("model", "")),
        model_id="",
        provider="",
        size=str(inputs.get("size", "")),
        variations=0,
        images=[],
        errors=[ErrorRecord(index=0, kind="permanent", message=message, attempts=0, duration_ms=0)],
        submitted_at=datetime.fromisoformat(submitted_at),
        started_at=now,
        finished_at=now,
        duration_ms=int((now - datetime.fromisoformat(submitted_at)).total_seconds() * 1000),
    )
    job_records().mark_finished(job_id, "failed", now)
    return result.model_dump(mode="json")


def _status(images: int, errors: int) -> JobState:
    if images and not errors:
        return "succeeded"
    return "partial" if images else "failed"


def _total_usage(images: list[ImageRecord]) -> Usage | None:
    usages = [r.metadata.usage for r in images if r.metadata.usage is not None]
    return sum(usages[1:], usages[0]) if usages else None


def _total_cost(images: list[ImageRecord]) -> float | None:
    costs = [r.estimated_cost_usd for r in images]
    if any(cost is None for cost in costs):
        return None  # an unpriced model: unknown, not free
    return round(sum(cost or 0.0 for cost in costs), 6)
