"""The producer's Python API, for the workflow engine.

    client = ImageGenClient()
    handle = client.submit(node_json)            # validated, then enqueued
    result = handle.wait(timeout=120)            # the result document

Submitting twice with the same ``job_id`` enqueues once (arq-style). A job's
events (started, each variation, completed) can be followed as they happen
(``events``), POSTed signed to a webhook (``submit(..., webhook=...)``), and a
queued or running job can be canceled (``cancel``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import redis
from celery import Celery
from celery import chain as celery_chain
from celery.canvas import Signature
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from kombu.exceptions import OperationalError as KombuOperationalError

from contract.clouds import node_target
from contract.documents import load_document
from contract.errors import ImageGenError, NodeValidationError, Problem, excerpt
from contract.events import MAX_BLOCK_MS, JobEvent, JobEvents, announce, check_event_id, completed_data
from contract.job_ids import check_job_id, check_new_job_id
from contract.jobs import RERUNNABLE, Claim, JobConflict, JobRecords, JobStatus, fingerprint, utcnow
from contract.lost_jobs import end_if_lost
from contract.node import ImageGenerationNode, validate_node
from contract.prompt_text import UpstreamValueError, check_prompt_path
from contract.queue import (
    RUN_JOB,
    RUN_JOB_FROM_UPSTREAM,
    SIGN_URL,
    UPSTREAM_FAILED,
    celery_config,
    job_task_id,
    sign_task_id,
)
from contract.redis_client import redis_client, transient_retry
from contract.result import ErrorRecord, JobResult
from contract.result_backend import PATIENCE_SETTING, run_document
from contract.settings import Settings, get_settings
from contract.tenancy import check_refs_of_tenant, check_tenant_refs
from contract.webhooks import DeliveryLog, DeliveryStatus, Webhook, parse_webhook, webhook_json
from contract.work import JobOrder, SignRequest

__all__ = [
    "CancelOutcome",
    "ImageGenClient",
    "JobConflict",
    "JobCrashed",
    "JobHandle",
    "JobNotFound",
    "JobTimeout",
    "QueueUnavailable",
    "SignError",
    "check_timeout",
]


class JobNotFound(ImageGenError, LookupError):
    @classmethod
    def unknown(cls, job_id: str) -> JobNotFound:
        return cls(f"no job {job_id!r} (never submitted, or its record expired)")

    @classmethod
    def to_rerun(cls, job_id: str) -> JobNotFound:
        return cls(
            f"rerun = true: no job {job_id!r} to run again (never submitted, or its record expired); "
            "a rerun runs an existing failed or partial job again: submit it without rerun to create it"
        )


# How a failed or partial chain job runs again (submit cannot: the job's node has no prompt).
_CHAIN_RERUN = (
    "a chain job runs again only through a new link: client.signature(node, job_id=..., prompt_from=..., "
    "rerun=True) (or client.chain(upstream, node, job_id=..., rerun=True)), with the same node and "
    "prompt_from, chained after its upstream task again; or build a link with a new job id"
)


def check_rerun(rerun: Any, job_id: str | None, subject: str) -> None:
    """NodeValidationError naming ``rerun`` for one that is not a bool, or for ``rerun=True``
    without the job id of the job to run again."""
    if not isinstance(rerun, bool):
        rule = "must be true or false"
        raise NodeValidationError([Problem("rerun", excerpt(rerun), rule)], subject=subject)
    if rerun and job_id is None:
        rule = "a rerun needs the job_id of the job to run again (a failed or partial job); no job_id was given"
        raise NodeValidationError([Problem("rerun", excerpt(rerun), rule)], subject=subject)


class QueueUnavailable(ImageGenError, ConnectionError):
    """Redis or the broker refused, dropped, timed out or answered with an error (e.g. out of memory).
    ``service``: "broker" when sending the task failed (kombu's error), else "redis"."""

    def __init__(self, message: str, service: str = "redis"):
        super().__init__(message)
        self.service = service


# What reaching Redis or the broker can raise; the client turns each into QueueUnavailable.
_UNREACHABLE: tuple[type[BaseException], ...] = (redis.RedisError, OSError, KombuOperationalError)

_F = TypeVar("_F", bound=Callable[..., Any])


def _reaching_the_queue(method: _F) -> _F:
    """Redis and broker faults leave a client method as one typed error, never a raw traceback."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except ImageGenError:
            raise
        except _UNREACHABLE as exc:
            service = "broker" if isinstance(exc, KombuOperationalError) else "redis"
            raise QueueUnavailable(f"{type(exc).__name__}: {str(exc)[:200]}", service) from None
        except RuntimeError as exc:
            # Celery's result consumer gave up reconnecting (it recovers on the next call).
            if not isinstance(exc.__cause__, _UNREACHABLE):
                raise
            cause = exc.__cause__
            raise QueueUnavailable(f"{type(cause).__name__}: {str(cause)[:200]}") from None

    return call  # type: ignore[return-value]


def check_timeout(timeout: Any) -> None:
    """NodeValidationError naming ``timeout`` for one no clock can reach (nan never expires, inf
    overflows), a negative one, or one that is not a number (a bool or a string included)."""
    number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if timeout is not None and not (number and math.isfinite(timeout) and timeout >= 0):
        rule = "must be a number of seconds: finite, 0 or more (None waits for ever)"
        raise NodeValidationError([Problem("timeout", excerpt(timeout), rule)], subject="timeout")


def _release(outcome: AsyncResult) -> None:
    """Unsubscribe now, not in AsyncResult.__del__ at interpreter exit (a stray traceback then)."""
    with contextlib.suppress(Exception):  # the connection is already gone: nothing to unsubscribe from
        outcome.backend.remove_pending_result(outcome)


class JobTimeout(ImageGenError, TimeoutError):
    pass


@dataclass(frozen=True)
class CancelOutcome:
    """What ``cancel`` did: ``changed`` when this call asked a queued or running job to stop
    (it ends ``canceled``); otherwise ``state`` says why nothing changed."""

    job_id: str
    state: str  # the job's state when the cancel was asked
    changed: bool
    message: str


class JobCrashed(ImageGenError, RuntimeError):
    """The job task itself raised (a worker bug or lost infrastructure), so
    there is no result document; variation failures never end up here."""


@dataclass(frozen=True)
class JobHandle:
    job_id: str
    client: ImageGenClient
    created: bool  # False when this id was submitted before with the same node (nothing enqueued)
    run: int = 1  # 2, 3, ... for reruns

    def status(self) -> JobStatus:
        return self.client.status(self.job_id)

    def cancel(self) -> CancelOutcome:
        return self.client.cancel(self.job_id)

    def events(self, after: str | None = None, timeout: float | None = None) -> Iterator[JobEvent]:
        return self.client.events(self.job_id, after=after, timeout=timeout)

    def wait(self, timeout: float | None = None) -> JobResult:
        try:
            return self.client.wait(self.job_id, timeout=timeout)
        except JobNotFound:
            # This handle submitted it: the record did not expire in the meantime, Redis lost it.
            raise JobNotFound(
                f"job {self.job_id} was submitted, but its record is gone from Redis "
                "(a Redis restart without persistence, or a failover that lost writes)"
            ) from None


class ImageGenClient:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self.celery = Celery("imagegen-producer")
        self.celery.conf.update(celery_config(self.settings))
        # How long a caller waits out an unreachable, full or failing-over Redis (workers: ~35 s):
        # each result-backend command retries that long, and Celery's own loop around them (which
        # retries for ever with result_backend_always_retry) not at all, so a wait cannot hang.
        backend_options = dict(self.celery.conf.result_backend_transport_options or {})
        backend_options["retry_policy"] = {**backend_options.get("retry_policy", {}), "max_retries": 0}
        self.celery.conf.update(
            {
                PATIENCE_SETTING: self.settings.client_redis_patience_s,
                "result_backend_max_retries": 0,  # stores and reads
                "result_backend_transport_options": backend_options,  # the pub/sub reconnect (20 tries)
            }
        )
        patience = transient_retry(self.settings.client_redis_patience_s)
        self.records = JobRecords(redis_client(self.settings.redis_url, retry=patience), self.settings.result_ttl_s)
        self.job_events = JobEvents(self.records.client, self.settings.result_ttl_s, self.settings.events_max_len)

    def validate(self, node: dict[str, Any] | str | bytes) -> ImageGenerationNode:
        """Raise NodeValidationError listing every problem; nothing is sent."""
        return validate_node(node, self.settings)

    @_reaching_the_queue
    def submit(
        self,
        node: dict[str, Any] | str | bytes,
        job_id: str | None = None,
        *,
        rerun: bool = False,
        webhook: Webhook | Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | str | bytes | None = None,
    ) -> JobHandle:
        """Validate and enqueue. The same ``job_id`` with the same node enqueues nothing (idempotent);
        with a different node it raises ``JobConflict``. ``rerun=True`` runs a failed or partial job
        again under its id; its previous result stays readable until the new one replaces it.
        ``webhook``: ``{url, events, secret}`` (contract/webhooks.py) gets the job's events POSTed,
        signed; it is part of the job, so the same id with another webhook is a conflict.
        ``context``: the values for ``user_query`` placeholders (``{{ llm_1.text }}``), a JSON object;
        the rendered prompt is what is validated and enqueued (contract/templates.py)."""
        check_rerun(rerun, job_id, "submit request")
        parsed, job_id = validate_submission(node, job_id, self.settings, context=context)
        job_id = str(uuid.uuid4()) if job_id is None else job_id
        hook = None if webhook is None else parse_webhook(webhook, self.settings, resolve=True)
        check_tenant_refs(job_id, parsed.credential_refs(hook), self.settings)
        payload = parsed.to_task_payload()
        submitted_at = utcnow()
        # Without a webhook the fingerprint is the node's alone, as it always was.
        identity = payload if hook is None else {**payload, "webhook": hook.fingerprint_part()}
        claim = self.records.claim(
            job_id,
            node_fingerprint=fingerprint(identity),
            model=parsed.inputs.model,
            variations=parsed.inputs.variations,
            submitted_at=submitted_at,
            rerun=rerun,
            name=parsed.name,
            webhook=None if hook is None else webhook_json(hook),
        )
        if claim.outcome == "missing":
            raise JobNotFound.to_rerun(job_id)
        if claim.outcome == "conflict" and self.records.awaits_upstream(job_id):
            # Its fingerprint is the link's (the node without its prompt): no submit can match it.
            raise JobConflict(job_id, f"is {claim.previous_state} and is a chain link's job; {_CHAIN_RERUN}")
        if claim.outcome == "conflict":
            raise JobConflict(job_id, "was submitted before with a different node or webhook; use a new job id")
        if claim.outcome == "not_rerunnable":
            raise JobConflict(job_id, f"is {claim.previous_state}; only a failed or partial job can be rerun")
        if claim.enqueue:
            order = JobOrder(job_id=job_id, run=claim.run, node=payload, submitted_at=submitted_at)
            try:
                self.celery.send_task(
                    RUN_JOB, args=(order.model_dump(mode="json"),), task_id=job_task_id(job_id, claim.run)
                )
            except Exception:
                # Let the caller retry with the same id: nothing was sent.
                if claim.outcome == "created":
                    self.records.forget(job_id, claim)
                elif claim.outcome == "rerun":
                    self.records.undo_rerun(job_id, claim)
                raise
        return JobHandle(job_id, self, claim.enqueue, claim.run)

    @_reaching_the_queue
    def signature(
        self,
        node: dict[str, Any] | str | bytes,
        job_id: str | None = None,
        *,
        prompt_from: str | None = None,
        rerun: bool = False,
    ) -> Signature:
        """A Celery signature to chain after an upstream task, whose return value becomes ``user_query``:
        ``chain(llm_task.s(...), client.signature(node, job_id=..., prompt_from="output.text"))``.

        The node is validated now (everything but the prompt) and the job id claimed, so ``status`` and
        ``wait`` work at once (the same id and node build the link again while the job is queued and
        not canceled, so a link that was never sent can be sent later); the value is bounded, picked
        (``prompt_from``: a dotted path into a dict or JSON text; None: the value is the prompt),
        cleaned and validated when it arrives, and a value that
        cannot be a prompt ends the job ``failed`` (contract/prompt_text.py). The engine's Celery app
        must use the same broker; the link and its errback travel as JSON whatever the engine's
        ``task_serializer`` (the worker accepts JSON only). The id is ``signature.kwargs["order"]["job_id"]``.

        The link is the chain's last task: nothing may be chained after it (the job's result comes
        from ``wait``, ``events`` or a webhook; a task chained after it ends the job ``failed``).
        ``rerun=True`` runs a failed or partial chain job again under its id (the same node and
        ``prompt_from``), as a new run waiting for this link. A canceled job is not built again
        (``JobConflict``): an engine that revokes the upstream task calls ``cancel``."""
        check_rerun(rerun, job_id, "signature request")
        if prompt_from is not None:
            try:
                check_prompt_path(prompt_from)
            except UpstreamValueError as exc:
                raise NodeValidationError([Problem("prompt_from", excerpt(prompt_from), str(exc))]) from None
        parsed = validate_node(_with_placeholder_prompt(node, self.settings), self.settings)
        job_id = str(uuid.uuid4()) if job_id is None else check_new_job_id(job_id)
        check_tenant_refs(job_id, parsed.credential_refs(), self.settings)
        payload = parsed.to_task_payload()
        submitted_at = utcnow()
        claim = self.records.claim(
            job_id,
            node_fingerprint=fingerprint({**payload, "prompt_from": prompt_from}),
            model=parsed.inputs.model,
            variations=parsed.inputs.variations,
            submitted_at=submitted_at,
            rerun=rerun,
            name=parsed.name,
            awaits_upstream=True,
        )
        self._check_link_claim(job_id, claim)
        order = JobOrder(job_id=job_id, run=claim.run, node=payload, submitted_at=submitted_at)
        return self.celery.signature(
            RUN_JOB_FROM_UPSTREAM,
            kwargs={"order": order.model_dump(mode="json"), "prompt_from": prompt_from},
            queue=self.settings.queue,
            # The engine's own task_serializer (pickle, say) would make the worker drop the link.
            serializer="json",
            # Celery would log and show a repr of the upstream value (up to 1 KB of an LLM's answer).
            argsrepr="(<upstream value>)",
            kwargsrepr=f"{{job {job_id} run {claim.run}}}",
        )

    def _check_link_claim(self, job_id: str, claim: Claim) -> None:
        """Raise unless ``claim`` lets a link for ``job_id`` be built: a new job, a rerun, or the
        same link again for a run still waiting for it (queued, not canceled)."""
        if claim.outcome in ("created", "replayed", "rerun"):
            return
        if claim.outcome == "missing":
            raise JobNotFound.to_rerun(job_id)
        if claim.outcome == "conflict":
            raise JobConflict(
                job_id, "was submitted before with another node or prompt_from (or by submit); use a new job id"
            )
        state = claim.previous_state
        if state == "queued":
            # The same node again while nothing has run (a link built but never sent, or its sending
            # failed; with rerun=True, the rerun's own link) builds the link again, as submit would;
            # the dispatch guard runs a run's chord once.
            status = self.records.read(job_id)
            if status is None or not status.cancel_requested:
                return
            state = "canceled"
        if state == "canceled":
            raise JobConflict(job_id, "was canceled, and a canceled job does not run again; use a new job id")
        if state in RERUNNABLE:
            raise JobConflict(job_id, f"is {state}; {_CHAIN_RERUN}")
        raise JobConflict(
            job_id,
            f"is {state} (it has started, and only a failed or partial job can run again); use a new job id",
        )

    def chain(
        self,
        upstream: Signature,
        node: dict[str, Any] | str | bytes,
        job_id: str | None = None,
        *,
        prompt_from: str | None = None,
        rerun: bool = False,
    ) -> Signature:
        """``chain(upstream, self.signature(node, ...))`` with ``upstream_failed`` as its errback:
        if the upstream task fails, the job ends ``failed`` at once, saying so, instead of waiting
        ``queued`` until the lost-job deadline (IMAGEGEN_JOB_DEADLINE_S). ``.apply_async()`` it.
        The id is ``chain.tasks[-1].kwargs["order"]["job_id"]``. ``rerun``: as ``signature``'s."""
        if not isinstance(upstream, Signature):  # checked first: the link claims the job id
            rule = "must be the upstream task's Celery signature (e.g. llm_task.s(...)), which the job is chained after"
            raise NodeValidationError([Problem("upstream", excerpt(upstream), rule)], subject="chain request")
        link = self.signature(node, job_id, prompt_from=prompt_from, rerun=rerun)
        return celery_chain(upstream, link).on_error(self.upstream_failed(link))

    def upstream_failed(self, link: Signature) -> Signature:
        """The errback that ends ``link``'s job when the task before it fails: for a chain built by
        hand, ``chain(llm_task.s(...), link).on_error(client.upstream_failed(link))``."""
        order = link.kwargs["order"]
        return self.celery.signature(
            UPSTREAM_FAILED,
            kwargs={"order": order},
            queue=self.settings.queue,
            serializer="json",  # as the link's: the worker accepts JSON only
            kwargsrepr=f"{{job {order['job_id']} run {order['run']}}}",
            immutable=False,
        )

    @_reaching_the_queue
    def status(self, job_id: str) -> JobStatus:
        status = self.records.read(check_job_id(job_id))
        if status is None:
            raise JobNotFound.unknown(job_id)
        return status

    @_reaching_the_queue
    def result(self, job_id: str) -> JobResult | None:
        """The job's current result document (during a rerun: the previous run's), else None."""
        status = self.status(job_id)
        if status.result_run is None:
            return None
        document = run_document(self.celery, status.job_id, status.result_run)
        return None if document is None else JobResult.model_validate(document)

    @_reaching_the_queue
    def wait(self, job_id: str, timeout: float | None = None) -> JobResult:
        """The result document of the job's current run, once it has finished. While waiting the
        client also checks that the job is not lost (no progress within IMAGEGEN_JOB_DEADLINE_S)."""
        check_timeout(timeout)
        status = self.status(job_id)  # fail fast on an unknown id instead of waiting forever
        outcome = AsyncResult(status.task_id, app=self.celery)
        until = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                left = None if until is None else until - time.monotonic()
                step = self.settings.lost_sweep_s if left is None else max(0.0, min(left, self.settings.lost_sweep_s))
                try:
                    document = outcome.get(timeout=step, propagate=False, interval=0.2)
                    if outcome.failed():  # the job task itself raised: stored as FAILURE, no document
                        error = outcome.result
                        raise JobCrashed(f"job {job_id} crashed in the worker: {type(error).__name__}: {error}")
                    return JobResult.model_validate(document)
                except CeleryTimeout:
                    # The result's pub/sub message can miss us (a Redis failover, a reconnect): the
                    # job record says when the run has finished, and the document is read directly.
                    done = self.records.read(status.job_id)
                    if done is not None and done.finished and done.result_run == status.run:
                        document = self.result(status.job_id) or self._complete_canceled_link(status.job_id)
                        if document is not None:
                            return document
                    lost = end_if_lost(self.records, self.celery.backend, status.job_id, self.settings.job_deadline_s)
                    if lost is not None:
                        return lost
                    if left is not None and left <= step:
                        raise JobTimeout(f"job {job_id} did not finish within {timeout} s") from None
        finally:
            _release(outcome)

    @_reaching_the_queue
    def cancel(self, job_id: str) -> CancelOutcome:
        """Ask a queued or running job to stop: variations not started yet make no provider call,
        a retry waiting for its next attempt stops then, running ones finish; the job ends
        ``canceled`` with the images made so far. A chain link's job still waiting for its
        upstream task ends ``canceled`` at once (its result document is stored and announced
        now): an engine that revokes the upstream task calls this. A finished job is left as it
        is (``changed`` False, and the message says so). A canceled job cannot be rerun."""
        job_id = check_job_id(job_id)
        changed, state, run, ended = self.records.request_cancel(job_id, self.settings.events_max_len)
        if state == "missing":
            raise JobNotFound.unknown(job_id)
        if ended:
            ending = self.records.read(job_id)
            if ending is not None:  # else expired meanwhile: nobody can wait for it
                self._end_canceled_link(ending, run)
            message = f"job {job_id} run {run} was waiting for its upstream task; canceled (nothing had started)"
        elif changed:
            message = f"job {job_id} run {run} was {state}; cancel requested (running variations finish)"
        elif state in ("queued", "running"):
            message = f"job {job_id} is {state}; its cancel was requested before"
        else:
            self._complete_canceled_link(job_id)  # an earlier cancel's document, if it was not stored
            message = f"job {job_id} is already {state}; nothing to cancel"
        return CancelOutcome(job_id=job_id, state=state, changed=changed, message=message)

    def _complete_canceled_link(self, job_id: str) -> JobResult | None:
        """The document of a chain job canceled while it waited, stored now if the cancel that ended
        it could not store it (Redis dropped, the client died): ``_CANCEL`` ends the record first and
        the lost-job sweep passes over a finished job, so nothing else would. None: not such a job."""
        status = self.records.read(job_id)
        if status is None or status.state != "canceled" or status.result_run is None:
            return None
        if not self.records.awaits_upstream(job_id) or self.result(job_id) is not None:
            return None
        return self._end_canceled_link(status, status.result_run)

    def _end_canceled_link(self, status: JobStatus, run: int) -> JobResult:
        """Store and announce the result document of a chain link's run that ``request_cancel``
        ended ``canceled``, as the worker does for a job it could not start (a waiting client
        wakes up; followers of the event log get its "completed"); the document."""
        result = canceled_link_result(status)
        document = result.model_dump(mode="json")
        self.celery.backend.store_result(job_task_id(status.job_id, run), document, "SUCCESS")
        announce(
            self.records,
            self.celery,
            status.job_id,
            run,
            "completed",
            completed_data(document),
            self.settings.events_max_len,
            self.settings.events_retention_s,
        )
        return result

    def events(self, job_id: str, after: str | None = None, timeout: float | None = None) -> Iterator[JobEvent]:
        """The job's events in order, strictly after the event id ``after`` (None: from the first),
        waiting for new ones (a blocking read, no polling) until the ``completed`` of the run that
        is current now. ``JobTimeout`` when ``timeout`` seconds pass first; ``JobNotFound`` for an
        unknown job. Redis faults raise ``QueueUnavailable``."""
        check_timeout(timeout)
        status = self.status(job_id)  # fail fast on an unknown id
        cursor = None if after is None else check_event_id(after)
        return self._follow(status, cursor, timeout)

    def _follow(self, status: JobStatus, cursor: str | None, timeout: float | None) -> Iterator[JobEvent]:
        if cursor is not None and status.finished:
            at = _reaching_the_queue(self.job_events.get)(status.job_id, cursor)
            if at is not None and at.event == "completed" and at.run >= status.run:
                return  # resumed after the run's last event: nothing follows it
        until = None if timeout is None else time.monotonic() + timeout
        first = True  # one read even with no time left: a finished job's events are there already
        while True:
            left_ms = MAX_BLOCK_MS if until is None else int((until - time.monotonic()) * 1000)
            if left_ms <= 0 and not first:
                raise JobTimeout(f"job {status.job_id} did not complete within {timeout} s")
            first = False
            batch = _reaching_the_queue(self.job_events.read)(
                status.job_id, cursor, block_ms=min(max(left_ms, 1), MAX_BLOCK_MS)
            )
            if not batch:
                ended = self._ended_without_log(status, cursor)
                if ended is not None:
                    yield ended
                    return
            for event in batch:
                cursor = event.id
                if event.event == "completed":
                    event = self._with_document(status.job_id, event)
                yield event
                if event.event == "completed" and event.run >= status.run:
                    return

    def _ended_without_log(self, status: JobStatus, cursor: str | None) -> JobEvent | None:
        """The run's ``completed`` when the run has ended but its event is no longer in the log
        (expired after IMAGEGEN_EVENTS_RETENTION_S, or trimmed): the result document as one
        ``completed`` with the id ``0-0``, so a reader never waits for an event that cannot come."""
        now = self.status(status.job_id)
        if not now.finished or (now.result_run or 0) < status.run:
            return None
        if _reaching_the_queue(self.job_events.read)(status.job_id, cursor):
            return None  # it landed meanwhile: the next read gives it
        result = self.result(status.job_id)
        data = result.model_dump(mode="json") if result is not None else {"status": now.state}
        return JobEvent(id="0-0", event="completed", run=now.result_run or status.run, data=data)

    def _with_document(self, job_id: str, event: JobEvent) -> JobEvent:
        """A ``completed`` event with its run's result document as data (the log keeps only the
        outline: contract/events.py); the outline when the document is gone."""
        document = run_document(self.celery, job_id, event.run)
        return event if document is None else event.model_copy(update={"data": document})

    @_reaching_the_queue
    def webhook_deliveries(self, job_id: str) -> list[DeliveryStatus]:
        """How each of the job's webhook events fared (state, attempts, last HTTP status), in event
        order; JobNotFound for a job id never submitted (or expired), like ``status``."""
        job_id = check_job_id(job_id)
        deliveries = DeliveryLog(self.records.client, self.settings.result_ttl_s).read(job_id)
        if not deliveries and self.records.read(job_id) is None:
            raise JobNotFound.unknown(job_id)  # the message status gives, not the bare id
        return deliveries

    @_reaching_the_queue
    def sign(
        self,
        uri: str,
        node: dict[str, Any] | str | bytes | None = None,
        timeout: float = 30,
        *,
        tenant: str | None = None,
    ) -> SignedUrl:
        """A fresh URL for a stored image (``uri`` from the result), signed by a worker: the
        credentials stay there. Give the job's node when the image is in the node's own cloud;
        only images this service stored under that node's target (or the platform's) are signed.
        ``tenant`` (the HTTP API's caller): only that tenant's images, with credentials it may name."""
        check_timeout(timeout)
        check_image_uri(uri)
        target = None
        if node is not None:
            parsed = self.validate(node)
            if parsed.inputs.use_cloud:
                check_refs_of_tenant(tenant, parsed.credential_refs(), self.settings)
                target = node_target(parsed.inputs.model_dump(), self.settings.target_policy)
        request = SignRequest(uri=uri, target=target, tenant=tenant)
        # Not signed after the caller stops waiting: the URL would sit in the backend unread.
        outcome = self.celery.send_task(
            SIGN_URL, args=(request.model_dump(mode="json"),), expires=timeout, task_id=sign_task_id()
        )
        try:
            document = outcome.get(timeout=timeout, propagate=True)
        except CeleryTimeout:
            raise JobTimeout(f"no worker signed {uri} within {timeout} s") from None
        finally:
            outcome.forget()  # the signed URL is a bearer credential: do not leave it in the backend
        if "error" in document:
            raise SignError(document["error"]["message"], kind=document["error"]["kind"])
        expires = document.get("url_expires_at")
        return SignedUrl(document["uri"], document["url"], datetime.fromisoformat(expires) if expires else None)

    def close(self) -> None:
        self.records.client.close()
        self.celery.close()


def validate_submission(
    node: dict[str, Any] | str | bytes,
    job_id: str | None,
    settings: Settings | None = None,
    *,
    context: Mapping[str, Any] | str | bytes | None = None,
) -> tuple[ImageGenerationNode, str | None]:
    """The node and the job id checked together: one NodeValidationError lists every problem."""
    node_problems: list[Problem] = []
    id_problems: list[Problem] = []
    parsed: ImageGenerationNode | None = None
    try:
        parsed = validate_node(node, settings, context=context)
    except NodeValidationError as exc:
        node_problems = exc.problems
    if job_id is not None:
        try:
            job_id = check_new_job_id(job_id)
        except NodeValidationError as exc:
            id_problems = exc.problems
    if id_problems:
        subject = "job id and image_generation node" if node_problems else "job id"
        raise NodeValidationError(id_problems + node_problems, subject=subject)
    if node_problems or parsed is None:
        raise NodeValidationError(node_problems)
    return parsed, job_id


MAX_URI_CHARS = 2048  # SignRequest.uri's bound


def check_image_uri(uri: Any) -> str:
    """An image's uri as ``sign`` takes it, or NodeValidationError naming ``uri``."""
    if not isinstance(uri, str):
        raise NodeValidationError(
            [Problem("uri", excerpt(uri), "must be the image's uri from the result, a string")], subject="sign request"
        )
    if not uri or len(uri) > MAX_URI_CHARS or not uri.isprintable():
        rule = f"must be the image's uri from the result: 1 to {MAX_URI_CHARS} printable characters"
        raise NodeValidationError([Problem("uri", excerpt(uri), rule)], subject="sign request")
    if "?" in uri or "#" in uri:
        # A signed URL given by mistake: its token would travel in the task's arguments (Flower).
        rule = "must be the image's uri from the result (its 'uri', not its signed 'url'): no query or fragment"
        raise NodeValidationError(
            [Problem("uri", excerpt(uri.partition("?")[0].partition("#")[0]), rule)], subject="sign request"
        )
    return uri


