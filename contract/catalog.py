"""The model catalog: which node model names exist and what each one can make.

Kept as data (``catalog.json``) because Google renames and retires image models
every few months; operators replace or extend it with ``IMAGEGEN_MODEL_CATALOG_FILE``
so a retired model id is fixed by configuration, not by a release.
"""

from __future__ import annotations

import difflib
import json
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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

    @cached_property  # read for every image; an entry is frozen and lives with its catalog
    def largest_pixels(self) -> int:
        """Width x height of the model's largest size: what bounds the images it may return."""
        return max(width * height for width, height in map(parse_size, self.sizes))

    def price_for(self, size: str) -> float | None:
        """Price of one image at ``size``, or None when the catalog has none."""
        return self.price_usd_per_image.get(self.sizes[size].tier)


class TextModelEntry(BaseModel):
    """One text model the prompt step may use (``prompt_enhancement``): its provider, API id and prices."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    provider: str
    model_id: str
    description: str = ""
    # Per million tokens; None: not published, so the step's cost is reported as unknown.
    price_usd_per_million_input_tokens: float | None = Field(None, ge=0)
    price_usd_per_million_output_tokens: float | None = Field(None, ge=0)

    def cost_for(self, input_tokens: int, output_tokens: int) -> float | None:
        """What a call cost (thinking tokens bill as output), or None when the catalog has no price."""
        if self.price_usd_per_million_input_tokens is None or self.price_usd_per_million_output_tokens is None:
            return None
        cost = input_tokens * self.price_usd_per_million_input_tokens
        cost += output_tokens * self.price_usd_per_million_output_tokens
        return round(cost / 1_000_000, 8)


class ModelCatalog(BaseModel):
    models: dict[str, ModelEntry]
    text_models: dict[str, TextModelEntry] = Field(default_factory=dict)
    # Image provider -> the text model name its jobs' prompt step uses when the node names none.
    default_text_models: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _defaults_exist(self) -> ModelCatalog:
        unknown = {p: name for p, name in self.default_text_models.items() if name not in self.text_models}
        if unknown:
            raise ValueError(f"default_text_models names text models the catalog lacks: {unknown}")
        return self

    def get(self, name: str) -> ModelEntry | None:
        return self.models.get(name)

    def names(self) -> list[str]:
        return sorted(self.models)

    def get_text(self, name: str) -> TextModelEntry | None:
        return self.text_models.get(name)

    def text_names(self) -> list[str]:
        return sorted(self.text_models)

    def text_model_for(self, image_model: str, requested: str | None) -> str | None:
        """The text model name a job's prompt step uses: the node's, else its image provider's default."""
        if requested is not None:
            return requested
        entry = self.get(image_model)
        return self.default_text_models.get(entry.provider) if entry is not None else None


def parse_size(size: str) -> tuple[int, int]:
    """``"1024x1024"`` -> ``(1024, 1024)``; ValueError for anything else."""
    width, sep, height = size.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ValueError(f"size {size!r} is not WIDTHxHEIGHT")
    return int(width), int(height)


_SECTIONS = ("models", "text_models", "default_text_models")


class CatalogError(ValueError):
    """A catalog file that cannot be used: named with its path, found at start-up (Settings)."""


def _sections(path: Path) -> dict[str, dict[str, Any]]:
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise CatalogError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    except ValueError as exc:
        raise CatalogError(f"{path}: is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise CatalogError(f"{path}: must be a JSON object with {', '.join(_SECTIONS)}")
    # Other top-level keys ("_comment", "$schema", "version") are ignored; a misspelt section is not.
    misspelt = sorted(k for k in set(raw) - set(_SECTIONS) if difflib.get_close_matches(str(k), _SECTIONS, 1, 0.8))
    if misspelt:
        raise CatalogError(f"{path}: unknown section(s) {', '.join(misspelt)}; allowed: {', '.join(_SECTIONS)}")
    sections = {name: raw.get(name, {}) for name in _SECTIONS}
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise CatalogError(f"{path}: {name} must be an object of entries by name")
    return sections


def _merged_entry(known: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``known`` field by field, and price tables price by price: {"4K": 0.3}
    changes one price, not the table."""
    merged = {**known, **update}
    for field, value in update.items():
        if field.startswith("price") and isinstance(value, dict) and isinstance(known.get(field), dict):
            merged[field] = {**known[field], **value}
    return merged


@lru_cache(maxsize=8)
def load_catalog(override_file: str | None = None, replace: bool = False) -> ModelCatalog:
    """The built-in catalog, extended (or replaced) by an operator's file, section by section
    (image models, text models, default text models). An entry the built-in catalog has is
    updated field by field: ``{"model_id": "..."}`` alone fixes a retired model id."""
    base = {name: {} for name in _SECTIONS} if (override_file and replace) else _sections(BUILTIN_CATALOG)
    merged: dict[str, dict[str, Any]] = {name: dict(section) for name, section in base.items()}
    if override_file:
        for name, section in _sections(Path(override_file)).items():
            for key, entry in section.items():
                known = merged[name].get(key)
                both_entries = isinstance(known, dict) and isinstance(entry, dict)
                merged[name][key] = _merged_entry(known, entry) if both_entries else entry  # type: ignore[arg-type]
    try:
        return ModelCatalog.model_validate(merged)
    except ValidationError as exc:
        where = override_file or BUILTIN_CATALOG
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc'])}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)[:5]
        )
        raise CatalogError(f"{where}: {problems}") from None
