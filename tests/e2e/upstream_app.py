"""A workflow engine's own Celery app with an "LLM" task, for the LLM -> image chain tests.

Run as a real worker (``celery -A tests.e2e.upstream_app worker``) on its own queue
(``ENGINE_QUEUE``), on the same broker as imagegen (``REDIS_URL``): the engine chains
``client.signature(node)`` after its task, and this worker publishes that link with
the task's return value when the task succeeds. ``ENGINE_SERIALIZER=pickle`` makes it an
engine whose app pickles its messages (the image worker accepts JSON only).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

SERIALIZERS: dict[str, dict[str, Any]] = {
    "json": {"task_serializer": "json", "result_serializer": "json", "accept_content": ["json"]},
    "pickle": {"task_serializer": "pickle", "result_serializer": "pickle", "accept_content": ["pickle", "json"]},
}

app = Celery("engine", broker=os.environ.get("REDIS_URL"), backend=os.environ.get("REDIS_URL"))
app.conf.update(
    **SERIALIZERS[os.environ.get("ENGINE_SERIALIZER", "json")],
    task_default_queue=os.environ.get("ENGINE_QUEUE", "engine"),
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="engine.llm_answer")
def llm_answer(text: str) -> dict[str, Any]:
    """What an LLM node returns: the text under output.text, with metadata beside it."""
    return {"output": {"text": text, "model": "engine-llm"}, "usage": {"tokens": 42}}


@app.task(name="engine.echo")
def echo(value: Any) -> Any:
    """Returns its argument: any upstream value, good or bad."""
    return value


@app.task(name="engine.boom")
def boom(text: str) -> str:
    """An upstream task that fails (an LLM node whose provider refused)."""
    raise RuntimeError("the engine's LLM provider refused")