UPSTREAM_PROMPT = "(the upstream task's output)"  # stands in for the prompt while the node is checked


def canceled_link_result(status: JobStatus) -> JobResult:
    """The document of a chain link's run canceled while it waited for its upstream task: as the
    worker's for a job canceled before it started, one ``canceled`` error, no variation run."""
    message = (
        "the job was canceled before it started, while it waited for its upstream task's output; no image was made"
    )
    return JobResult.unstarted(
        job_id=status.job_id,
        name=status.name,
        model=status.model,
        size="",
        submitted_at=datetime.fromisoformat(status.submitted_at) if status.submitted_at else utcnow(),
        error=ErrorRecord(index=0, kind="canceled", message=message, attempts=0, duration_ms=0),
    )


def _with_placeholder_prompt(node: dict[str, Any] | str | bytes, settings: Settings) -> dict[str, Any]:
    """The node with a stand-in prompt: a chain link's prompt arrives later, from the upstream task."""
    data = load_document(node, settings.max_node_bytes)
    inputs = data.get("inputs")
    if not isinstance(inputs, dict):
        return data  # validation reports it
    return {**data, "inputs": {**inputs, "user_query": UPSTREAM_PROMPT}}


@dataclass(frozen=True)
class SignedUrl:
    uri: str
    url: str
    url_expires_at: datetime | None  # None: a public (CDN) or file URL that does not expire


class SignError(ImageGenError, RuntimeError):
    """The worker could not sign the URI; ``kind``: not_found (no image this service stored has it),
    storage, permanent or transient."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind
