"""The model catalog: which node model names exist and what each one can make.

Kept as data (``catalog.json``) because Google renames and retires image models
every few months; operators replace or extend it with ``IMAGEGEN_MODEL_CATALOG_FILE``
so a retired model id is fixed by configuration, not by a release.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

BUILTIN_CATALOG = Path(__file__).with_name("catalog.json")

SizeTier = Literal["512", "1K", "2K", "4K"]


class SizeOption(BaseModel):
    """One pixel size a model makes, in the provider's own terms."""

    model_config = ConfigDict(frozen=True)

    aspect_ratio: str
    tier: SizeTier


class ModelEntry(BaseModel):
    """One node model name: its provider, API model id, sizes and prices."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    provider: str
    model_id: str
    description: str = ""
    sizes: dict[str, SizeOption]
    price_usd_per_image: dict[SizeTier, float] = Field(default_factory=dict)

    @field_validator("sizes")
    @classmethod
    def _sizes_are_pixels(cls, sizes: dict[str, SizeOption]) -> dict[str, SizeOption]:
        for size in sizes:
            parse_size(size)
        if not sizes:
            raise ValueError("a model needs at least one size")
        return sizes

    def price_for(self, size: str) -> float | None:
        """Price of one image at ``size``, or None when the catalog has none."""
        return self.price_usd_per_image.get(self.sizes[size].tier)


class ModelCatalog(BaseModel):
    models: dict[str, ModelEntry]

    def get(self, name: str) -> ModelEntry | None:
        return self.models.get(name)

    def names(self) -> list[str]:
        return sorted(self.models)


def parse_size(size: str) -> tuple[int, int]:
    """``"1024x1024"`` -> ``(1024, 1024)``; ValueError for anything else."""
    width, sep, height = size.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ValueError(f"size {size!r} is not WIDTHxHEIGHT")
    return int(width), int(height)


def _read(path: Path) -> dict[str, ModelEntry]:
    raw = json.loads(path.read_text())
    return ModelCatalog.model_validate({"models": raw["models"]}).models


@lru_cache(maxsize=8)
def load_catalog(override_file: str | None = None, replace: bool = False) -> ModelCatalog:
    """The built-in catalog, extended (or replaced) by an operator's file."""
    models = {} if (override_file and replace) else _read(BUILTIN_CATALOG)
    if override_file:
        models.update(_read(Path(override_file)))
    return ModelCatalog(models=models)
