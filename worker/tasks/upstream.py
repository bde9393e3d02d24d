"""A Celery chain's link after the engine's own task (an LLM node): that task's return value
becomes the node's ``user_query``, then the job runs; and the errback that ends the job when
the upstream task fails, so that it does not wait ``queued`` until the lost-job deadline.

The value is bounded and picked (contract/prompt_text.py) and the job continues as a normal
``run_job`` under the run's task id; a value that cannot be a prompt ends the job ``failed``
with a ``permanent`` error saying what arrived (type and size, never the text), before any
provider call.

The link is the chain's last task: it returns before the job runs, so a task chained after it
would get None at once (or be sent to this worker, which does not know it). A link that carries
such a rest of a chain ends its job ``failed`` before any cost and raises
``ChainedAfterImageJob``, which Celery stores as the rest's outcome, so the engine learns why.
A link delivered for a run that has ended (canceled while it waited, or ended otherwise) or
that a rerun replaced starts nothing."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from pydantic import ValidationError

from contract.errors import ImageGenError, excerpt
from contract.job_ids import is_job_id
from contract.prompt_text import UpstreamValueError, bounded_args_repr, prompt_from_upstream
from contract.queue import RUN_JOB, RUN_JOB_FROM_UPSTREAM, UPSTREAM_FAILED, job_task_id
from contract.settings import get_settings
from contract.work import JobOrder
from worker.celery_app import app
from worker.payloads import describe
from worker.state import job_records
from worker.tasks.finalize import fail_unstarted_job
from worker.tasks.run_job import end_refused_order

log = logging.getLogger(__name__)


class ChainedAfterImageJob(ImageGenError, RuntimeError):
    """A task was chained after the image job's link, which is a chain's last task."""


# The rest of a chain is failed with the error (store_errors_even_if_ignored: Celery then stores
# it as each chained task's outcome, so the engine's result raises instead of waiting); throws:
# an expected refusal, logged without a traceback.
@app.task(
    name=RUN_JOB_FROM_UPSTREAM,
    bind=True,
    ignore_result=True,
    store_errors_even_if_ignored=True,
    throws=(ChainedAfterImageJob,),
)
def run_job_from_upstream(self: Task, upstream: Any, order: dict[str, Any], prompt_from: str | None = None) -> None:
    """A chain's link: the upstream value becomes the node's ``user_query``, then the job runs."""
    settings = get_settings()
    job = _order(self, order)
    if job is None:
        return None
    result_id = job_task_id(job.job_id, job.run)
    downstream = _downstream_tasks(self)
    if downstream:
        message = (
            f"a Celery task ({downstream}) was chained after this image job's link, which must be the "
            "chain's last task: the link returns before the job runs, so that task would get None. "
            "The job was not run. Follow the job with ImageGenClient.wait, events or a webhook, and "
            "start downstream work from there"
        )
        log.warning("job %s run %d: refused: %s", job.job_id, job.run, message)
        fail_unstarted_job(self.backend, result_id, job, message)
        raise ChainedAfterImageJob(f"job {job.job_id}: {message}")
    status = job_records().read(job.job_id)
    if status is not None and (status.run != job.run or status.finished):
        # Canceled while it waited for this value (ImageGenClient.cancel ended it), ended
        # otherwise, or replaced by a rerun: nothing of this run may start.
        log.info(
            "job %s run %d is %s (run %d now); its link starts nothing", job.job_id, job.run, status.state, status.run
        )
        return None
    inputs = job.node.get("inputs", {})
    if not isinstance(inputs, dict):
        fail_unstarted_job(self.backend, result_id, job, "inputs: must be a JSON object {...}")
        return None
    try:
        prompt = prompt_from_upstream(
            upstream, prompt_from, max_chars=settings.max_prompt_chars, max_bytes=settings.max_node_bytes
        )
    except UpstreamValueError as exc:
        # The message says what arrived (type and size), never the upstream text.
        log.warning("job %s: %s refused as a prompt: %s", job.job_id[:200], bounded_args_repr(upstream), exc)
        fail_unstarted_job(self.backend, result_id, job, f"inputs.user_query (from the upstream task): {exc}")
        return None
    forwarded = job.model_copy(update={"node": {**job.node, "inputs": {**inputs, "user_query": prompt}}})
    log.info("job %s run %d: prompt of %d characters from the upstream task", job.job_id, job.run, len(prompt))
    # run_job validates the node again, prompt included, and runs it under the run's task id.
    app.send_task(
        RUN_JOB,
        args=(forwarded.model_dump(mode="json"),),
        task_id=result_id,
        argsrepr=f"(job {job.job_id} run {job.run})",
    )
    return None


@app.task(name=UPSTREAM_FAILED, bind=True, ignore_result=True)
def upstream_failed(self: Task, upstream: Any, *_: Any, order: dict[str, Any]) -> None:
    """The chain's errback (``ImageGenClient.chain``): the upstream task failed, so the link never
    runs. Ends the job ``failed``, saying so, while it still waits for its prompt.

    Celery calls it with the failed task's id when it runs in another worker (this one), or with
    ``(request, exc, traceback)`` when both run in one process: only ``order`` is read."""
    job = _order(self, order)
    if job is None:
        return None
    status = job_records().read(job.job_id)
    if status is None or status.run != job.run or status.state != "queued":
        return None  # the link ran after all, or the job ended otherwise
    upstream_id = getattr(upstream, "id", upstream)
    message = (
        f"the upstream task {str(upstream_id)[:100]} failed, so this job got no prompt and made no image; "
        "its error is in the workflow engine's result for that task"
    )
    log.warning("job %s run %d: %s", job.job_id, job.run, message)
    fail_unstarted_job(self.backend, job_task_id(job.job_id, job.run), job, message)
    return None


def _downstream_tasks(task: Task) -> str:
    """The names of the tasks chained or linked after this link (empty: none), for the message."""
    rest = [*reversed(task.request.chain or ()), *(task.request.callbacks or ())]  # Celery keeps the chain reversed
    # The names come from the engine's message: bounded, and shown as text only when printable.
    named = [str(item.get("task", "?")) if isinstance(item, dict) else "?" for item in rest]
    names = [name if name.isprintable() else repr(name) for name in (str(excerpt(n)) for n in named)]
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _order(task: Task, order: Any) -> JobOrder | None:
    """The link's job order, or None once a refused one is logged (and its job ended if it names one)."""
    try:
        job = JobOrder.model_validate(order)
    except ValidationError as exc:
        problem = describe(exc, "order")
        log.warning("task %s[%s]: job order refused: %s", task.name, task.request.id, problem)
        end_refused_order(task, order, problem)
        return None
    if not is_job_id(job.job_id):  # it becomes keys and log lines: no job of that id can exist
        log.warning(
            "task %s[%s]: job order refused: job_id %r is not a job id", task.name, task.request.id, excerpt(job.job_id)
        )
        return None
    return job
