"""Gemini jobs end to end: producer -> Redis -> real worker processes -> the
real google-genai SDK -> FakeGemini, and back as a result document."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from devtools.fake_gemini import Behaviour, FakeGemini, render_photo
from devtools.redis_server import free_port
from devtools.worker_process import WorkerProcess
from producer.client import ImageGenClient
from tests.conftest import StartWorker, metric_samples, throwaway_ca_server
from tests.e2e.conftest import GEMINI_KEY
from tests.redis_scan import all_redis_entries
from worker.providers.answer_gate import estimated_answer_bytes

WAIT_S = 30


def with_variations(node: dict[str, Any], count: int) -> dict[str, Any]:
    node["inputs"]["variations"] = str(count)
    return node


def stored_path(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))


def test_seed_node_succeeds_with_the_gemini_3_model(
    gemini_worker: Any, client: ImageGenClient, seed_node: dict[str, Any], fake: FakeGemini
) -> None:
    result = client.submit(seed_node).wait(timeout=WAIT_S)

    assert result.status == "succeeded", result.errors
    assert (result.model, result.model_id, result.provider) == ("gemini_3_image", "gemini-3-pro-image", "gemini")
    [image] = result.images
    assert (image.width, image.height, image.mime_type) == (1024, 1024, "image/png")
    assert stored_path(image.uri).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.metadata.provider == "gemini" and image.metadata.usage is not None
    assert image.estimated_cost_usd == result.estimated_cost_usd == 0.134  # catalog price, 1K tier
    assert result.usage is not None and result.usage.total_tokens > 0
    [seen] = fake.requests
    assert seen.model == "gemini-3-pro-image" and seen.api_key_ok
    assert seen.body["generationConfig"]["imageConfig"] == {"aspectRatio": "1:1", "imageSize": "1K"}
    # The worker logs at INFO; the HTTP library and the SDK add no line per call.
    log = gemini_worker.log()
    assert "generateContent" not in log and "AFC is enabled" not in log, log[-2000:]


def test_mislabelled_and_wrong_size_images_are_reported_as_they_are(
    gemini_worker: Any, client: ImageGenClient, seed_node: dict[str, Any], fake: FakeGemini
) -> None:
    seed_node["inputs"]["size"] = "2048x2048"
    fake.script("mislabelled_mime", "wrong_size")
    result = client.submit(with_variations(seed_node, 2)).wait(timeout=WAIT_S)

    assert result.status == "succeeded", result.errors
    kinds = sorted((i.mime_type, i.width, i.metadata.size_mismatch is not None) for i in result.images)
    assert kinds == [("image/jpeg", 2048, False), ("image/png", 1024, True)]
    [odd] = [i for i in result.images if i.metadata.size_mismatch]
    assert odd.metadata.size_mismatch is not None
    assert (odd.metadata.size_mismatch.requested, odd.metadata.size_mismatch.returned) == ("2048x2048", "1024x1024")
    jpeg = next(i for i in result.images if i.mime_type == "image/jpeg")
    assert jpeg.uri.endswith(".jpg") and stored_path(jpeg.uri).read_bytes()[:3] == b"\xff\xd8\xff"
    assert result.estimated_cost_usd == 2 * 0.134


def test_an_answer_cut_short_is_refused_not_stored_and_its_price_still_counted(
    gemini_worker: Any, client: ImageGenClient, seed_node: dict[str, Any], fake: FakeGemini
) -> None:
    """The provider billed the image, whatever its bytes: its error record and the job's cost say so."""
    fake.script("cut_short")  # whichever variation asks first gets half an image
    result = client.submit(with_variations(seed_node, 2)).wait(timeout=WAIT_S)

    assert result.status == "partial" and len(result.images) == 1
    [error] = result.errors
    assert error.kind == "permanent" and "damaged or cut short" in error.message
    assert error.estimated_cost_usd == 0.134 and error.metadata is not None and error.metadata.usage is not None
    assert result.estimated_cost_usd == 2 * 0.134
    assert result.usage is not None and result.usage.total_tokens == 2 * 1312


def test_one_safety_block_out_of_four_is_partial(
    gemini_worker: Any, client: ImageGenClient, seed_node: dict[str, Any], fake: FakeGemini
) -> None:
    fake.script("safety_block")  # whichever variation asks first is refused
    result = client.submit(with_variations(seed_node, 4)).wait(timeout=WAIT_S)

    assert result.status == "partial"
    [error] = result.errors
    assert (error.kind, error.reason, error.attempts) == ("blocked", "IMAGE_SAFETY", 1)
    assert len(result.images) == 3
    assert {i.index for i in result.images} | {error.index} == {0, 1, 2, 3}
    assert all(stored_path(i.uri).is_file() for i in result.images)
    assert len(fake.requests) == 4  # a safety block is not retried


def test_429_is_retried_no_sooner_than_the_servers_delay(
    gemini_worker: Any, client: ImageGenClient, seed_node: dict[str, Any], fake: FakeGemini
) -> None:
    fake.script(Behaviour("error", code=429, retry_delay_s=1))
    result = client.submit(seed_node).wait(timeout=WAIT_S)

    assert result.status == "succeeded", result.errors
    assert result.images[0].attempts == 2
    first, second = fake.requests
    assert second.timestamp - first.timestamp >= 1.0  # base delay is 0.1 s: only RetryInfo explains this


def test_a_quota_429_asking_for_hours_is_not_waited_out(
    gemini_worker: Any, client: ImageGenClient, seed_node: dict[str, Any], fake: FakeGemini
) -> None:
    # A daily quota: retrying within the retry ceiling cannot succeed, and a
    # retry held for hours would outlive the visibility timeout.
    fake.script(Behaviour("error", code=429, retry_delay_s=3600))
    result = client.submit(seed_node).wait(timeout=WAIT_S)

    assert result.status == "failed"
    [error] = result.errors
    assert (error.kind, error.attempts) == ("transient_exhausted", 1)
    assert "asked to wait 3600 s" in error.message
    assert len(fake.requests) == 1


def test_403_is_not_retried(
    gemini_worker: Any, client: ImageGenClient, seed_node: dict[str, Any], fake: FakeGemini
) -> None:
    fake.script(Behaviour("error", code=403, message="Permission denied on resource project demo."))
    result = client.submit(seed_node).wait(timeout=WAIT_S)

    assert result.status == "failed"
    [error] = result.errors
    assert (error.kind, error.attempts) == ("permanent", 1)
    assert "403" in error.message and "Permission denied" in error.message
    assert len(fake.requests) == 1


def test_api_key_appears_nowhere(
    gemini_worker: Any,
    client: ImageGenClient,
    seed_node: dict[str, Any],
    fake: FakeGemini,
    redis_url: str,
) -> None:
    # A leaky upstream echoing the key: through the retry log line, an error
    # record and a success, the key must still reach no log, key or document.
    fake.script(
        Behaviour("error", code=429, retry_delay_s=0.2, message=f"quota for key {GEMINI_KEY} exhausted"),
        Behaviour("error", code=400, message=f"API key {GEMINI_KEY} cannot be used here"),
    )
    result = client.submit(with_variations(seed_node, 2)).wait(timeout=WAIT_S)

    assert result.status == "partial", result
    assert len(fake.requests) == 3 and all(r.api_key_ok for r in fake.requests)  # the key was really used
    assert "<redacted>" in result.errors[0].message
    assert GEMINI_KEY not in result.model_dump_json()
    assert "retrying in" in gemini_worker.log()  # the 429 message went through the log
    assert GEMINI_KEY not in gemini_worker.log()
    entries = all_redis_entries(redis_url)
    assert entries and not any(GEMINI_KEY.encode() in key + value for key, value in entries.items())


