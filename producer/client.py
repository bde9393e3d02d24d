"""The producer's Python API, for the workflow engine.

    client = ImageGenClient()
    handle = client.submit(node_json)            # validated, then enqueued
    result = handle.wait(timeout=120)            # the result document

Submitting twice with the same ``job_id`` enqueues once (arq-style).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult

from contract.jobs import JobRecords, JobStatus, utcnow
from contract.node import ImageGenerationNode, validate_node
from contract.queue import RUN_JOB, celery_config
from contract.result import JobResult
from contract.settings import Settings, get_settings


class JobNotFound(LookupError):
    pass


class JobTimeout(TimeoutError):
    pass


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
        return JobResult.model_validate(document)

    def close(self) -> None:
        self.records.client.close()
        self.celery.close()
