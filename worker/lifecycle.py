"""Announcing a job's progress from a worker: its event log and its webhook
(``contract.events.announce`` is the one place; this binds it to the worker's
Redis handle and Celery app)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from contract.events import EventType, announce, announce_variation, event_record
from contract.result import ErrorRecord, ImageRecord
from contract.settings import get_settings
from worker.state import job_records


def publish(job_id: str, run: int, event: EventType, data: Mapping[str, Any]) -> str | None:
    """Append ``event`` to the job's log and enqueue its webhook delivery if subscribed;
    the stream id, or None when it could not be recorded (logged, never raised)."""
    from worker.celery_app import app  # the tasks import this module while the app is being built

    settings = get_settings()
    return announce(job_records(), app, job_id, run, event, data, settings.events_max_len, settings.events_retention_s)


def variation_finished(job_id: str, run: int, record: ImageRecord | ErrorRecord) -> bool:
    """Count the variation once and announce its outcome (its record, outlined:
    ``contract.events.event_record``), in one round trip; whether it was counted now."""
    from worker.celery_app import app

    outcome = "image" if isinstance(record, ImageRecord) else "error"
    data = {
        "job_id": job_id,
        "run": run,
        "index": record.index,
        "kind": outcome,
        "record": event_record(record),
    }
    return announce_variation(job_records(), app, job_id, run, record.index, data, get_settings().events_max_len)
