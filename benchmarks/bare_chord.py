"""The baseline every per-job figure is measured against: a bare Celery chord.

Four no-op header tasks and a callback, on the same Redis, with Celery's
defaults (no events, no late acks, no started state), run by a worker with the
same pool and concurrency as ours::

    BARE_CHORD_REDIS_URL=redis://... BARE_CHORD_QUEUE=q celery -A benchmarks.bare_chord worker -P threads -c 32

What our job adds on top of this is the price of validation, a job record,
real images and storage, and the reliability settings.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, chord
from celery.result import AsyncResult

NOOP, COLLECT = "bare.noop", "bare.collect"


def make_app(url: str, queue: str, pool_size: int | None = None) -> Celery:
    """The bare app. A worker's Redis pools are as large as ours (``pool_size``), so it does not
    fail where ours must not; a sender keeps Celery's defaults, as our producer does (kombu's
    producer pool limit is global to a process)."""
    app = Celery("bare-chord", broker=url, backend=url)
    app.conf.update(task_default_queue=queue, broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
    if pool_size is not None:
        app.conf.update(
            broker_pool_limit=pool_size,
            redis_max_connections=pool_size,
            broker_transport_options={"max_connections": pool_size},
        )
    return app


app = make_app(
    os.environ.get("BARE_CHORD_REDIS_URL", "redis://127.0.0.1:6379/0"),
    os.environ.get("BARE_CHORD_QUEUE", "bare-chord"),
    int(os.environ.get("BARE_CHORD_POOL", "64")),
)


@app.task(name=NOOP)
def noop(index: int) -> dict[str, Any]:
    return {"index": index}


@app.task(name=COLLECT)
def collect(results: list[dict[str, Any]]) -> int:
    return len(results)


def submit(sender: Celery, variations: int = 4) -> AsyncResult:
    """One chord sent by ``sender`` (any app on the same broker); ``.get()`` waits for the callback."""
    header = [sender.signature(NOOP, args=(i,)) for i in range(variations)]
    return chord(header)(sender.signature(COLLECT))
