"""The prompt step's text providers: Gemini through the real google-genai SDK against
FakeGemini (plain text and structured output), and the offline writer (not AI)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from contract.catalog import TextModelEntry, load_catalog
from contract.settings import Settings
from devtools.fake_gemini import Behaviour, FakeGemini, request_text
from worker.errors import BlockedError, GenerationError, PermanentError, TransientError
from worker.providers import GeneratedText, TextProvider, text_provider_for
from worker.providers.base import TextRequest
from worker.providers.gemini import GeminiProvider
from worker.providers.offline import OfflineProvider

KEY = "AIzaTEXT-canary-51c0ffee77"


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=KEY) as server:
        yield server


@pytest.fixture
def provider(fake: FakeGemini) -> GeminiProvider:
    return GeminiProvider(Settings(GEMINI_API_KEY=KEY, GOOGLE_GEMINI_BASE_URL=fake.base_url, gemini_timeout_s=10))


def text_entry(name: str = "gemini_2_5_flash") -> TextModelEntry:
    entry = load_catalog().get_text(name)
    assert entry is not None
    return entry


def ask(provider: TextProvider, count: int | None = None, name: str = "gemini_2_5_flash") -> GeneratedText:
    request = TextRequest("a red fox in the snow", "Write prompts. Style: flat.", name, text_entry(name), count, 1)
    return provider.write_prompts(request)


def test_one_prompt_is_plain_text_with_the_instructions_as_system_instruction(
    provider: GeminiProvider, fake: FakeGemini
) -> None:
    written = ask(provider)
    [prompt] = written.prompts
    assert "a red fox in the snow" in prompt
    assert written.usage is not None and written.usage.prompt_tokens > 0 and written.usage.output_tokens > 0
    assert written.model_version == "gemini-2.5-flash" and written.response_id
    [seen] = fake.requests
    assert seen.model == "gemini-2.5-flash" and seen.api_key_ok
    assert request_text(seen.body) == "a red fox in the snow"
    assert seen.body["systemInstruction"]["parts"][0]["text"] == "Write prompts. Style: flat."
    assert "responseSchema" not in seen.body.get("generationConfig", {})


def test_diversify_asks_for_a_schema_and_gets_exactly_n_prompts(provider: GeminiProvider, fake: FakeGemini) -> None:
    written = ask(provider, count=4)
    assert len(written.prompts) == len(set(written.prompts)) == 4
    config = fake.requests[0].body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    prompts_schema = config["responseSchema"]["properties"]["prompts"]
    assert prompts_schema["type"] == "ARRAY" and prompts_schema["items"]["type"] == "STRING"
    assert config["responseSchema"]["required"] == ["prompts"]


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (Behaviour("wrong_count"), "returned 3 prompt(s), 0 of them empty; exactly 4"),
        (Behaviour("ok", message=json.dumps({"prompts": ["a", "b", " ", "d"]})), "1 of them empty"),
        (Behaviour("ok", message="here are your prompts: a, b, c, d"), "33 characters that are not JSON"),
        (Behaviour("ok", message=json.dumps({"answers": ["a"]})), "no list of strings under 'prompts'"),
        (Behaviour("ok", message=json.dumps({"prompts": [1, 2, 3, 4]})), "no list of strings"),
    ],
)
def test_a_structured_answer_of_the_wrong_shape_is_permanent(
    provider: GeminiProvider, fake: FakeGemini, behaviour: Behaviour, message: str
) -> None:
    fake.script(behaviour)
    with pytest.raises(PermanentError) as caught:
        ask(provider, count=4)
    assert message in str(caught.value)


def test_blocks_are_outcomes_with_their_reason(provider: GeminiProvider, fake: FakeGemini) -> None:
    fake.script(Behaviour("prompt_block", reason="PROHIBITED_CONTENT"), "safety_block")
    with pytest.raises(BlockedError) as prompt_block:
        ask(provider)
    assert prompt_block.value.reason == "PROHIBITED_CONTENT"
    with pytest.raises(BlockedError) as finish_block:
        ask(provider, count=2)
    assert finish_block.value.reason == "SAFETY" and "finishReason SAFETY" in str(finish_block.value)


def test_429_is_transient_with_the_servers_delay_and_no_key(provider: GeminiProvider, fake: FakeGemini) -> None:
    fake.script(Behaviour("error", code=429, retry_delay_s=7, message=f"quota for {KEY} exhausted"))
    with pytest.raises(TransientError) as caught:
        ask(provider)
    assert caught.value.retry_after_s == 7
    assert KEY not in str(caught.value) and "<redacted>" in str(caught.value)


def test_an_answer_holding_the_workers_key_is_refused_not_passed_on(provider: GeminiProvider, fake: FakeGemini) -> None:
    # It would become an image prompt: sent to the image model and kept in the result.
    fake.script(Behaviour("ok", message=f"a red car, key {KEY}"))
    with pytest.raises(PermanentError) as caught:
        ask(provider)
    assert "contains the worker's API key" in str(caught.value) and KEY not in str(caught.value)


def test_an_empty_answer_is_permanent(provider: GeminiProvider, fake: FakeGemini) -> None:
    fake.script(Behaviour("ok", message="   "))
    with pytest.raises(GenerationError, match="answered with no text"):
        ask(provider)


def test_the_offline_writer_is_deterministic_and_labelled() -> None:
    offline = OfflineProvider()
    one = ask(offline, name="offline_prompt_writer")
    assert one.prompts == ["a red fox in the snow (offline rewrite, not AI)"]
    four = ask(offline, count=4, name="offline_prompt_writer")
    assert four == ask(offline, count=4, name="offline_prompt_writer")
    assert len(set(four.prompts)) == 4 and all(p.endswith("not AI)") for p in four.prompts)


def test_the_registry_hands_out_text_writers() -> None:
    writer = text_provider_for("offline", Settings())
    assert isinstance(writer, TextProvider) and writer.name == "offline"
