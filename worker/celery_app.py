"""The Celery application the worker pods run (``celery -A worker worker``)."""

from __future__ import annotations

from celery import Celery, Task

from contract.queue import celery_config
from contract.settings import get_settings
from worker.redaction import install_log_redaction


class ImageGenTask(Task):  # type: ignore[misc]  # Celery ships no type hints
    """Base of every task here: its task events never carry the return value (signed URLs)."""

    Request = "worker.redaction:RedactedRequest"


app = Celery("imagegen", task_cls=ImageGenTask)
app.conf.update(celery_config(get_settings()))
app.conf.include = [
    "worker.health",
    "worker.sweeper",
    "worker.tasks.run_job",
    "worker.tasks.variation",
    "worker.tasks.finalize",
    "worker.tasks.sign",
]
install_log_redaction()
