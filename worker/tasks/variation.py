"""One variation: generate one image, store it, return a small record.

Transient failures retry as Celery retries with a countdown (the worker slot
is freed while waiting). Every final outcome is RETURNED, never raised, so
the chord body always runs and can report partial success.

The record goes to the chord only (``ignore_result``): no per-variation result
key, no STARTED/RETRY states, one round trip for the job record. That record
also says which variations of the run finished, so a copy of one that finished
(redelivered after a worker lost mid-ack or a Redis restart, or dispatched
twice) is skipped instead of generating, paying for and overwriting the image
again; and whether the run is still current, so a run that the lost-job sweep
ended, or a rerun replaced, spends nothing more. Each execution also takes a
short lease on the variation in that round trip (renewed while it runs): a copy
delivered while another is still generating (RabbitMQ requeues an unacked
message when the worker's connection drops) looks again later instead of
paying for the image a second time.

A canceled run (ImageGenClient.cancel) is checked at the start of every
attempt, before a quota slot is booked or the provider called: a variation not
started yet, or waiting for its next retry, ends with a "canceled" error record.
Each finished variation is announced on the job's event log (worker/lifecycle.py).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from contract.catalog import ModelEntry, load_catalog, parse_size
from contract.errors import excerpt
from contract.events import JobEvents
from contract.prompt_text import control_character
from contract.queue import GENERATE_VARIATION
from contract.result import ErrorKind, ErrorRecord, ImageRecord, SizeMismatch
from contract.settings import Settings, get_settings
from contract.work import MAX_VARIATION_INDEX, RetryState, VariationWork
from worker import metrics
from worker.celery_app import app
from worker.dispatch_lease import VARIATION_LEASE_S
from worker.errors import BlockedError, GenerationError, PermanentError, StorageError, TransientError
from worker.imaging import inspect_image
from worker.lifecycle import publish, variation_finished
from worker.payloads import PayloadRefused
from worker.providers import GenerationRequest, provider_for
from worker.providers.answer_gate import answer_scope, estimated_answer_bytes, process_gate
from worker.rate_limit import QuotaWait
from worker.retry import RetryPolicy
from worker.state import job_records, rate_limiter, variation_leases
from worker.storage import writable_location

log = logging.getLogger(__name__)


_BUSY_POLL_S = 1.0  # a copy that finds another execution generating its variation looks again this often


def _refused(task: Task, refusal: PayloadRefused) -> dict[str, Any] | None:
    """A variation whose message does not parse (sent past the job task): nothing is generated,
    counted or announced (its job id may name no job); a chord it belongs to gets an error
    record when the message says which variation it was."""
    work = refusal.arguments.get("work")
    index = work.get("index") if isinstance(work, dict) else None
    if type(index) is not int or not 0 <= index <= MAX_VARIATION_INDEX:
        return None
    message = f"the variation's message was refused: {refusal.problem}"
    return _outcome(_error(index, "permanent", message, 0, time.time()))


@app.task(name=GENERATE_VARIATION, bind=True, max_retries=None, pydantic=True, ignore_result=True, refused=_refused)
def generate_variation(self: Task, work: VariationWork) -> dict[str, Any] | None:
    state = work.retry
    settings = get_settings()
    tried = self.request.retries - state.throttled
    first = state.first_attempt_at or time.time()
    # This execution's lease on the variation: a copy of the message running at the same time (a
    # broker requeued it when this worker's connection dropped mid-call) draws another token and
    # finds the lease "busy" instead of paying for the image again. Renewed while the attempt
    # runs (worker/dispatch_lease.py), removed when its outcome is counted or it retries.
    token = uuid.uuid4().hex
    begun = job_records().begin_variation(
        work.job_id, work.run, work.index, tried + 1, settings.events_max_len, token, VARIATION_LEASE_S
    )
    if begun.outcome == "busy":
        # Not a failure, and no attempt: look again soon; by then it is usually "done" (and this
        # copy hands the chord the finished record), or the holder died and its lease ran out.
        countdown = max(0.1, min(begun.lease_left_s, _BUSY_POLL_S))
        log.info(
            "job %s variation %d: another delivery is generating it; looking again in %.1f s",
            work.job_id,
            work.index,
            countdown,
        )
        metrics.RETRIES.labels(_model_label(work.model), "copy").inc()
        next_state = state.model_copy(update={"throttled": state.throttled + 1})
        raise self.retry(countdown=countdown, args=(_with(work, next_state),), kwargs={})
    if begun.outcome == "done":
        # A copy (a redelivery after a lost ack, a second dispatch): the work was done and paid
        # for. Its record still goes to the chord, which counts each header entry once, in case
        # the first copy died before its entry reached the chord.
        log.info("job %s variation %d finished already; skipping a copy", work.job_id, work.index)
        return _outcome(_record_of_finished(work, tried, first))
    if begun.outcome == "stale":
        log.info("job %s run %d ended or was replaced; variation %d not started", work.job_id, work.run, work.index)
        message = "the run ended (lost, or replaced by a rerun) before this variation started"
        return _outcome(_error(work.index, "lost", message, tried, first))  # not counted, not announced
    if begun.outcome == "canceled":
        message = "the job was canceled before this variation started"
        if tried:
            message = f"the job was canceled while this variation waited to retry (after {tried} attempt(s))"
        return _finished(work, _error(work.index, "canceled", message, tried, first))
    with variation_leases().holding((work.job_id, work.run, work.index, token)):
        return _attempt(self, work, token)


def _attempt(task: Task, work: VariationWork, token: str) -> dict[str, Any]:
    """One attempt of a variation this execution holds the lease on: book quota, generate,
    store, count and announce; or give the lease up and retry later."""
    state = work.retry
    settings = get_settings()
    tried = task.request.retries - state.throttled
    entry = load_catalog(settings.model_catalog_file, settings.model_catalog_replace).get(work.model)
    first_attempt_at = state.first_attempt_at or time.time()
    retries = task.request.retries - state.throttled  # retries after real failures
    attempt = retries + 1
    try:
        record: ImageRecord | ErrorRecord = _make_image(work, attempt, first_attempt_at, entry)
    except QuotaWait as wait:
        # Waiting for the shared quota is not a failure: it uses no retry.
        log.info(
            "job %s variation %d: provider quota busy; next slot in %.1f s", work.job_id, work.index, wait.countdown
        )
        next_state = state.model_copy(update={"throttled": state.throttled + 1, "slot_booked": wait.booked})
        metrics.RETRIES.labels(_model_label(work.model), "quota").inc()
        _retrying(work, tried + 1, "waiting for the shared provider quota", wait.countdown)
        _release(work, token)
        raise task.retry(countdown=wait.countdown, args=(_with(work, next_state),), kwargs={}) from None
    except TransientError as exc:
        policy = RetryPolicy.from_settings(settings)
        countdown = policy.countdown(retries, exc.retry_after_s)
        refusal = policy.refusal(retries, countdown, time.time() - first_attempt_at)
        if refusal is None:
            log.info(
                "job %s variation %d attempt %d: %s; retrying in %.1f s",
                work.job_id,
                work.index,
                attempt,
                exc,
                countdown,
            )
            next_state = RetryState(first_attempt_at=first_attempt_at, throttled=state.throttled)
            metrics.RETRIES.labels(_model_label(work.model), "transient").inc()
            _retrying(work, attempt, str(exc), countdown)
            _release(work, token)
            raise task.retry(countdown=countdown, args=(_with(work, next_state),), kwargs={}) from None
        kind: ErrorKind = "timeout" if exc.timed_out else "transient_exhausted"
        message = f"gave up after {attempt} attempt(s) ({refusal}): {exc}"
        record = _error(work.index, kind, message, attempt, first_attempt_at)
    except SoftTimeLimitExceeded:
        record = _error(work.index, "timeout", "the variation exceeded its time limit", attempt, first_attempt_at)
    except BlockedError as exc:
        record = _error(work.index, "blocked", str(exc), attempt, first_attempt_at, reason=exc.reason)
    except StorageError as exc:
        record = _with_billed_image(
            _error(work.index, "storage", str(exc), attempt, first_attempt_at), exc, entry, work
        )
    except PermanentError as exc:
        record = _with_billed_image(
            _error(work.index, "permanent", str(exc), attempt, first_attempt_at), exc, entry, work
        )
    except Exception:
        # A bug, not a provider outcome: log it for operators, keep the chord alive.
        log.exception("job %s variation %d: unexpected error", work.job_id, work.index)
        record = _error(work.index, "permanent", "internal error in the worker (logged)", attempt, first_attempt_at)

    return _finished(work, record)  # counting removes the lease


def _release(work: VariationWork, token: str) -> None:
    """Give up this attempt's lease before it retries, so that its next attempt (or a copy) starts
    at once. Best effort: if Redis is away, the lease runs out within one lease anyway."""
    try:
        job_records().release_variation(work.job_id, work.run, work.index, token)
    except (redis.RedisError, OSError) as exc:
        log.warning("job %s variation %d: lease not released: %s", work.job_id, work.index, type(exc).__name__)


def _finished(work: VariationWork, record: ImageRecord | ErrorRecord) -> dict[str, Any]:
    """Count the variation, announce it, and give the chord its record."""
    variation_finished(work.job_id, work.run, record)
    if isinstance(record, ImageRecord):
        metrics.variation_finished(_model_label(work.model), "succeeded", record.duration_ms / 1000)
    else:
        metrics.variation_finished(_model_label(work.model), record.kind, None)
        log.warning("job %s variation %d failed: %s (%s)", work.job_id, work.index, record.kind, record.message)
    return _outcome(record)


def _outcome(record: ImageRecord | ErrorRecord) -> dict[str, Any]:
    """What the chord gets: only what finalize reads, without the empty fields (their defaults
    come back when parsed)."""
    outcome = "image" if isinstance(record, ImageRecord) else "error"
    return {"kind": outcome, "record": record.model_dump(mode="json", exclude_none=True)}


def _record_of_finished(work: VariationWork, tried: int, first: float) -> ImageRecord | ErrorRecord:
    """A finished variation's record, from its ``variation`` event on the job's log."""
    finished = JobEvents(job_records().client, job_records().ttl_s).finished_records(work.job_id, work.run)
    if work.index in finished:
        return finished[work.index]
    message = "finished by an earlier delivery, whose record is no longer in the job's event log"
    return _error(work.index, "lost", message, tried, first)


def _retrying(work: VariationWork, attempt: int, reason: str, countdown: float) -> None:
    """Progress for the job's followers (the Playground shows it on the variation's tile)."""
    data = {"job_id": work.job_id, "run": work.run, "index": work.index, "attempt": attempt}
    publish(work.job_id, work.run, "variation_retrying", {**data, "reason": reason[:300], "retry_in_s": countdown})


def _with(work: VariationWork, state: RetryState) -> dict[str, Any]:
    """The next attempt's payload, JSON-ready."""
    return work.model_copy(update={"retry": state}).model_dump(mode="json")


