"""Publishing a run's fan-out: ``chord(generate_variation x N, finalize)``, the body frozen
under the run's task id so ``AsyncResult(<id>@<run>)`` resolves to the result document.

Used by the job task and, when the node asks for a prompt step, by that step once it has
written the prompts (worker/tasks/prompt_step.py)."""

from __future__ import annotations

from celery import chord

from contract.queue import FINALIZE, GENERATE_VARIATION
from contract.work import JobSummary, VariationWork
from worker.celery_app import app


def dispatch_variations(works: list[VariationWork], summary: JobSummary, result_id: str) -> None:
    """Publish the chord of ``works`` with ``finalize(summary)`` as its body, under ``result_id``."""
    header = [
        app.signature(
            GENERATE_VARIATION,
            args=(w.model_dump(mode="json"),),
            ignore_result=True,  # the chord collects the records; no per-variation result (nor subscription)
            argsrepr=f"(job {w.job_id} run {w.run} variation {w.index})",  # Flower's "args": no repr to build
        )
        for w in works
    ]
    # Its arguments are the variations' records (signed URLs): Flower and the logs get a note instead.
    body = app.signature(
        FINALIZE,
        args=(summary.model_dump(mode="json"),),
        argsrepr=f"(<{len(header)} variation records>, job {summary.job_id} run {summary.run})",
    )
    dispatch = chord(header, body)
    dispatch.freeze(result_id)  # the body gets this run's task id (as Task.replace does)
    dispatch.delay()  # root and parent ids come from the calling task, as for any task sent from a task
