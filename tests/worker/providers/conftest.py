"""Provider tests run against the fake Gemini server with settings of their own."""

from __future__ import annotations

import pytest

# Settings and the SDK both read these: the machine's own must not leak into a provider test.
GEMINI_ENV = (
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    "IMAGEGEN_GEMINI_BASE_URL",
    "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_CLOUD_LOCATION",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in GEMINI_ENV:
        monkeypatch.delenv(name, raising=False)
