"""GeminiProvider through the real google-genai SDK against FakeGemini (no mocks)."""

from __future__ import annotations

import io
import logging
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from PIL import Image

from contract.catalog import ModelEntry, load_catalog
from contract.settings import Settings
from devtools.fake_gemini import DRAFT_SIZE, Behaviour, FakeGemini
from devtools.redis_server import free_port
from worker.errors import BlockedError, GenerationError, PermanentError, TransientError
from worker.imaging import inspect_image
from worker.providers import FACTORIES
from worker.providers.base import GenerationRequest, TextRequest
from worker.providers.gemini import BLOCKING_FINISH_REASONS, GeminiProvider

KEY = "AIzaFAKE-canary-7f3c9d2e1b"
OTHER_KEY = "AIzaOTHER-canary-0a1b2c3d"


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=KEY) as server:
        yield server


def make_settings(base_url: str, timeout_s: float = 10.0, **keys: str) -> Settings:
    fields: dict[str, Any] = {"GOOGLE_GEMINI_BASE_URL": base_url, "gemini_timeout_s": timeout_s}
    return Settings(**(keys or {"GEMINI_API_KEY": KEY}), **fields)


@pytest.fixture
def provider(fake: FakeGemini) -> GeminiProvider:
    return GeminiProvider(make_settings(fake.base_url))


def entry(name: str = "gemini_3_image", model_id: str | None = None) -> ModelEntry:
    model = load_catalog().models[name]
    return model if model_id is None else model.model_copy(update={"model_id": model_id})


def request(size: str = "1024x1024", seed: int | None = 42, model: ModelEntry | None = None) -> GenerationRequest:
    return GenerationRequest("a girl driving a red car", "gemini_3_image", model or entry(), size, 0, seed, 1)


def failure(provider: GeminiProvider, fake: FakeGemini, behaviour: Behaviour) -> GenerationError:
    fake.script(behaviour)
    with pytest.raises(GenerationError) as caught:
        provider.generate(request())
    return caught.value


# --- success ------------------------------------------------------------------


def test_success_returns_the_image_and_metadata(provider: GeminiProvider, fake: FakeGemini) -> None:
    image = provider.generate(request())

    facts = inspect_image(image.data)
    assert (facts.mime_type, facts.size) == ("image/png", "1024x1024")
    assert image.mime_type_label == "image/png"
    meta = image.metadata
    assert meta.provider == "gemini"
    assert meta.model_version == "gemini-3-pro-image"
    assert meta.response_id
    assert meta.text == "Here is your image."
    assert meta.usage is not None
    assert (meta.usage.prompt_tokens, meta.usage.output_tokens, meta.usage.total_tokens) == (12, 1300, 1312)


def test_the_server_sees_model_image_config_seed_and_key(provider: GeminiProvider, fake: FakeGemini) -> None:
    provider.generate(request(seed=42))

    [seen] = fake.requests
    assert seen.path == "/v1beta/models/gemini-3-pro-image:generateContent"
    assert seen.model == "gemini-3-pro-image"
    assert seen.api_key_ok
    assert "x-goog-api-key" not in seen.headers  # the fake never records the key
    config = seen.body["generationConfig"]
    assert config["imageConfig"] == {"aspectRatio": "1:1", "imageSize": "1K"}
    assert config["seed"] == 42
    assert config["responseModalities"] == ["TEXT", "IMAGE"]
    assert seen.body["contents"][0]["parts"][0]["text"] == "a girl driving a red car"


