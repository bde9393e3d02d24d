"""The producer's Python API, for the workflow engine.

    client = ImageGenClient()
    handle = client.submit(node_json)            # validated, then enqueued
    result = handle.wait(timeout=120)            # the result document

Submitting twice with the same ``job_id`` enqueues once (arq-style).
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from kombu.exceptions import OperationalError as KombuOperationalError

from contract.clouds import node_target
from contract.errors import ImageGenError
from contract.job_ids import check_job_id
from contract.jobs import JobConflict, JobRecords, JobStatus, fingerprint, utcnow
from contract.lost_jobs import end_if_lost
from contract.node import ImageGenerationNode, validate_node
from contract.queue import RUN_JOB, SIGN_URL, celery_config, job_task_id
from contract.redis_client import redis_client
from contract.result import JobResult
from contract.settings import Settings, get_settings
from contract.work import JobOrder, SignRequest

__all__ = [
    "ImageGenClient",
    "JobConflict",
    "JobCrashed",
    "JobHandle",
    "JobNotFound",
    "JobTimeout",
    "QueueUnavailable",
    "SignError",
]


class JobNotFound(ImageGenError, LookupError):
    pass


class QueueUnavailable(ImageGenError, ConnectionError):
    """Redis or the broker refused, dropped, timed out or answered with an error (e.g. out of memory)."""


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
            raise QueueUnavailable(f"{type(exc).__name__}: {str(exc)[:200]}") from None

    return call  # type: ignore[return-value]


def _release(outcome: AsyncResult) -> None:
    """Unsubscribe now, not in AsyncResult.__del__ at interpreter exit (a stray traceback then)."""
    with contextlib.suppress(Exception):  # the connection is already gone: nothing to unsubscribe from
        outcome.backend.remove_pending_result(outcome)


class JobTimeout(ImageGenError, TimeoutError):
    pass


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
        self.records = JobRecords(redis_client(self.settings.redis_url), self.settings.result_ttl_s)

    def validate(self, node: dict[str, Any] | str | bytes) -> ImageGenerationNode:
        """Raise NodeValidationError listing every problem; nothing is sent."""
        return validate_node(node, self.settings)

    @_reaching_the_queue
    def submit(
        self, node: dict[str, Any] | str | bytes, job_id: str | None = None, *, rerun: bool = False
    ) -> JobHandle:
        """Validate and enqueue. The same ``job_id`` with the same node enqueues nothing (idempotent);
        with a different node it raises ``JobConflict``. ``rerun=True`` runs a failed or partial job
        again under its id; its previous result stays readable until the new one replaces it."""
        parsed = self.validate(node)
        job_id = str(uuid.uuid4()) if job_id is None else check_job_id(job_id)
        payload = parsed.to_task_payload()
        submitted_at = utcnow()
        claim = self.records.claim(
            job_id,
            node_fingerprint=fingerprint(payload),
            model=parsed.inputs.model,
            variations=parsed.inputs.variations,
            submitted_at=submitted_at,
            rerun=rerun,
            name=parsed.name,
        )
        if claim.outcome == "conflict":
            raise JobConflict(job_id, "was submitted before with a different node; use a new job id")
        if claim.outcome == "not_rerunnable":
            raise JobConflict(job_id, f"is {claim.previous_state}; only a failed or partial job can be rerun")
        if claim.enqueue:
            order = JobOrder(job_id=job_id, run=claim.run, node=payload, submitted_at=submitted_at)
            try:
                self.celery.send_task(
                    RUN_JOB, args=(order.model_dump(mode="json"),), task_id=job_task_id(job_id, claim.run)
                )
            except Exception:
                if claim.outcome == "created":
                    self.records.forget(job_id)  # let the caller retry with the same id
                raise
        return JobHandle(job_id, self, claim.enqueue, claim.run)

    @_reaching_the_queue
    def status(self, job_id: str) -> JobStatus:
        status = self.records.read(check_job_id(job_id))
        if status is None:
            raise JobNotFound(f"no job {job_id!r} (never submitted, or its record expired)")
        return status

    @_reaching_the_queue
    def result(self, job_id: str) -> JobResult | None:
        """The job's current result document (during a rerun: the previous run's), else None."""
        status = self.status(job_id)
        if status.result_run is None:
            return None
        outcome = AsyncResult(job_task_id(status.job_id, status.result_run), app=self.celery)
        if not outcome.successful():
            return None
        return JobResult.model_validate(outcome.result)

    @_reaching_the_queue
    def wait(self, job_id: str, timeout: float | None = None) -> JobResult:
        """The result document of the job's current run, once it has finished. While waiting the
        client also checks that the job is not lost (no progress within IMAGEGEN_JOB_DEADLINE_S)."""
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
                        document = self.result(status.job_id)
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
    def sign(self, uri: str, node: dict[str, Any] | str | bytes | None = None, timeout: float = 30) -> SignedUrl:
        """A fresh URL for a stored image (``uri`` from the result), signed by a worker: the
        credentials stay there. Give the job's node when the image is in the node's own cloud;
        only images this service stored under that node's target (or the platform's) are signed."""
        target = None
        if node is not None:
            parsed = self.validate(node)
            if parsed.inputs.use_cloud:
                target = node_target(parsed.inputs.model_dump(), self.settings.target_policy)
        request = SignRequest(uri=uri, target=target)
        outcome = self.celery.send_task(SIGN_URL, args=(request.model_dump(mode="json"),))
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


@dataclass(frozen=True)
class SignedUrl:
    uri: str
    url: str
    url_expires_at: datetime | None  # None: a public (CDN) or file URL that does not expire


class SignError(ImageGenError, RuntimeError):
    """The worker could not sign the URI; ``kind`` is storage, permanent or transient."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind
