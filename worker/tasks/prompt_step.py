"""LLM -> image: the job's prompt step (the chain link after an upstream LLM task is
worker/tasks/upstream.py).

``prompt_step`` runs before the fan-out when a node asks for it
(``prompt_enhancement``: ``enhance`` or ``diversify``): one text-model call
writes the prompt(s), then the step publishes the rest of the job's chain,
``chord(generate_variation x N, finalize)``, with each variation's own prompt
and the run's task id on the chord body (as ``run_job`` does). The per-variation
prompts exist only after the step, so the step sends the chord rather than being
linked to it: Celery would pass the whole list of prompts to every variation.

The step retries like a variation (backoff, the server's delay, the shared quota);
every final failure goes to ``finalize`` as one error record per variation, so
the job ends with a document (``blocked`` with the provider's reason, ``permanent``,
``transient_exhausted``, ``timeout``) and no image call is made. Before its text call the
step checks the job's store as a variation does (``storage``; when its first attempt finds
the store broken, nothing was paid for).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel, ConfigDict

from contract.catalog import TextModelEntry, load_catalog
from contract.node import NodeInputs
from contract.prompt_text import clean_llm_text, control_character, describe
from contract.queue import FINALIZE, PROMPT_STEP, prompt_step_key
from contract.result import ErrorKind, ErrorRecord, PromptStepRecord
from contract.settings import Settings, get_settings
from contract.work import JobSummary, RetryState, VariationWork
from worker import metrics
from worker.celery_app import app
from worker.errors import BlockedError, GenerationError, PermanentError, StorageError, TransientError
from worker.lifecycle import variation_finished
from worker.providers import GeneratedText, TextRequest, text_provider_for
from worker.rate_limit import QuotaWait
from worker.retry import RetryPolicy
from worker.state import job_records, rate_limiter
from worker.storage import writable_location
from worker.tasks.dispatch import dispatch_variations

log = logging.getLogger(__name__)

# Beyond an attempt (the task's time limit) and the wait for the next (IMAGEGEN_RETRY_MAX_DELAY_S),
# what publishing the chord may take while Redis fails over (~40 s: contract/queue.py).
PUBLISH_S = 60.0

Mode = Literal["enhance", "diversify"]

ENHANCE = (
    "You write prompts for an image generation model. Rewrite the user's idea as one detailed prompt: "
    "subject, setting, composition, lighting, style and mood. Keep every element the user asked for and "
    "add nothing that contradicts it. Answer with the prompt only: no title, no label, no quotes, no markdown."
)
DIVERSIFY = (
    "You write prompts for an image generation model. Write {count} distinct prompts for the user's idea, "
    "each a different interpretation (composition, style, lighting or point of view), each complete on its "
    'own and keeping every element the user asked for. Answer as JSON: an object whose "prompts" is a list '
    "of exactly {count} strings."
)
STYLE_GUIDE = "\n\nThe workflow author's style guide, for every prompt you write:\n{instructions}"


class PromptStepWork(BaseModel):
    """``imagegen.run_job`` -> ``imagegen.prompt_step``: the step, and the chord it publishes after."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    result_id: str  # the run's task id: the chord body (finalize) stores the document under it
    mode: Mode
    text_model: str  # a catalog text model name
    instructions: str | None = None  # the node's style guide
    variations: list[VariationWork]  # as run_job made them, each with the node's prompt
    summary: JobSummary
    retry: RetryState = RetryState()


def instructions_for(mode: Mode, count: int, style_guide: str | None) -> str:
    """The text model's system instruction: the step's task, then the node's style guide."""
    task = ENHANCE if mode == "enhance" else DIVERSIFY.format(count=count)
    return task + (STYLE_GUIDE.format(instructions=style_guide) if style_guide else "")


def checked_prompts(written: GeneratedText, mode: Mode, count: int, max_chars: int) -> list[str]:
    """One prompt per variation: the model's, cleaned (contract/prompt_text.py) and bounded."""
    expected = 1 if mode == "enhance" else count
    if len(written.prompts) != expected:
        raise PermanentError(f"the prompt step returned {len(written.prompts)} prompt(s); {expected} needed")
    prompts = [clean_llm_text(text) for text in written.prompts]
    for number, (raw, prompt) in enumerate(zip(written.prompts, prompts, strict=True), start=1):
        if not prompt:
            raise PermanentError(f"the prompt step's prompt {number} is empty ({describe(raw)})")
        if len(prompt) > max_chars:
            raise PermanentError(
                f"the prompt step's prompt {number} is {describe(prompt)}; at most {max_chars} are allowed"
            )
        control = control_character(prompt, multiline=True)  # the rule every other prompt source meets
        if control is not None:
            raise PermanentError(f"the prompt step's prompt {number} {control}")
    return prompts * count if mode == "enhance" else prompts