def _make_image(work: VariationWork, attempt: int, first_attempt_at: float, entry: ModelEntry | None) -> ImageRecord:
    if entry is None:
        raise PermanentError(f"model {excerpt(work.model)!r} is no longer in the model catalog")
    if work.size not in entry.sizes:  # a message may bypass the job task, or the catalog changed
        raise PermanentError(
            f"size {excerpt(work.size)!r} is not one model {excerpt(work.model)!r} makes (its catalog sizes)"
        )
    settings = get_settings()
    _check_prompt(work.prompt, settings)
    request = GenerationRequest(work.prompt, work.model, entry, work.size, work.index, work.seed, attempt)

    # The store first: credentials the tenant may not name, a missing secret, a bad credential, or
    # a bucket that does not exist or takes no writes fails before the image is paid for (a test
    # write, once per store and tenant per process: worker/storage/write_check.py).
    location = writable_location(work.job_id, work.target, settings)
    # Then a slot of the project's shared quota (after every check: a variation that cannot be
    # stored takes no other tenant's slot), unless an earlier attempt booked it.
    if not work.retry.slot_booked:
        rate_limiter().go_now(entry.model_id, settings.retry_max_delay_s)
    # From its first bytes until it is stored, the answer counts against the process's memory for
    # answers (its turn waits there; the generation before it does not).
    with answer_scope(process_gate(settings.answer_memory_mb), estimated_answer_bytes(*parse_size(work.size))):
        image = provider_for(entry.provider, settings).generate(request)
        try:  # from here the image is made and paid for: an error's record and the job's cost count it
            facts = inspect_image(image.data, max_pixels=2 * entry.largest_pixels)  # room for a near miss
            stored = location.put(
                work.job_id,
                work.index,
                work.run,
                facts.extension,
                image.data,
                facts.mime_type,
                {"job_id": work.job_id, "model": work.model, "model_id": entry.model_id, "variation": str(work.index)},
            )
        except GenerationError as exc:  # a damaged or cut answer, an upload that failed
            exc.billed_image = image.metadata
            raise
    metadata = image.metadata
    if facts.size != work.size:
        metadata = metadata.model_copy(update={"size_mismatch": SizeMismatch(requested=work.size, returned=facts.size)})
    return ImageRecord(
        index=work.index,
        url=stored.url,
        url_expires_at=stored.url_expires_at,
        uri=stored.uri,
        mime_type=facts.mime_type,
        width=facts.width,
        height=facts.height,
        bytes=facts.size_bytes,
        sha256=facts.sha256,
        seed=work.seed,
        prompt=work.prompt if work.prompt_from_step else None,  # else the job's original_prompt, once
        attempts=attempt,
        duration_ms=_ms_since(first_attempt_at),
        estimated_cost_usd=entry.price_for(work.size),
        metadata=metadata,
    )


