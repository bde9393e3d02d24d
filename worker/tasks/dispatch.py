"""Publishing a run's fan-out: ``chord(generate_variation x N, finalize)``, the body frozen
under the run's task id so ``AsyncResult(<id>@<run>)`` resolves to the result document.

Used by the job task and, when the node asks for a prompt step, by that step once it has
written the prompts (worker/tasks/prompt_step.py).

The chord is sent as Celery's canvas sends it, through Celery's own calls: the body frozen with
the chord's group id, the chord's size stored (``backend.set_chord_size``), then each header task
sent with ``chord``, ``group_id`` and ``group_index``. The canvas (``chord(...).delay()``) does
the same and more that a worker never uses: it clones and freezes every signature again, and
builds a result object per task and a group result, each wired to a promise for a caller that
would wait on them. That was 3.4 of its 3.5 ms of CPU per chord of four, against 1.6 ms this way
(one process, local Redis); the job task does it on every job. The messages are the canvas's:
tests/worker/test_dispatch.py sends both ways and compares every message and the chord's size
key, ids aside, so a Celery upgrade that changes the chord's protocol fails there. (The canvas
also lists the group's result among the calling task's children, which nothing here reads.)"""

from __future__ import annotations

from celery.utils import uuid

from contract.queue import FINALIZE, GENERATE_VARIATION
from contract.work import JobSummary, VariationWork
from worker.celery_app import app


def dispatch_variations(works: list[VariationWork], summary: JobSummary, result_id: str) -> None:
    """Publish the chord of ``works`` with ``finalize(summary)`` as its body, under ``result_id``."""
    group_id = uuid()
    # Its arguments are the variations' records (signed URLs): Flower and the logs get a note instead.
    body = app.signature(
        FINALIZE,
        args=(summary.model_dump(mode="json"),),
        argsrepr=f"(<{len(works)} variation records>, job {summary.job_id} run {summary.run})",
    )
    body.freeze(result_id, group_id=group_id)  # the body gets this run's task id (as Task.replace does)
    # Before any header task is sent (the canvas sets it before the last): a variation that ends
    # at once then always finds the size it counts against.
    app.backend.set_chord_size(group_id, len(works))
    with app.producer_or_acquire() as producer:
        for position, work in enumerate(works):
            # Root and parent ids come from the calling task, as for any task sent from a task.
            app.send_task(
                GENERATE_VARIATION,
                args=(work.model_dump(mode="json"),),
                chord=body,
                group_id=group_id,
                group_index=position,  # the order finalize gets the records in
                producer=producer,
                add_to_parent=False,
                ignore_result=True,  # the chord collects the records; no per-variation result (nor subscription)
                argsrepr=f"(job {work.job_id} run {work.run} variation {work.index})",  # Flower's "args"
            )