def write_prompts(
    work: PromptStepWork, entry: TextModelEntry, attempt: int, settings: Settings
) -> tuple[list[str], GeneratedText]:
    """The step's one provider call: a prompt per variation and what the model reported, or a
    ``worker.errors`` outcome."""
    count = len(work.variations)
    request = TextRequest(
        prompt=work.variations[0].prompt,
        instructions=instructions_for(work.mode, count, work.instructions),
        model_name=work.text_model,
        model=entry,
        count=None if work.mode == "enhance" else count,
        attempt=attempt,
    )
    written = text_provider_for(entry.provider, settings).write_prompts(request)
    try:
        return checked_prompts(written, work.mode, count, settings.max_prompt_chars), written
    except GenerationError as exc:
        exc.spent = written  # paid for, though its prompts are refused
        raise


def start_prompt_step(result_id: str, inputs: NodeInputs, variations: list[VariationWork], summary: JobSummary) -> None:
    """Called by ``run_job`` instead of publishing its chord: the step publishes it, with the prompts."""
    settings = get_settings()
    catalog = load_catalog(settings.model_catalog_file, settings.model_catalog_replace)
    mode: Mode = "enhance" if inputs.prompt_enhancement == "enhance" else "diversify"
    work = PromptStepWork(
        result_id=result_id,
        mode=mode,
        text_model=catalog.text_model_for(inputs.model, inputs.text_model) or "",  # "": reported by the step
        instructions=inputs.prompt_instructions,
        variations=variations,
        summary=summary,
    )
    log.info("job %s run %d: prompt step (%s, %s) first", summary.job_id, summary.run, mode, work.text_model)
    app.send_task(
        PROMPT_STEP,
        args=(work.model_dump(mode="json"),),
        argsrepr=f"(job {summary.job_id} run {summary.run} prompt step)",
    )


@app.task(name=PROMPT_STEP, bind=True, max_retries=None, pydantic=True, ignore_result=True)
def prompt_step(self: Task, work: PromptStepWork) -> None:
    settings = get_settings()
    summary = work.summary
    state = work.retry
    guard = prompt_step_key(summary.job_id, summary.run)
    # Before the text call is paid, the step is claimed for one attempt and the wait for the next
    # (its retries keep the task id, so they claim it again); a copy sent again holds off.
    lease_s = settings.task_time_limit_s + settings.retry_max_delay_s + PUBLISH_S
    claim = job_records().begin_prompt_step(summary.job_id, summary.run, self.request.id, lease_s)
    begun = claim.outcome
    if begun == "busy":
        # Another copy (sent by a job task redelivered once its dispatch lease ran out) is
        # writing the prompts or waits for its retry: ask again later,
        # without a worker slot, until it has published ("done") or its lease ran out (it died).
        countdown = max(0.1, min(claim.lease_left_s, settings.retry_max_delay_s))
        log.info(
            "job %s run %d: another copy of the prompt step holds it; asking again in %.1f s",
            summary.job_id,
            summary.run,
            countdown,
        )
        next_state = state.model_copy(update={"throttled": state.throttled + 1})  # not a failed attempt
        raise self.retry(countdown=countdown, args=(_with(work, next_state),), kwargs={})
    if begun == "done":
        log.info("job %s run %d: prompt step dispatched already; ignoring the redelivery", summary.job_id, summary.run)
        return None
    if begun == "stale":
        log.info("job %s run %d ended (lost) or was replaced; prompt step not started", summary.job_id, summary.run)
        return None
    if begun == "canceled":
        tried = self.request.retries - state.throttled
        message = "the job was canceled before its prompt step" + (f" (after {tried} attempt(s))" if tried else "")
        _finish_without_images(work, summary, "canceled", message, None, tried, state.first_attempt_at or time.time())
        return None
    entry = load_catalog(settings.model_catalog_file, settings.model_catalog_replace).get_text(work.text_model)
    first_attempt_at = state.first_attempt_at or time.time()
    retries = self.request.retries - state.throttled
    attempt = retries + 1
    record = PromptStepRecord(mode=work.mode, text_model=work.text_model, attempts=attempt)
    failure: tuple[ErrorKind, str, str | None] | None = None
    try:
        if entry is None:
            raise PermanentError(f"text model {work.text_model!r} is no longer in the model catalog")
        record = record.model_copy(update={"model_id": entry.model_id, "provider": entry.provider})
        # The store first, as a variation checks it: a bucket that takes no writes fails the job
        # before the text call is paid for (every variation would fail there).
        writable_location(summary.job_id, work.variations[0].target, settings)
        # Then a slot of the project's shared quota, unless an earlier attempt booked it.
        if not state.slot_booked:
            rate_limiter().go_now(entry.model_id, settings.retry_max_delay_s)
        prompts, written = write_prompts(work, entry, attempt, settings)
        record = _with_usage(record, written, entry)
    except QuotaWait as wait:
        log.info("job %s prompt step: provider quota busy; next slot in %.1f s", summary.job_id, wait.countdown)
        next_state = state.model_copy(update={"throttled": state.throttled + 1, "slot_booked": wait.booked})
        metrics.PROMPT_STEP_RETRIES.labels(work.text_model, "quota").inc()
        raise self.retry(countdown=wait.countdown, args=(_with(work, next_state),), kwargs={}) from None
    except TransientError as exc:
        policy = RetryPolicy.from_settings(settings)
        countdown = policy.countdown(retries, exc.retry_after_s)
        refusal = policy.refusal(retries, countdown, time.time() - first_attempt_at)
        if refusal is None:
            log.info("job %s prompt step attempt %d: %s; retrying in %.1f s", summary.job_id, attempt, exc, countdown)
            next_state = RetryState(first_attempt_at=first_attempt_at, throttled=state.throttled)
            metrics.PROMPT_STEP_RETRIES.labels(work.text_model, "transient").inc()
            raise self.retry(countdown=countdown, args=(_with(work, next_state),), kwargs={}) from None
        kind: ErrorKind = "timeout" if exc.timed_out else "transient_exhausted"
        failure = (kind, f"gave up after {attempt} attempt(s) ({refusal}): {exc}", None)
    except SoftTimeLimitExceeded:
        failure = ("timeout", "the prompt step exceeded its time limit", None)
    except StorageError as exc:  # no text call on this attempt
        failure = ("storage", str(exc), None)
        # Free when no attempt called the model; an earlier attempt's call that failed transiently
        # (a timeout after the server did the work) may have been billed: unknown, not free.
        record = record.model_copy(update={"attempts": retries, "estimated_cost_usd": 0.0 if retries == 0 else None})
    except (BlockedError, PermanentError) as exc:
        failure = ("blocked", str(exc), exc.reason) if isinstance(exc, BlockedError) else ("permanent", str(exc), None)
        if exc.spent is not None and entry is not None:  # the call was billed, though its answer is refused
            record = _with_usage(record, exc.spent, entry)
    except Exception:
        log.exception("job %s prompt step: unexpected error", summary.job_id)
        failure = ("permanent", "internal error in the worker's prompt step (logged)", None)

    summary = summary.model_copy(update={"prompt_step": record})
    # Claimed ("pending") until what follows is published, then "done": as run_job's dispatch
    # guard, a delivery that died in between is finished by its redelivery (the same task id).
    if failure is not None:
        kind, message, reason = failure
        log.warning("job %s prompt step failed: %s (%s)", summary.job_id, kind, message)
        _finish_without_images(work, summary, kind, message, reason, attempt, first_attempt_at)
    else:
        works = [
            v.model_copy(update={"prompt": prompt, "prompt_from_step": True})
            for v, prompt in zip(work.variations, prompts, strict=True)
        ]
        dispatch_variations(works, summary, work.result_id)
    job_records().client.set(guard, "done", xx=True, keepttl=True)
    return None


