"""The fast ``in`` on google-genai's models (worker/providers/genai_lookup.py): Python's own
answer, the same requests on the wire with and without it, and on the SDK's request path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from google.genai import _common, types

from contract.catalog import load_catalog
from contract.settings import Settings
from devtools.fake_gemini import FakeGemini
from worker.providers import genai_lookup
from worker.providers.base import GenerationRequest, TextRequest
from worker.providers.gemini import GeminiProvider

KEY = "AIzaLOOKUP-canary-3e1d0c9b"


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=KEY) as server:
        yield server


def config() -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        response_modalities=["TEXT", "IMAGE"],
        image_config=types.ImageConfig(aspect_ratio="16:9", image_size="2K"),
        seed=7,
    )


def iterated(model: Any, item: object) -> bool:
    """What Python answers for ``item in model`` when the class has no ``__contains__``."""
    return any(member is item or member == item for member in iter(model))


def test_the_worker_runs_with_it_installed() -> None:
    assert vars(_common.BaseModel).get("__contains__") is genai_lookup._contains
    assert genai_lookup.install()  # again: still ours, nothing changed


@pytest.mark.parametrize(
    "item", ["seed", "image_config", "response_modalities", "", "nope", ("seed", 7), ("seed", 8), 7, None]
)
def test_in_gives_the_answer_python_would(item: object) -> None:
    model = config()
    assert (item in model) is iterated(model, item)


def test_a_field_and_its_value_as_a_pair_are_still_found() -> None:
    model = config()
    assert ("seed", 7) in model
    assert "seed" not in model  # as without it: iteration yields pairs, never names


def test_an_sdk_or_pydantic_contains_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def theirs(self: object, item: object) -> bool:
        return True

    monkeypatch.setattr(_common.BaseModel, "__contains__", theirs)
    assert not genai_lookup.install()
    assert _common.BaseModel.__contains__ is theirs


def test_an_sdk_without_that_base_class_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(_common, "BaseModel")
    assert not genai_lookup.install()  # no error: the worker still starts


def test_the_sdk_asks_it_on_every_request(fake: FakeGemini, monkeypatch: pytest.MonkeyPatch) -> None:
    """It is on the path it was written for (if a later SDK stops asking, the module can go)."""
    asked: list[object] = []

    def counting(self: _common.BaseModel, item: object) -> bool:
        asked.append(item)
        return genai_lookup._contains(self, item)

    monkeypatch.setattr(_common.BaseModel, "__contains__", counting)
    provider = GeminiProvider(Settings(GEMINI_API_KEY=KEY, GOOGLE_GEMINI_BASE_URL=fake.base_url))
    provider.generate(image_request("gemini_3_image", "1024x1024", 7))
    assert len(asked) > 20
    assert all(isinstance(item, str) for item in asked)


def image_request(name: str, size: str, seed: int | None) -> GenerationRequest:
    entry = load_catalog().models[name]
    return GenerationRequest("a lighthouse at dusk", name, entry, size, 1, seed, 1)


def every_request(provider: GeminiProvider) -> None:
    """Every model and size of the catalog, with and without a seed, and both kinds of text request."""
    catalog = load_catalog()
    for name, entry in catalog.models.items():
        if entry.provider != "gemini":
            continue
        for size in entry.sizes:
            for seed in (None, 123):
                provider.generate(image_request(name, size, seed))
    for name in catalog.text_models:
        for count in (None, 3):
            text_entry = catalog.text_models[name]
            if text_entry.provider != "gemini":
                continue
            provider.write_prompts(TextRequest("a fox", "Write prompts.", name, text_entry, count, 1))


def test_the_requests_on_the_wire_are_the_same_without_it(fake: FakeGemini, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = GeminiProvider(Settings(GEMINI_API_KEY=KEY, GOOGLE_GEMINI_BASE_URL=fake.base_url))
    every_request(provider)
    with_it = [(r.path, r.body) for r in fake.requests]

    monkeypatch.delattr(_common.BaseModel, "__contains__")
    assert getattr(_common.BaseModel, "__contains__", None) is None  # the SDK's own behaviour again
    every_request(provider)
    without_it = [(r.path, r.body) for r in fake.requests[len(with_it) :]]

    assert len(with_it) > 10
    assert any(body.get("generationConfig", {}).get("seed") == 123 for _, body in with_it)
    assert with_it == without_it
