"""Provider tests run against the fake Gemini server with settings of their own."""

from __future__ import annotations

import ssl

import pytest

from tests.conftest import throwaway_ca_server

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


@pytest.fixture
def tls_server_context(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server certificate for 127.0.0.1 from a throwaway CA that the SDK's HTTP client trusts
    (through ``SSL_CERT_FILE``, as a deployment adds a private CA): the API's own transport."""
    context, bundle = throwaway_ca_server(tmp_path_factory.mktemp("ca"))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    return context
