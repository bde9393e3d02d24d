"""The fake Gemini server speaks the wire format the provider tests rely on."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from devtools.fake_gemini import Behaviour, FakeGemini, FakeGeminiControl, FakeGeminiProcess, request_text
from devtools.redis_server import free_port
from devtools.worker_process import ROOT
from tests.conftest import wait_for

KEY = "fake-key-123"
MODEL_PATH = "/v1beta/models/gemini-3-pro-image:generateContent"


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=KEY) as server:
        yield server


def post(base_url: str, path: str, body: Any, key: str | None = KEY, timeout: float = 5) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", **({"x-goog-api-key": key} if key else {})}
    req = urllib.request.Request(base_url + path, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def image_size(answer: dict[str, Any]) -> tuple[int, int]:
    part = answer["candidates"][0]["content"]["parts"][-1]["inlineData"]
    with Image.open(io.BytesIO(base64.b64decode(part["data"]))) as image:
        return image.size


def prompt(config: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": "a red square"}]}]}
    return body if config is None else {**body, "generationConfig": config}


def test_default_is_1k_square_and_snake_case_is_accepted(fake: FakeGemini) -> None:
    assert image_size(post(fake.base_url, MODEL_PATH, prompt())[1]) == (1024, 1024)
    snake = {"response_modalities": ["IMAGE"], "image_config": {"aspect_ratio": "16:9", "image_size": "4K"}}
    status, answer = post(fake.base_url, MODEL_PATH, prompt(snake))
    assert status == 200 and image_size(answer) == (5504, 3072)
    assert answer["modelVersion"] == "gemini-3-pro-image" and answer["usageMetadata"]["totalTokenCount"]


@pytest.mark.parametrize(
    ("key", "code", "status"), [(None, 401, "UNAUTHENTICATED"), ("wrong", 403, "PERMISSION_DENIED")]
)
def test_bad_key_gets_the_google_error_shape(fake: FakeGemini, key: str | None, code: int, status: str) -> None:
    got, answer = post(fake.base_url, MODEL_PATH, prompt(), key=key)
    assert got == code
    assert set(answer["error"]) == {"code", "message", "status", "details"}
    assert (answer["error"]["code"], answer["error"]["status"]) == (code, status)


def test_unknown_model_is_404_and_ratio_outside_the_catalog_is_400(fake: FakeGemini) -> None:
    assert post(fake.base_url, "/v1beta/models/imagen-4.0-generate:generateContent", prompt())[0] == 404
    config = {"imageConfig": {"aspectRatio": "1:8", "imageSize": "1K"}}
    assert post(fake.base_url, MODEL_PATH, prompt(config))[0] == 400


def test_script_is_fifo_and_requests_are_recorded_without_the_key(fake: FakeGemini) -> None:
    fake.script(Behaviour("error", code=429, retry_delay_s=2), "prompt_block")
    first = post(fake.base_url, MODEL_PATH, prompt())
    second = post(fake.base_url, MODEL_PATH, prompt())
    third = post(fake.base_url, MODEL_PATH, prompt())

    assert first[0] == 429
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"} in first[1]["error"]["details"]
    assert second[1]["promptFeedback"]["blockReason"] == "SAFETY"
    assert third[1]["candidates"][0]["finishReason"] == "STOP"
    seen = fake.requests
    assert [r.behaviour for r in seen] == ["error", "prompt_block", "ok"]
    assert all(r.model == "gemini-3-pro-image" and r.api_key_ok for r in seen)
    assert KEY not in json.dumps([r.headers for r in seen])


def test_http_control_endpoints_drive_the_server(fake: FakeGemini) -> None:
    control = FakeGeminiControl(fake.base_url)
    control.script(Behaviour("safety_block", reason="IMAGE_PROHIBITED_CONTENT"))
    control.set_latency(0.01)
    answer = post(fake.base_url, MODEL_PATH, prompt())[1]

    assert answer["candidates"][0] == {"finishReason": "IMAGE_PROHIBITED_CONTENT", "index": 0}
    assert fake.latency_s == 0.01
    [seen] = control.requests()
    assert seen["model"] == "gemini-3-pro-image" and seen["body"]["contents"][0]["parts"][0]["text"] == "a red square"
    control.reset()
    assert control.requests() == []


def test_bad_behaviour_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown behaviour"):
        Behaviour("explode")


def test_command_line_server_starts_answers_and_stops() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.fake_gemini", "--port", str(port), "--api-key", KEY],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert f"127.0.0.1:{port}" in process.stdout.readline()
        assert post(f"http://127.0.0.1:{port}", MODEL_PATH, prompt())[0] == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_a_server_in_its_own_process_is_driven_like_one_in_this_process() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with FakeGeminiProcess(api_key=KEY, image_kind="photo") as server:
        assert server.pid != os.getpid()
        code, answer = post(server.base_url, MODEL_PATH, prompt())
        data = answer["candidates"][0]["content"]["parts"][-1]["inlineData"]["data"]
        assert code == 200 and len(base64.b64decode(data)) > 1_000_000  # a photo-like PNG
        server.image_kind, server.latency_s = "solid", 0.3
        with ThreadPoolExecutor(3) as pool:
            codes = list(pool.map(lambda _: post(server.base_url, MODEL_PATH, prompt())[0], range(3)))
        assert codes == [200] * 3 and server.max_in_flight == 3
        seen = server.requests
        assert [r.model for r in seen] == ["gemini-3-pro-image"] * 4 and all(r.api_key_ok for r in seen)
        assert seen[-1].timestamp - seen[0].timestamp < 60
        server.reset()
        assert server.requests == [] and server.max_in_flight == 0
        assert post(server.base_url, MODEL_PATH, prompt(), key="wrong")[0] == 403
        process = server.pid
    with pytest.raises(ProcessLookupError):  # stopped and reaped
        os.kill(process, 0)


def test_hundreds_of_slow_requests_are_in_flight_at_once() -> None:
    # What a worker at its largest concurrency asks of it: no refused or queued connection.
    from concurrent.futures import ThreadPoolExecutor

    with FakeGemini(api_key=KEY, latency_s=1.0) as server, ThreadPoolExecutor(320) as pool:
        # 320 threads on a shared 2-core machine: a loaded one has taken more than 5 s to answer some.
        codes = list(pool.map(lambda _: post(server.base_url, MODEL_PATH, prompt(), timeout=60)[0], range(320)))
        assert codes == [200] * 320
        assert server.max_in_flight == 320
        # A request stops counting once its answer is written, a moment after the client has read it.
        assert wait_for(lambda: server.in_flight == 0, timeout=10)


def test_photo_images_are_megabytes_of_png(fake: FakeGemini) -> None:
    fake.image_kind = "photo"
    part = post(fake.base_url, MODEL_PATH, prompt())[1]["candidates"][0]["content"]["parts"][-1]["inlineData"]
    data = base64.b64decode(part["data"])
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (1024, 1024) and image.format == "PNG"
    assert 1_500_000 < len(data) < 1_800_000  # a photograph's worth, not a flat colour's few KB


TEXT_PATH = "/v1beta/models/gemini-2.5-flash:generateContent"


def text_answer(answer: dict[str, Any]) -> str:
    return str(answer["candidates"][0]["content"]["parts"][0]["text"])


def test_text_models_answer_in_words_with_token_counts(fake: FakeGemini) -> None:
    body = {**prompt(), "systemInstruction": {"role": "user", "parts": [{"text": "Write one detailed prompt."}]}}
    status, answer = post(fake.base_url, TEXT_PATH, body)
    assert status == 200 and "a red square" in text_answer(answer)
    assert answer["candidates"][0]["finishReason"] == "STOP"
    usage = answer["usageMetadata"]
    assert usage["promptTokenCount"] > 0 and usage["candidatesTokenCount"] > 0
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    [seen] = fake.requests
    assert seen.model == "gemini-2.5-flash" and request_text(seen.body) == "a red square"


@pytest.mark.parametrize("count_key", ["maxItems", "max_items"])  # the SDK sends snake_case here
def test_structured_output_has_as_many_distinct_prompts_as_the_schema_asks(fake: FakeGemini, count_key: str) -> None:
    schema = {
        "type": "OBJECT",
        "properties": {"prompts": {"type": "ARRAY", "items": {"type": "STRING"}, count_key: 4}},
        "required": ["prompts"],
    }
    config = {"responseMimeType": "application/json", "responseSchema": schema}
    prompts = json.loads(text_answer(post(fake.base_url, TEXT_PATH, prompt(config))[1]))["prompts"]
    assert len(prompts) == len(set(prompts)) == 4 and all("a red square" in p for p in prompts)
    fake.script("wrong_count")
    assert len(json.loads(text_answer(post(fake.base_url, TEXT_PATH, prompt(config))[1]))["prompts"]) == 3


def test_text_requests_take_scripted_errors_blocks_and_answers(fake: FakeGemini) -> None:
    fake.script(
        Behaviour("error", code=429, retry_delay_s=3),
        Behaviour("prompt_block", reason="PROHIBITED_CONTENT"),
        "safety_block",
        "fenced",
        Behaviour("ok", message="exactly this"),
    )
    first = post(fake.base_url, TEXT_PATH, prompt())
    assert first[0] == 429
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"} in first[1]["error"]["details"]
    assert post(fake.base_url, TEXT_PATH, prompt())[1]["promptFeedback"] == {"blockReason": "PROHIBITED_CONTENT"}
    assert post(fake.base_url, TEXT_PATH, prompt())[1]["candidates"] == [{"finishReason": "SAFETY"}]
    fenced = text_answer(post(fake.base_url, TEXT_PATH, prompt())[1])
    assert fenced.startswith("```text\nPrompt: ") and fenced.endswith("\n```")
    assert text_answer(post(fake.base_url, TEXT_PATH, prompt())[1]) == "exactly this"
    assert [r.behaviour for r in fake.requests] == ["error", "prompt_block", "safety_block", "fenced", "ok"]


def test_a_text_model_outside_the_catalog_is_404(fake: FakeGemini) -> None:
    assert post(fake.base_url, "/v1beta/models/gemini-0.1-pro:generateContent", prompt())[0] == 404
