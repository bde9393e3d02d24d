"""The lost-job sweep, run by every worker (contract/lost_jobs.py says what and why).

A daemon thread wakes every ``IMAGEGEN_LOST_SWEEP_S``; the atomic check makes
many workers sweeping at once harmless. A Redis fault only skips a round. Each
round also reports which providers this worker can call (contract/providers.py).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery.signals import worker_ready, worker_shutdown

from contract.lost_jobs import sweep
from contract.providers import provider_configured, report_providers
from contract.settings import get_settings
from worker.metrics import JOBS_LOST
from worker.providers import FACTORIES
from worker.state import job_records

log = logging.getLogger(__name__)
_stop = threading.Event()


def _run(backend: Any) -> None:
    settings = get_settings()
    _report_providers()
    while not _stop.wait(settings.lost_sweep_s):
        _report_providers()
        try:
            for job_id in sweep(job_records(), backend, settings.job_deadline_s):
                log.warning("job %s ended as lost: no progress for %d s", job_id, settings.job_deadline_s)
                JOBS_LOST.inc()
        except (redis.RedisError, OSError) as exc:
            log.warning("lost-job sweep skipped: %s", type(exc).__name__)


def _report_providers() -> None:
    """Tell the API which providers this worker can call (contract/providers.py)."""
    settings = get_settings()
    try:
        report_providers(job_records().client, settings, [p for p in FACTORIES if provider_configured(p, settings)])
    except (redis.RedisError, OSError) as exc:
        log.warning("provider report skipped: %s", type(exc).__name__)


@worker_ready.connect
def start_sweeper(**_: Any) -> None:
    from worker.celery_app import app  # this module is one of the app's includes

    _stop.clear()
    threading.Thread(target=_run, args=(app.backend,), name="imagegen-lost-sweep", daemon=True).start()


@worker_shutdown.connect
def stop_sweeper(**_: Any) -> None:
    _stop.set()
