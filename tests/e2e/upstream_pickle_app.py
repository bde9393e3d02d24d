"""A workflow engine whose Celery app pickles its messages (``task_serializer="pickle"``), for
the chain tests: its worker publishes the image job's link with the upstream task's value, and
the image worker accepts JSON only. Run as ``celery -A tests.e2e.upstream_pickle_app worker``
on ``ENGINE_QUEUE``, on the same broker as imagegen (``REDIS_URL``)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

PICKLING = {"task_serializer": "pickle", "result_serializer": "pickle", "accept_content": ["pickle", "json"]}

app = Celery("engine-pickle", broker=os.environ.get("REDIS_URL"), backend=os.environ.get("REDIS_URL"))
app.conf.update(
    **PICKLING,
    task_default_queue=os.environ.get("ENGINE_QUEUE", "engine"),
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="engine_pickle.echo")
def echo(value: Any) -> Any:
    """Returns its argument: the upstream value."""
    return value


@app.task(name="engine_pickle.boom")
def boom(text: str) -> str:
    """An upstream task that fails."""
    raise RuntimeError("the engine's LLM provider refused")