def _model_label(model: str) -> str:
    """The model as a metrics label: a catalog name, else "unknown" (a message's own name would add
    a time series per name, without bound)."""
    settings = get_settings()
    return model if load_catalog(settings.model_catalog_file, settings.model_catalog_replace).get(model) else "unknown"


def _check_prompt(prompt: str, settings: Settings) -> None:
    """The node's rules for a prompt, again before any cost: a message may bypass the job task."""
    problem = control_character(prompt, multiline=True)
    if len(prompt) > settings.max_prompt_chars:
        problem = f"is {len(prompt)} characters; at most {settings.max_prompt_chars} are allowed"
    elif problem is None and not prompt.strip():
        problem = "is empty"
    elif problem is None:
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            problem = "is not valid Unicode (a lone surrogate)"
    if problem is not None:
        raise PermanentError(f"prompt refused: it {problem}")


def _error(
    index: int, kind: ErrorKind, message: str, attempts: int, first_attempt_at: float, reason: str | None = None
) -> ErrorRecord:
    return ErrorRecord(
        index=index,
        kind=kind,
        message=message,
        reason=reason,
        attempts=attempts,
        duration_ms=_ms_since(first_attempt_at),
    )


def _with_billed_image(
    record: ErrorRecord, exc: GenerationError, entry: ModelEntry | None, work: VariationWork
) -> ErrorRecord:
    """``record`` with the price and the provider's metadata of the image made, and billed, before
    ``exc`` (an upload that failed, an answer the check refused), if one was."""
    if exc.billed_image is None or entry is None:
        return record
    return record.model_copy(update={"estimated_cost_usd": entry.price_for(work.size), "metadata": exc.billed_image})


def _ms_since(start: float) -> int:
    return int((time.time() - start) * 1000)