def test_answers_arriving_together_are_held_one_at_a_time_under_a_small_answer_memory(
    gemini_worker: WorkerProcess, start_worker: StartWorker, client: ImageGenClient, seed_node: dict[str, Any]
) -> None:
    """IMAGEGEN_ANSWER_MEMORY_MB=1 and 2K answers (about 8.8 MB each as the gate counts them):
    each is larger than the limit, so each is read, decoded and stored alone. Every image is made;
    the gate never held more than one answer, and holds nothing once the job is done."""
    gemini_worker.stop()
    port = free_port()
    start_worker(
        env={
            **gemini_worker.env,
            "IMAGEGEN_ANSWER_MEMORY_MB": "1",
            "IMAGEGEN_METRICS_PORT": str(port),
            "IMAGEGEN_METRICS_HOST": "127.0.0.1",
        }
    )
    seed_node["inputs"]["size"] = "2048x2048"
    result = client.submit(with_variations(seed_node, 4)).wait(timeout=WAIT_S)

    assert result.status == "succeeded", result.errors
    assert sorted((i.width, i.height) for i in result.images) == [(2048, 2048)] * 4
    found = metric_samples(f"http://127.0.0.1:{port}/metrics")
    assert found[("imagegen_answer_memory_peak_bytes", ())] == estimated_answer_bytes(2048, 2048)
    assert found[("imagegen_answer_memory_bytes", ())] == 0
    assert ("imagegen_answer_memory_waits_total", ()) in found  # whether they met depends on timing


def test_with_no_answer_memory_limit_the_gate_is_off(
    gemini_worker: WorkerProcess, start_worker: StartWorker, client: ImageGenClient, seed_node: dict[str, Any]
) -> None:
    gemini_worker.stop()
    port = free_port()
    env = {**gemini_worker.env, "IMAGEGEN_ANSWER_MEMORY_MB": "0", "IMAGEGEN_METRICS_PORT": str(port)}
    start_worker(env={**env, "IMAGEGEN_METRICS_HOST": "127.0.0.1"})
    assert client.submit(with_variations(seed_node, 2)).wait(timeout=WAIT_S).status == "succeeded"
    found = metric_samples(f"http://127.0.0.1:{port}/metrics")
    assert not [name for name, _ in found if name.startswith("imagegen_answer_memory")]


@pytest.mark.parametrize("pool", ["threads", "gevent"])
def test_photo_answers_over_https_arrive_whole_on_either_pool(
    pool: str, start_worker: StartWorker, client: ImageGenClient, seed_node: dict[str, Any], tmp_path: Path
) -> None:
    """The real API's transport: TLS (the worker's own stream, worker/providers/tls_reads.py,
    whose reads the provider tests count), the certificate checked against a private CA as a
    deployment adds one. Every stored image is the server's, byte for byte."""
    if pool == "gevent" and importlib.util.find_spec("gevent") is None:
        pytest.skip("gevent is not installed (pip install '.[bench]')")
    server_context, bundle = throwaway_ca_server(tmp_path)
    with FakeGemini(api_key=GEMINI_KEY, image_kind="photo", tls=server_context) as secure:
        start_worker(
            env={
                "GOOGLE_GEMINI_BASE_URL": secure.base_url,
                "SSL_CERT_FILE": str(bundle),
                "GEMINI_API_KEY": GEMINI_KEY,
                "GOOGLE_API_KEY": "",
                "GOOGLE_GENAI_USE_VERTEXAI": "false",
                "IMAGEGEN_GEMINI_TIMEOUT_S": "20",
            },
            pool=pool,
            concurrency=8,
        )
        results = [client.submit(with_variations(seed_node, 4)).wait(timeout=60) for _ in range(3)]
    assert [r.status for r in results] == ["succeeded"] * 3, [r.errors for r in results]
    sent = render_photo((1024, 1024))  # what the server sends for each image, every time
    for result in results:
        for image in result.images:
            stored = stored_path(image.uri).read_bytes()
            assert len(stored) > 1_000_000 and stored == sent  # a 1.65 MB PNG, whole
            assert image.sha256 == hashlib.sha256(sent).hexdigest()
