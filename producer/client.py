"""The producer's Python API, for the workflow engine.

    client = ImageGenClient()
    handle = client.submit(node_json)            # validated, then enqueued
    result = handle.wait(timeout=120)            # the result document

Submitting twice with the same ``job_id`` enqueues once (arq-style).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult

from contract.jobs import JobRecords, JobStatus, utcnow
from contract.node import ImageGenerationNode, validate_node
from contract.queue import RUN_JOB, SIGN_URL, celery_config
from contract.result import JobResult
from contract.settings import Settings, get_settings


class JobNotFound(LookupError):
    pass


class JobTimeout(TimeoutError):
    pass


class JobCrashed(RuntimeError):
    """The job task itself raised (a worker bug or lost infrastructure), so
    there is no result document; variation failures never end up here."""


@dataclass(frozen=True)
class JobHandle:
    job_id: str
    client: ImageGenClient
    created: bool  # False when this id was submitted before (nothing enqueued)

    def status(self) -> JobStatus:
        return self.client.status(self.job_id)

    def wait(self, timeout: float | None = None) -> JobResult:
        return self.client.wait(self.job_id, timeout=timeout)


class ImageGenClient:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self.celery = Celery("imagegen-producer")
        self.celery.conf.update(celery_config(self.settings))
        self.records = JobRecords(redis.Redis.from_url(self.settings.redis_url), self.settings.result_ttl_s)

    def validate(self, node: dict[str, Any] | str | bytes) -> ImageGenerationNode:
        """Raise NodeValidationError listing every problem; nothing is sent."""
        return validate_node(node, self.settings)

    def submit(self, node: dict[str, Any] | str | bytes, job_id: str | None = None) -> JobHandle:
        parsed = self.validate(node)
        job_id = job_id or str(uuid.uuid4())
        submitted_at = utcnow()
        created = self.records.claim(
            job_id, model=parsed.inputs.model, variations=parsed.inputs.variations, submitted_at=submitted_at
        )
        if created:
            try:
                self.celery.send_task(
                    RUN_JOB, args=(parsed.to_task_payload(), submitted_at.isoformat()), task_id=job_id
                )
            except Exception:
                self.records.forget(job_id)  # let the caller retry with the same id
                raise
        return JobHandle(job_id, self, created)

    def status(self, job_id: str) -> JobStatus:
        status = self.records.read(job_id)
        if status is None:
            raise JobNotFound(f"no job {job_id!r} (never submitted, or its record expired)")
        return status

    def result(self, job_id: str) -> JobResult | None:
        """The result document if the job has finished, else None."""
        outcome = AsyncResult(job_id, app=self.celery)
        if not outcome.successful():
            return None
        return JobResult.model_validate(outcome.result)

    def wait(self, job_id: str, timeout: float | None = None) -> JobResult:
        self.status(job_id)  # fail fast on an unknown id instead of waiting forever
        try:
            document = AsyncResult(job_id, app=self.celery).get(timeout=timeout, propagate=True)
        except CeleryTimeout:
            raise JobTimeout(f"job {job_id} did not finish within {timeout} s") from None
        except Exception as exc:  # re-raised from the worker's stored FAILURE
            raise JobCrashed(f"job {job_id} crashed in the worker: {type(exc).__name__}: {exc}") from None
        return JobResult.model_validate(document)

    def sign(self, uri: str, node: dict[str, Any] | str | bytes | None = None, timeout: float = 30) -> SignedUrl:
        """A fresh URL for a stored image (``uri`` from the result), signed by a worker: the
        credentials stay there. Give the job's node when the image is in the node's own cloud."""
        storage = storage_fields(self.validate(node)) if node is not None else {}
        outcome = self.celery.send_task(SIGN_URL, args=(uri, storage))
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


class SignError(RuntimeError):
    """The worker could not sign the URI; ``kind`` is storage, permanent or transient."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def storage_fields(node: ImageGenerationNode) -> dict[str, Any]:
    """The node fields that locate its storage (credential fields are references only)."""
    inputs = node.inputs.model_dump(mode="json", exclude_none=True)
    return {k: v for k, v in inputs.items() if k in ("use_cloud", "cloud_provider") or k.startswith(_STORAGE_PREFIXES)}


_STORAGE_PREFIXES = ("aws_", "azure_", "gcp_")
