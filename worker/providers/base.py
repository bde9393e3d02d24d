"""The small interfaces providers implement: images (every provider) and text (the prompt step)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from contract.catalog import ModelEntry, TextModelEntry
from contract.result import GenerationMetadata, Usage


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    model_name: str
    model: ModelEntry
    size: str  # "WIDTHxHEIGHT", a key of model.sizes
    index: int  # variation index, 0-based
    seed: int | None
    attempt: int  # 1 for the first try


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    metadata: GenerationMetadata
    mime_type_label: str | None = None  # what the provider claimed; the bytes decide


class ImageProvider(Protocol):
    """Makes one image per call or raises a ``worker.errors`` outcome."""

    name: str

    def generate(self, request: GenerationRequest) -> GeneratedImage: ...


@dataclass(frozen=True)
class TextRequest:
    """One call of the prompt step: rewrite ``prompt`` into ``count`` image prompts."""

    prompt: str  # the node's prompt, as the author (or the upstream LLM) wrote it
    instructions: str  # the system instruction: the step's own task plus the node's style guide
    model_name: str
    model: TextModelEntry
    count: int | None  # None: one prompt as plain text; N: exactly N prompts as structured JSON
    attempt: int  # 1 for the first try


@dataclass(frozen=True)
class GeneratedText:
    prompts: list[str]  # as the model wrote them (the step cleans and checks them)
    usage: Usage | None = None
    model_version: str | None = None
    response_id: str | None = None


@runtime_checkable
class TextProvider(Protocol):
    """Writes image prompts with a text model, or raises a ``worker.errors`` outcome."""

    name: str

    def write_prompts(self, request: TextRequest) -> GeneratedText: ...