def test_a_call_logs_no_info_line_and_sends_the_same_request(
    provider: GeminiProvider, fake: FakeGemini, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx's per-request line and the SDK's "AFC is enabled" line are gone (a worker logs at
    INFO); turning the SDK's function calling off is client-side: nothing of it is sent."""
    with caplog.at_level(logging.INFO):
        provider.generate(request())
        text_model = load_catalog().text_models["gemini_2_5_flash"]
        provider.write_prompts(TextRequest("a red car", "Rewrite it.", "gemini_2_5_flash", text_model, None, 1))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []
    for seen in fake.requests:
        assert not {"automaticFunctionCalling", "automatic_function_calling", "tools"} & {
            *seen.body,
            *seen.body.get("generationConfig", {}),
        }, seen.body


@pytest.mark.parametrize(
    ("name", "size", "ratio", "tier"),
    [
        ("gemini_3_image", "2752x1536", "16:9", "2K"),
        ("gemini_3_image", "848x1264", "2:3", "1K"),
        ("gemini_2_5_image", "1344x768", "16:9", "1K"),
    ],
)
def test_catalog_size_becomes_ratio_and_tier(
    provider: GeminiProvider, fake: FakeGemini, name: str, size: str, ratio: str, tier: str
) -> None:
    image = provider.generate(request(size, model=entry(name)))

    assert fake.requests[-1].body["generationConfig"]["imageConfig"] == {"aspectRatio": ratio, "imageSize": tier}
    assert inspect_image(image.data).size == size


def test_no_seed_is_not_sent(provider: GeminiProvider, fake: FakeGemini) -> None:
    provider.generate(request(seed=None))
    assert "seed" not in fake.requests[-1].body["generationConfig"]


def test_google_api_key_wins_over_gemini_api_key(fake: FakeGemini) -> None:
    both = GeminiProvider(make_settings(fake.base_url, GOOGLE_API_KEY=KEY, GEMINI_API_KEY=OTHER_KEY))
    both.generate(request())
    assert fake.requests[-1].api_key_ok


def test_one_client_serves_every_call(provider: GeminiProvider, fake: FakeGemini) -> None:
    client = provider._client
    provider.generate(request())
    provider.generate(request())
    assert provider._client is client
    assert len(fake.requests) == 2


def test_registry_factory_builds_a_gemini_provider(fake: FakeGemini) -> None:
    made = FACTORIES["gemini"](make_settings(fake.base_url))
    assert isinstance(made, GeminiProvider)
    assert made.name == "gemini"


def test_thought_drafts_are_kept_out(provider: GeminiProvider, fake: FakeGemini) -> None:
    fake.script("thoughts")
    image = provider.generate(request())

    assert inspect_image(image.data).size == "1024x1024"  # not the 64x64 draft
    assert image.metadata.text == "Here is your image."  # the thought text is left out
    assert image.metadata.usage is not None and image.metadata.usage.thoughts_tokens == 300
    assert DRAFT_SIZE != (1024, 1024)


def test_the_last_image_is_the_answer(provider: GeminiProvider, fake: FakeGemini) -> None:
    fake.script("two_images")
    assert inspect_image(provider.generate(request()).data).size == "1024x1024"


def test_mislabelled_mime_type_is_reported_and_the_bytes_decide(provider: GeminiProvider, fake: FakeGemini) -> None:
    fake.script("mislabelled_mime")
    image = provider.generate(request())

    assert image.mime_type_label == "image/png"
    assert image.data.startswith(b"\xff\xd8\xff")
    assert inspect_image(image.data).mime_type == "image/jpeg"


def test_wrong_size_image_is_returned_as_made(provider: GeminiProvider, fake: FakeGemini) -> None:
    fake.script("wrong_size")
    image = provider.generate(request())
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.size == (512, 512)  # the task records the mismatch; the provider does not hide it


# --- no image -------------------------------------------------------------------


@pytest.mark.parametrize("reason", sorted(BLOCKING_FINISH_REASONS))
def test_finish_reason_without_image_is_blocked(provider: GeminiProvider, fake: FakeGemini, reason: str) -> None:
    exc = failure(provider, fake, Behaviour("safety_block", reason=reason))
    assert isinstance(exc, BlockedError)
    assert exc.reason == reason
    assert reason in str(exc)


@pytest.mark.parametrize("reason", ["SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "IMAGE_SAFETY", "OTHER"])
def test_prompt_block_is_blocked(provider: GeminiProvider, fake: FakeGemini, reason: str) -> None:
    exc = failure(provider, fake, Behaviour("prompt_block", reason=reason))
    assert isinstance(exc, BlockedError)
    assert exc.reason == reason
    assert "prompt" in str(exc)


def test_text_only_answer_is_blocked_with_the_models_words(provider: GeminiProvider, fake: FakeGemini) -> None:
    exc = failure(provider, fake, Behaviour("text_only", message="I would rather write a haiku about cars."))
    assert isinstance(exc, BlockedError)
    assert exc.reason == "NO_IMAGE"
    assert "haiku about cars" in str(exc)


# --- errors -------------------------------------------------------------------


def test_429_carries_the_servers_retry_delay(provider: GeminiProvider, fake: FakeGemini) -> None:
    exc = failure(provider, fake, Behaviour("error", code=429, retry_delay_s=12))
    assert isinstance(exc, TransientError)
    assert exc.retry_after_s == 12.0
    assert not exc.timed_out
    assert "429" in str(exc) and "RESOURCE_EXHAUSTED" in str(exc)


def test_retry_after_header_is_honoured(provider: GeminiProvider, fake: FakeGemini) -> None:
    exc = failure(provider, fake, Behaviour("error", code=503, retry_after_header_s=7))
    assert isinstance(exc, TransientError)
    assert exc.retry_after_s == 7.0


def test_the_longer_of_two_delay_hints_wins(provider: GeminiProvider, fake: FakeGemini) -> None:
    exc = failure(provider, fake, Behaviour("error", code=429, retry_delay_s=3, retry_after_header_s=9))
    assert isinstance(exc, TransientError)
    assert exc.retry_after_s == 9.0


@pytest.mark.parametrize(("code", "timed_out"), [(408, True), (500, False), (502, False), (503, False), (504, True)])
def test_server_errors_are_transient(provider: GeminiProvider, fake: FakeGemini, code: int, timed_out: bool) -> None:
    exc = failure(provider, fake, Behaviour("error", code=code))
    assert isinstance(exc, TransientError)
    assert exc.retry_after_s is None
    assert exc.timed_out is timed_out
    assert str(code) in str(exc)


def test_sdk_does_not_retry_by_itself(provider: GeminiProvider, fake: FakeGemini) -> None:
    fake.script(Behaviour("error", code=503), "ok")
    with pytest.raises(TransientError):
        provider.generate(request())
    assert len(fake.requests) == 1  # Celery retries, with the worker slot freed


def test_connection_refused_is_transient() -> None:
    closed = GeminiProvider(make_settings(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(TransientError) as caught:
        closed.generate(request())
    assert not caught.value.timed_out
    assert "ConnectError" in str(caught.value)


def test_over_https_as_the_real_api(tls_server_context: ssl.SSLContext) -> None:
    with FakeGemini(api_key=KEY, tls=tls_server_context) as secure:
        assert secure.base_url.startswith("https://")
        provider = GeminiProvider(make_settings(secure.base_url))
        for _ in range(2):  # the second call on the kept-alive TLS connection
            assert inspect_image(provider.generate(request()).data).size == "1024x1024"
        assert len(secure.requests) == 2


def test_an_untrusted_certificate_is_not_sent_the_key(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)  # a CA nobody trusts
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with FakeGemini(api_key=KEY, tls=context) as impostor:
        with pytest.raises(TransientError) as caught:
            GeminiProvider(make_settings(impostor.base_url)).generate(request())
        assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value) and KEY not in str(caught.value)
        assert impostor.requests == []


def test_read_timeout_is_transient_and_timed_out(fake: FakeGemini) -> None:
    slow = GeminiProvider(make_settings(fake.base_url, timeout_s=0.3))
    fake.script(Behaviour("ok", latency_s=5))
    with pytest.raises(TransientError) as caught:
        slow.generate(request())
    assert caught.value.timed_out


@pytest.mark.parametrize("code", [400, 401, 403])
def test_client_errors_are_permanent(provider: GeminiProvider, fake: FakeGemini, code: int) -> None:
    exc = failure(provider, fake, Behaviour("error", code=code, message=f"fake refusal {code}"))
    assert type(exc) is PermanentError
    assert f"fake refusal {code}" in str(exc)


def test_wrong_key_is_permanent(fake: FakeGemini) -> None:
    wrong = GeminiProvider(make_settings(fake.base_url, GEMINI_API_KEY=OTHER_KEY))
    with pytest.raises(PermanentError) as caught:
        wrong.generate(request())
    assert "403" in str(caught.value) and "API key not valid" in str(caught.value)
    assert OTHER_KEY not in str(caught.value)


def test_retired_model_id_is_permanent_and_names_the_catalog(provider: GeminiProvider, fake: FakeGemini) -> None:
    with pytest.raises(PermanentError) as caught:
        provider.generate(request(model=entry(model_id="gemini-2.0-flash-image-retired")))
    message = str(caught.value)
    assert "gemini-2.0-flash-image-retired" in message
    assert "is not served" in message and "IMAGEGEN_MODEL_CATALOG_FILE" in message
    assert len(fake.requests) == 1


def test_missing_key_is_a_permanent_setup_error(fake: FakeGemini) -> None:
    with pytest.raises(PermanentError, match="GEMINI_API_KEY"):
        GeminiProvider(Settings(GOOGLE_GEMINI_BASE_URL=fake.base_url))


@pytest.mark.parametrize("code", [400, 403, 429, 503])
def test_key_echoed_by_the_server_is_scrubbed(provider: GeminiProvider, fake: FakeGemini, code: int) -> None:
    exc = failure(provider, fake, Behaviour("error", code=code, message=f"bad request with key={KEY}"))
    assert KEY not in str(exc)
    assert KEY not in repr(exc.args)
    assert exc.__cause__ is None and exc.__suppress_context__  # the SDK error (with its details) is not chained
    assert "<redacted>" in str(exc)


def test_a_providers_error_text_stays_on_one_line(provider: GeminiProvider, fake: FakeGemini) -> None:
    # Its message goes into the worker's log line, the result and the events: a line break in it
    # would forge a log line (an endpoint behind GOOGLE_GEMINI_BASE_URL may be a proxy).
    forged = "bad\n2026-11-30 INFO worker: job ok\r\x1b[31mred\u202egnp.exe"
    exc = failure(provider, fake, Behaviour("error", code=400, message=forged))
    text = str(exc)
    assert text.isprintable() and "bad\\n2026-11-30 INFO" in text and "\\u001b[31m" in text, text
    assert "\\u202e" in text


@pytest.mark.parametrize(
    "behaviour",
    [
        Behaviour("error", code=429, retry_delay_s=1),
        Behaviour("error", code=404),
        Behaviour("safety_block"),
        Behaviour("prompt_block"),
        Behaviour("text_only"),
        Behaviour("ok", latency_s=5),
    ],
)
def test_key_never_in_exception_strings(fake: FakeGemini, behaviour: Behaviour) -> None:
    provider = GeminiProvider(make_settings(fake.base_url, timeout_s=0.3))
    exc = failure(provider, fake, behaviour)
    for text in (str(exc), repr(exc), repr(exc.__context__)):
        assert KEY not in text
