"""The model catalog is data: operators fix a retired model id by configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contract.catalog import CatalogError, load_catalog, parse_size
from contract.node import validate_node
from contract.settings import Settings


def test_builtin_catalog_matches_the_reference() -> None:
    catalog = load_catalog()
    assert catalog.models["gemini_2_5_image"].model_id == "gemini-2.5-flash-image"
    assert catalog.models["gemini_3_image"].model_id == "gemini-3-pro-image"
    g3 = catalog.models["gemini_3_image"]
    assert g3.sizes["1024x1024"].aspect_ratio == "1:1" and g3.sizes["1024x1024"].tier == "1K"
    assert g3.sizes["5504x3072"].aspect_ratio == "16:9" and g3.sizes["5504x3072"].tier == "4K"
    assert catalog.models["gemini_2_5_image"].sizes["1344x768"].aspect_ratio == "16:9"
    assert g3.price_for("4096x4096") == 0.24 and g3.price_for("2048x2048") == 0.134
    assert catalog.models["gemini_nano_banana_2_1"].price_for("1024x1024") is None  # unpriced, not free


def test_every_size_key_matches_its_aspect_ratio_roughly() -> None:
    for entry in load_catalog().models.values():
        for size, option in entry.sizes.items():
            width, height = parse_size(size)
            num, den = (int(x) for x in option.aspect_ratio.split(":"))
            assert abs(width / height - num / den) < 0.05, (size, option)


def _write(tmp_path: Path, models: dict[str, Any]) -> str:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"models": models}))
    return str(path)


def test_override_file_replaces_a_retired_model_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = load_catalog().models["gemini_2_5_image"].model_dump()
    entry["model_id"] = "gemini-2.5-flash-image-002"
    monkeypatch.setenv("IMAGEGEN_MODEL_CATALOG_FILE", _write(tmp_path, {"gemini_2_5_image": entry}))
    settings = Settings()
    catalog = load_catalog(settings.model_catalog_file, settings.model_catalog_replace)
    assert catalog.models["gemini_2_5_image"].model_id == "gemini-2.5-flash-image-002"
    assert "gemini_3_image" in catalog.models  # extended, not replaced


def test_replace_mode_limits_models_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed_node: dict[str, Any]
) -> None:
    entry = {"provider": "offline", "model_id": "x", "sizes": {"64x64": {"aspect_ratio": "1:1", "tier": "1K"}}}
    monkeypatch.setenv("IMAGEGEN_MODEL_CATALOG_FILE", _write(tmp_path, {"house_model": entry}))
    monkeypatch.setenv("IMAGEGEN_MODEL_CATALOG_REPLACE", "true")
    settings = Settings()
    assert load_catalog(settings.model_catalog_file, settings.model_catalog_replace).names() == ["house_model"]
    seed_node["inputs"].update(model="house_model", size="64x64")
    assert validate_node(seed_node, settings).inputs.model == "house_model"


def test_a_broken_catalog_file_is_refused(tmp_path: Path) -> None:
    bad = {"m": {"provider": "offline", "model_id": "x", "sizes": {"huge": {"aspect_ratio": "1:1", "tier": "1K"}}}}
    with pytest.raises(CatalogError, match=r"models\.m\.sizes: size .huge. is not WIDTHxHEIGHT"):
        load_catalog(_write(tmp_path, bad))
