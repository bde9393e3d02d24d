"""The typed payloads the tasks pass each other (Celery ``pydantic=True``).

The producer sends a ``JobOrder`` (the node without its description); the job
task parses it once and hands each variation a small ``VariationWork`` (the
prompt, the model, the size, the seed and where to store) and the chord body a
``JobSummary``. No task receives more than it needs, so a node's size is never
multiplied by its variations in Redis, and no payload holds a secret: storage
targets carry credential *references*.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.clouds import Target
from contract.result import PromptStepRecord
from contract.tenancy import TENANT_NAME
from contract.webhooks import WebhookEvent


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class JobOrder(_Payload):
    """Producer -> ``imagegen.run_job``."""

    job_id: str
    run: int = Field(1, ge=1)
    node: dict[str, Any]  # name, type and inputs, as validated by the producer
    submitted_at: datetime


class RetryState(_Payload):
    """Carried from one attempt of a variation to the next."""

    first_attempt_at: float | None = None
    throttled: int = 0  # retries spent waiting for the shared provider quota (not failures)
    slot_booked: bool = False


class VariationWork(_Payload):
    """``imagegen.run_job`` -> ``imagegen.generate_variation`` (one per image)."""

    job_id: str
    run: int
    index: int
    prompt: str
    prompt_from_step: bool = False  # the prompt step wrote it: the image record names it
    model: str  # the node's catalog name; the worker looks the entry up (a catalog fix applies)
    size: str
    seed: int | None = None
    target: Target | None = None  # None: the platform storage
    retry: RetryState = RetryState()


class JobSummary(_Payload):
    """``imagegen.run_job`` -> ``imagegen.finalize`` (the chord body)."""

    job_id: str
    run: int
    name: str
    model: str
    size: str
    variations: int
    submitted_at: datetime
    started_at: datetime
    original_prompt: str | None = None  # the job's prompt (after templates / from the upstream task)
    prompt_step: PromptStepRecord | None = None


class SignRequest(_Payload):
    """Producer -> ``imagegen.sign_url``: a stored image's uri and where it may be (None: the platform)."""

    uri: str = Field(max_length=2048)
    target: Target | None = None
    # Whose image (the HTTP API's caller): the target's credentials must be ones this tenant may
    # name, and the image must be one of its jobs'. None: the platform's own client.
    tenant: str | None = Field(None, pattern=rf"^{TENANT_NAME.pattern}$")


class WebhookDelivery(_Payload):
    """``contract.events.announce`` -> ``imagegen.deliver_webhook``: which event of which job.
    The worker reads the event from the job's stream by id (no result document in the broker)
    and the webhook from the job's record: its URL may carry a token in the path or query, and
    task arguments are shown in Flower and kept in task events."""

    job_id: str
    run: int = Field(ge=1)
    event: WebhookEvent
    event_id: str = Field(pattern=r"^[0-9]{1,20}-[0-9]{1,20}$")
    first_attempt_at: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _without_the_webhook(cls, data: Any) -> Any:
        # Deliveries enqueued by an earlier version carried the webhook: during a rolling
        # upgrade they are still delivered, to the job record's webhook like every other.
        if isinstance(data, dict) and "webhook" in data:
            return {key: value for key, value in data.items() if key != "webhook"}
        return data
