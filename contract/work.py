"""The typed payloads the tasks pass each other (Celery ``pydantic=True``).

The producer sends a ``JobOrder`` (the node without its description); the job
task parses it once and hands each variation a small ``VariationWork`` (the
prompt, the model, the size, the seed and where to store) and the chord body a
``JobSummary``. No task receives more than it needs, so a node's size is never
multiplied by its variations in Redis, and no payload holds a secret: storage
targets carry credential *references*.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from contract.clouds import Target
from contract.job_ids import check_job_id
from contract.result import PromptStepRecord
from contract.tenancy import TENANT_NAME
from contract.webhooks import WebhookEvent


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


# A message may reach the broker without the producer: every field that becomes part of a key, a
# log line or a provider request is bounded here, where the task's payload is parsed.
JobId = Annotated[str, AfterValidator(check_job_id)]  # Redis keys, object keys, log lines
MAX_RUN = 999_999  # an image's object key names its run in at most 6 digits (worker/storage/keys.py)
MAX_VARIATION_INDEX = 999  # ... and its variation in at most 3
Run = Annotated[int, Field(ge=1, le=MAX_RUN)]
SEED_MAX = 2**31 - 1  # the providers' seed is a signed 32-bit integer (contract/node.py)
# When a task's first attempt began (epoch seconds): never later than now, so that the time
# budget of its retries runs from a message's first attempt whatever the message says.
PastTime = Annotated[float, Field(ge=0, allow_inf_nan=False), AfterValidator(lambda at: min(at, time.time()))]


class JobOrder(_Payload):
    """Producer -> ``imagegen.run_job``."""

    job_id: str  # checked by the job task, which ends a job whose id it can name (run_job.py)
    run: Run = 1
    node: dict[str, Any]  # name, type and inputs, as validated by the producer
    submitted_at: datetime


class RetryState(_Payload):
    """Carried from one attempt of a variation to the next."""

    first_attempt_at: PastTime | None = None
    throttled: int = Field(0, ge=0)  # retries spent waiting for the shared provider quota (not failures)
    slot_booked: bool = False


class VariationWork(_Payload):
    """``imagegen.run_job`` -> ``imagegen.generate_variation`` (one per image)."""

    job_id: JobId
    run: Run
    index: int = Field(ge=0, le=MAX_VARIATION_INDEX)
    prompt: str = Field(min_length=1)  # its length and characters: the variation checks them by the settings
    prompt_from_step: bool = False  # the prompt step wrote it: the image record names it
    model: str  # the node's catalog name; the worker looks the entry up (a catalog fix applies)
    size: str
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    target: Target | None = None  # None: the platform storage
    retry: RetryState = RetryState()


class JobSummary(_Payload):
    """``imagegen.run_job`` -> ``imagegen.finalize`` (the chord body)."""

    job_id: JobId
    run: Run
    name: str
    model: str
    size: str
    variations: int = Field(ge=1, le=MAX_VARIATION_INDEX + 1)
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

    job_id: JobId
    run: Run
    event: WebhookEvent
    event_id: str = Field(pattern=r"^[0-9]{1,20}-[0-9]{1,20}$")
    first_attempt_at: PastTime | None = None

    @model_validator(mode="before")
    @classmethod
    def _without_the_webhook(cls, data: Any) -> Any:
        # Deliveries enqueued by an earlier version carried the webhook: during a rolling
        # upgrade they are still delivered, to the job record's webhook like every other.
        if isinstance(data, dict) and "webhook" in data:
            return {key: value for key, value in data.items() if key != "webhook"}
        return data
