"""The API's request and response documents (pydantic: they are the OpenAPI schema too).

The node itself (contract/node.py ``ImageGenerationNode``), the result document
(contract/result.py ``JobResult``), the webhook (contract/webhooks.py ``Webhook``)
and the job states (contract/jobs.py ``JobState``) are the contract's own models,
not copies, so the HTTP API, the Python client and the CLI describe one thing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.catalog import ModelCatalog, SizeTier
from contract.clouds import SPECS
from contract.jobs import JobState
from contract.node import ImageGenerationNode
from contract.providers import provider_configured
from contract.result import JobResult
from contract.settings import Settings
from contract.webhooks import Webhook


class SubmitEnvelope(BaseModel):
    """A submit body that carries more than the node. A body is this envelope when its top level
    has a ``node`` key and no ``type`` key (every node has ``type``); otherwise it is the bare node."""

    model_config = ConfigDict(extra="forbid")

    node: ImageGenerationNode = Field(description="The node JSON, exactly what `imagegen submit` accepts")
    job_id: str | None = Field(None, description="Your own job id (the Idempotency-Key header does the same)")
    webhook: Webhook | None = Field(None, description="POST the job's events here, signed (docs/api.md)")
    rerun: bool = Field(False, description="Run a failed or partial job again under job_id")
    context: dict[str, Any] | None = Field(
        None, description="Values for user_query placeholders such as {{ llm_1.text }} (rendered at submit)"
    )


class JobLinks(BaseModel):
    self: str
    events: str
    cancel: str


class JobAccepted(BaseModel):
    """202: enqueued now; 200: this job id was submitted before with the same node (nothing enqueued)."""

    job_id: str
    state: JobState
    created: bool = Field(description="false when the same job was submitted before (not enqueued again)")
    run: int
    links: JobLinks


class JobView(BaseModel):
    job_id: str
    state: JobState
    done: int = Field(description="Variations finished in the current run")
    total: int = Field(description="Variations the node asked for")
    name: str
    model: str
    run: int
    cancel_requested: bool
    submitted_at: str
    started_at: str | None = None
    finished_at: str | None = None
    result: JobResult | None = Field(None, description="The result document once the job has finished")
    links: JobLinks


class CancelView(BaseModel):
    job_id: str
    state: str = Field(description="The job's state when the cancel was asked")
    changed: bool = Field(description="true: the job was asked to stop; false: finished already, or asked before")
    message: str


class ProblemItem(BaseModel):
    field: str
    value: Any = None
    message: str


class ValidationReport(BaseModel):
    """What `imagegen validate` says, and what the node would cost; nothing is enqueued."""

    valid: bool
    problems: list[ProblemItem] = Field(description="Every problem, exactly as the CLI reports them")
    warnings: list[ProblemItem] = Field(
        default_factory=list,
        description="A valid node that would still fail here: its model's provider is not configured on this "
        "deployment's workers",
    )
    model: str | None = None
    size: str | None = None
    variations: int | None = None
    price_usd_per_image: float | None = Field(None, description="The catalog's price at this size; null: unpriced")
    estimated_cost_usd: float | None = Field(None, description="price x variations; null when unpriced or invalid")


class SizeView(BaseModel):
    size: str
    aspect_ratio: str
    tier: SizeTier
    price_usd_per_image: float | None


class ModelView(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    provider: str
    model_id: str
    description: str
    sizes: list[SizeView]
    configured: bool | None = Field(
        description="Whether this deployment's workers can call the provider (a Gemini key or Vertex AI), "
        "as they report it; null: no worker has reported lately and this API cannot tell. The offline "
        "model always is: it draws a labelled test pattern, not an AI image"
    )


class CloudView(BaseModel):
    """One cloud_provider's node fields, so a form can be built from data."""

    fields: list[str]
    bucket_field: str
    credential_field: str = Field(description="Holds a secret reference (vault:, env:, file:), never a secret")


class CatalogView(BaseModel):
    models: list[ModelView]
    clouds: dict[str, CloudView]
    max_variations: int
    max_prompt_chars: int

    @classmethod
    def of(cls, catalog: ModelCatalog, settings: Settings, reported: frozenset[str] | None) -> CatalogView:
        """``reported``: the providers the workers reported (contract/providers.py), None if none did."""
        views = []
        for name in catalog.names():
            entry = catalog.models[name]
            sizes = [
                SizeView(size=size, aspect_ratio=o.aspect_ratio, tier=o.tier, price_usd_per_image=entry.price_for(size))
                for size, o in entry.sizes.items()
            ]
            views.append(
                ModelView(
                    name=name,
                    provider=entry.provider,
                    model_id=entry.model_id,
                    description=entry.description,
                    sizes=sizes,
                    configured=is_configured(entry.provider, settings, reported),
                )
            )
        clouds = {
            name: CloudView(
                fields=list(spec.fields), bucket_field=spec.bucket_field, credential_field=spec.credential_field
            )
            for name, spec in SPECS.items()
        }
        return cls(
            models=views,
            clouds=clouds,
            max_variations=settings.max_variations,
            max_prompt_chars=settings.max_prompt_chars,
        )


MAX_URI_CHARS = 2048


class SignBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri: str = Field(max_length=MAX_URI_CHARS, description="The image's durable uri from the result document")
    node: dict[str, Any] | None = Field(None, description="The job's node, when the image is in the node's own cloud")


class SignedView(BaseModel):
    uri: str
    url: str
    url_expires_at: datetime | None


class Health(BaseModel):
    status: Literal["ok", "ready"]


def is_configured(provider: str, settings: Settings, reported: frozenset[str] | None) -> bool | None:
    """The workers' word when they reported; else this process's own settings, which in
    production hold no model credentials: there a missing one means "cannot tell" (None)."""
    if provider == "offline":
        return True
    if reported is not None:
        return provider in reported
    return True if provider_configured(provider, settings) else None
