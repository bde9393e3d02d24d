"""The one small interface every model provider implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from contract.catalog import ModelEntry
from contract.result import GenerationMetadata


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
