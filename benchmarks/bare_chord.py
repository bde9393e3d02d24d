"""The baseline every per-job figure is measured against: a bare Celery chord.

Four no-op header tasks and a callback, on the same Redis, with Celery's
defaults (no events, no late acks, no started state), run by a worker with the
same pool and concurrency as ours::

    BARE_CHORD_REDIS_URL=redis://... BARE_CHORD_QUEUE=q celery -A benchmarks.bare_chord worker -P threads -c 32

What our job adds on top of this is the price of validation, a job record,
real images and storage, and the reliability settings. ``split`` is the second
baseline: the same chord published by a task, the shape the node's design asks
for (a job task splits the job into variations, a chord gathers them).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, chord
from celery.result import AsyncResult

NOOP, COLLECT, SPLIT = "bare.noop", "bare.collect", "bare.split"


# Our worker's reliability and Flower settings (contract/queue.py), for the job-shaped floor.
OUR_SETTINGS = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "worker_send_task_events": True,
}


def make_app(url: str, queue: str, pool_size: int | None = None, ours: bool = False) -> Celery:
    """The bare app. A worker's Redis pools are as large as ours (``pool_size``), so it does not
    fail where ours must not; a sender keeps Celery's defaults, as our producer does (kombu's
    producer pool limit is global to a process)."""
    app = Celery("bare-chord", broker=url, backend=url)
    app.conf.update(task_default_queue=queue, broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
    if ours:
        app.conf.update(OUR_SETTINGS)
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
    ours=os.environ.get("BARE_CHORD_SETTINGS") == "ours",
)


@app.task(name=NOOP)
def noop(index: int) -> dict[str, Any]:
    return {"index": index}


@app.task(name=COLLECT)
def collect(results: list[dict[str, Any]]) -> int:
    return len(results)


@app.task(name=SPLIT, bind=True, ignore_result=True)
def split(self: Any, variations: int) -> None:
    """The shape of our job (worker/tasks/run_job.py, dispatch.py) with nothing in it: one task
    that publishes the chord with the callback under its own id."""
    dispatch = chord([app.signature(NOOP, args=(i,)) for i in range(variations)], app.signature(COLLECT))
    dispatch.freeze(self.request.id)
    dispatch.delay()


def submit_split(sender: Celery, variations: int = 4) -> AsyncResult:
    """One job-shaped chord (``split``); ``.get()`` waits for its callback."""
    return sender.send_task(SPLIT, args=(variations,))


def submit(sender: Celery, variations: int = 4) -> AsyncResult:
    """One chord sent by ``sender`` (any app on the same broker); ``.get()`` waits for the callback."""
    header = [sender.signature(NOOP, args=(i,)) for i in range(variations)]
    return chord(header)(sender.signature(COLLECT))
