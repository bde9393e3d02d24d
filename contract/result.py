"""The result document a job resolves to, and its published JSON Schema.

Only references and metadata: image bytes never enter the result backend.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from contract.errors import clipped

# "canceled": a cancel was requested before the run finished (ImageGenClient.cancel); the images
# made until then are kept, the variations that had not started have an error of kind "canceled".
JobStatus = Literal["succeeded", "partial", "failed", "canceled"]
ErrorKind = Literal["transient_exhausted", "permanent", "blocked", "storage", "timeout", "lost", "canceled"]

# Text that comes from a provider or an SDK, bounded wherever it ends up.
Message = Annotated[str, AfterValidator(clipped)]
ProviderText = Annotated[str, AfterValidator(lambda text: clipped(text, 200))]

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "docs" / "result.schema.json"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Usage(_Record):
    """Token counts as the provider reports them (absent when it reports none)."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    thoughts_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{name: getattr(self, name) + getattr(other, name) for name in Usage.model_fields})


class SizeMismatch(_Record):
    requested: str
    returned: str


class GenerationMetadata(_Record):
    """What the provider said about one image, beyond the pixels."""

    provider: str
    model_version: ProviderText | None = None
    response_id: ProviderText | None = None
    text: str | None = Field(None, description="The model's own words, trimmed")
    usage: Usage | None = None
    size_mismatch: SizeMismatch | None = None


class ImageRecord(_Record):
    index: int
    url: str = Field(description="What the next node fetches: signed, public or file URL")
    url_expires_at: datetime | None = Field(None, description="When a signed url stops working")
    uri: str = Field(description="Durable object address (file://, s3://, https blob URL, gs://)")
    mime_type: str = Field(description="From the bytes' magic number, not the provider's label")
    width: int
    height: int
    bytes: int
    sha256: str
    seed: int | None = None
    prompt: str | None = Field(
        None, description="The prompt the prompt step wrote for this image; null: made from original_prompt"
    )
    attempts: int
    duration_ms: int
    estimated_cost_usd: float | None = None
    metadata: GenerationMetadata


class ErrorRecord(_Record):
    index: int
    kind: ErrorKind
    message: Message = Field(description="Why no image; never contains secrets")
    reason: str | None = Field(None, description="Provider reason code, e.g. IMAGE_SAFETY")
    attempts: int
    duration_ms: int
    estimated_cost_usd: float | None = Field(
        None,
        description="An image the provider made and billed that could not be stored (its upload failed): "
        "its price from the catalog; null when no image was billed or its model is unpriced",
    )
    metadata: GenerationMetadata | None = Field(
        None, description="What the provider said about that billed image (usage, response id); null when none"
    )


class PromptStepRecord(_Record):
    """The text step before the images (node input ``prompt_enhancement``)."""

    mode: Literal["enhance", "diversify"]
    text_model: str = Field(description="The catalog's text model name")
    model_id: str | None = Field(None, description="The provider's model id")
    provider: str | None = None
    attempts: int = Field(description="Calls made, retries included")
    response_id: ProviderText | None = None
    usage: Usage | None = None
    estimated_cost_usd: float | None = Field(None, description="From the catalog's token prices; null when unpriced")


class JobResult(_Record):
    job_id: str
    name: str
    status: JobStatus
    model: str = Field(description="The node's model name")
    model_id: str = Field(description="The provider's model id from the catalog")
    provider: str
    size: str
    variations: int = Field(description="Variations run: the node's count; 0 when the run never started")
    images: list[ImageRecord]
    errors: list[ErrorRecord]
    submitted_at: datetime
    started_at: datetime
    finished_at: datetime
    duration_ms: int = Field(description="submitted_at to finished_at")
    usage: Usage | None = Field(
        None, description="Images' tokens (stored or billed and not stored) plus the prompt step's"
    )
    estimated_cost_usd: float | None = Field(
        None,
        description="Sum over images (stored, or billed and not stored) and the prompt step from the catalog; "
        "null when unpriced",
    )
    original_prompt: str | None = Field(
        None, description="The job's prompt: user_query after templates, or the upstream task's text"
    )
    prompt_step: PromptStepRecord | None = None

    @classmethod
    def unstarted(
        cls, *, job_id: str, name: str, model: str, size: str, submitted_at: datetime, error: ErrorRecord
    ) -> JobResult:
        """The document of a run that never started (refused by the worker, or canceled while a
        chain link waited for its upstream): one error, no variation run, ended now."""
        now = datetime.now(UTC)
        return cls(
            job_id=job_id,
            name=name,
            status="canceled" if error.kind == "canceled" else "failed",
            model=model,
            model_id="",
            provider="",
            size=size,
            variations=0,
            images=[],
            errors=[error],
            submitted_at=submitted_at,
            started_at=now,
            finished_at=now,
            duration_ms=max(0, int((now - submitted_at).total_seconds() * 1000)),
        )


def result_json_schema() -> dict[str, object]:
    schema = JobResult.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://imagegen.local/schemas/result.schema.json"
    return schema


def write_result_schema(path: Path = SCHEMA_FILE) -> None:
    path.write_text(json.dumps(result_json_schema(), indent=2) + "\n")
