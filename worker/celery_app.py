"""The Celery application the worker pods run (``celery -A worker worker``)."""

from __future__ import annotations

from celery import Celery

from contract.queue import celery_config
from contract.settings import get_settings

app = Celery("imagegen")
app.conf.update(celery_config(get_settings()))
app.conf.include = [
    "worker.health",
    "worker.tasks.run_job",
    "worker.tasks.variation",
    "worker.tasks.finalize",
    "worker.tasks.sign",
]