def _with_usage(record: PromptStepRecord, written: GeneratedText, entry: TextModelEntry) -> PromptStepRecord:
    usage = written.usage
    cost = entry.cost_for(usage.prompt_tokens, usage.output_tokens + usage.thoughts_tokens) if usage else None
    if usage is None and entry.cost_for(0, 0) == 0.0:
        cost = 0.0  # a free model that reports no tokens (the offline writer): free, not unknown
    return record.model_copy(update={"usage": usage, "estimated_cost_usd": cost, "response_id": written.response_id})


def _with(work: PromptStepWork, state: RetryState) -> dict[str, Any]:
    return work.model_copy(update={"retry": state}).model_dump(mode="json")


def _finish_without_images(
    work: PromptStepWork,
    summary: JobSummary,
    kind: ErrorKind,
    message: str,
    reason: str | None,
    attempts: int,
    first_attempt_at: float,
) -> None:
    """The step failed: finalize writes the document (one error per variation, no provider call for them).
    Each variation is counted and announced as if it had run (worker/tasks/variation.py)."""
    elapsed_ms = int((time.time() - first_attempt_at) * 1000)
    # A store that failed its check says so itself, as it would to a variation.
    why = message if kind in ("canceled", "storage") else f"no image: the prompt step failed: {message}"
    records = [
        ErrorRecord(index=v.index, kind=kind, message=why, reason=reason, attempts=attempts, duration_ms=elapsed_ms)
        for v in work.variations
    ]
    outcomes = []
    for variation, record in zip(work.variations, records, strict=True):
        variation_finished(summary.job_id, summary.run, record)
        metrics.variation_finished(variation.model, kind, None)
        outcomes.append({"kind": "error", "record": record.model_dump(mode="json", exclude_none=True)})
    app.signature(
        FINALIZE,
        args=(outcomes, summary.model_dump(mode="json")),
        argsrepr=f"(<{len(outcomes)} error records>, job {summary.job_id} run {summary.run})",
    ).apply_async(task_id=work.result_id)
