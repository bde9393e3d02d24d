"""LLM -> image, end to end: a real upstream Celery task chained before the job, templates
filled at submit, and the job's own prompt step, with real workers, real Redis and the real
google-genai SDK against FakeGemini (whose request log shows what each model was asked)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, chain

from contract.errors import NodeValidationError
from contract.queue import PROMPT_STEP, job_task_id, prompt_step_key
from devtools.fake_gemini import Behaviour, FakeGemini, RecordedRequest, request_text
from devtools.redis_server import free_port
from devtools.worker_process import WorkerProcess
from producer.client import ImageGenClient, JobConflict, JobNotFound
from tests.cli import imagegen
from tests.conftest import StartWorker, metric_samples, wait_for
from tests.e2e.helpers import assert_matches_published_schema

WAIT_S = 60
TEXT_MODEL_ID = "gemini-2.5-flash"


@pytest.fixture
def engine(job_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Celery, str]]:
    """The workflow engine: its own Celery app and a real worker running its LLM task."""
    queue = f"engine-{uuid.uuid4().hex[:8]}"
    log_dir = tmp_path / "engine-worker"
    log_dir.mkdir()
    worker = WorkerProcess(
        {**job_env, "ENGINE_QUEUE": queue}, concurrency=2, log_dir=str(log_dir), app="tests.e2e.upstream_app"
    )
    worker.start()
    app = Celery("engine-test", broker=job_env["REDIS_URL"], backend=job_env["REDIS_URL"])
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    try:
        yield app, queue
    finally:
        app.close()
        worker.stop()


def image_requests(fake: FakeGemini) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.model != TEXT_MODEL_ID]


def text_requests(fake: FakeGemini) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.model == TEXT_MODEL_ID]


def with_inputs(node: dict[str, Any], **inputs: Any) -> dict[str, Any]:
    node["inputs"].update(inputs)
    return node


# --- 1. piping an upstream output in ------------------------------------------------


def test_a_chained_upstream_llm_task_supplies_the_prompt(
    gemini_worker: WorkerProcess,
    engine: tuple[Celery, str],
    client: ImageGenClient,
    seed_node: dict[str, Any],
    fake: FakeGemini,
) -> None:
    app, queue = engine
    text = "A lighthouse on a cliff at dawn, oil painting"
    link = client.signature(with_inputs(seed_node, variations=2), job_id="llm-chain-1", prompt_from="output.text")
    chain(app.signature("engine.llm_answer", args=(f"```text\nPrompt: {text}\n```",), queue=queue), link).apply_async()

    result = client.wait("llm-chain-1", timeout=WAIT_S)

    assert result.status == "succeeded", result.errors
    assert [request_text(r.body) for r in image_requests(fake)] == [text, text]  # fence and label stripped
    assert result.original_prompt == text
    assert [image.prompt for image in result.images] == [None, None]  # made from original_prompt
    assert_matches_published_schema(result)


def test_a_link_never_sent_can_be_built_again_with_the_same_id_and_node(
    gemini_worker: WorkerProcess,
    engine: tuple[Celery, str],
    client: ImageGenClient,
    seed_node: dict[str, Any],
    fake: FakeGemini,
) -> None:
    # Building a link claims its id: a link that was never sent (the engine failed before
    # apply_async) left the id refused for good ("a chain link needs a new job id").
    node = with_inputs(seed_node, variations=1)
    client.signature(node, job_id="llm-chain-unsent", prompt_from="output.text")  # never sent
    assert client.status("llm-chain-unsent").state == "queued"
    link = client.signature(node, job_id="llm-chain-unsent", prompt_from="output.text")
    app, queue = engine
    chain(app.signature("engine.llm_answer", args=("A red kite over the dunes",), queue=queue), link).apply_async()
    assert client.wait("llm-chain-unsent", timeout=WAIT_S).status == "succeeded"
    assert len(image_requests(fake)) == 1
    with pytest.raises(JobConflict, match="has started"):  # once it ran, the id is taken
        client.signature(node, job_id="llm-chain-unsent", prompt_from="output.text")
    with pytest.raises(JobConflict):  # another node: never
        client.signature(with_inputs(seed_node, variations=2), job_id="llm-chain-unsent", prompt_from="output.text")


def test_the_signature_validates_the_node_before_anything_runs(
    client: ImageGenClient, seed_node: dict[str, Any]
) -> None:
    with pytest.raises(NodeValidationError) as caught:
        client.signature(with_inputs(seed_node, size="7x7"), job_id="llm-chain-bad")
    assert [p.field for p in caught.value.problems] == ["inputs.size"]
    with pytest.raises(JobNotFound):
        client.status("llm-chain-bad")  # nothing claimed
    with pytest.raises(NodeValidationError, match="prompt_from"):
        client.signature(seed_node, prompt_from="output..text")


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("", "empty (a str of 0 characters"),
        (None, "is None, not text"),
        (["a lighthouse"], "a list of 1 item(s), not text"),
        ("x" * 100_000, "a str of 100000 characters"),
    ],
)
def test_bad_upstream_output_fails_the_job_permanently_without_a_provider_call(
    gemini_worker: WorkerProcess,
    engine: tuple[Celery, str],
    client: ImageGenClient,
    seed_node: dict[str, Any],
    fake: FakeGemini,
    value: Any,
    said: str,
) -> None:
    app, queue = engine
    job_id = f"llm-bad-{uuid.uuid4().hex[:6]}"
    chain(
        app.signature("engine.echo", args=(value,), queue=queue), client.signature(seed_node, job_id=job_id)
    ).apply_async()

    result = client.wait(job_id, timeout=WAIT_S)

    assert result.status == "failed"
    [error] = result.errors
    assert error.kind == "permanent" and said in error.message
    assert "xxxxxxxxxx" not in error.message and "lighthouse" not in error.message
    assert fake.requests == []
    assert "xxxxxxxxxxxxxxxxxxxx" not in gemini_worker.log()  # the value is never logged whole


def test_a_failed_upstream_task_ends_the_job_at_once(
    gemini_worker: WorkerProcess,
    engine: tuple[Celery, str],
    client: ImageGenClient,
    seed_node: dict[str, Any],
    fake: FakeGemini,
) -> None:
    """Without the errback the link never runs and the job waits ``queued`` for the lost-job
    deadline (2 h by default)."""
    app, queue = engine
    job_id = f"llm-boom-{uuid.uuid4().hex[:6]}"
    upstream = app.signature("engine.boom", args=("x",), queue=queue)
    chained = client.chain(upstream, seed_node, job_id=job_id, prompt_from="output.text")
    assert chained.tasks[-1].kwargs["order"]["job_id"] == job_id
    failing = chained.apply_async()

    result = client.wait(job_id, timeout=WAIT_S)

    assert result.status == "failed"
    [error] = result.errors
    assert f"the upstream task {failing.parent.id if failing.parent else ''}" in error.message
    assert "made no image" in error.message and "refused" not in error.message  # the engine's error stays there
    assert client.status(job_id).state == "failed"
    assert fake.requests == []


@pytest.mark.parametrize("upstream", ["engine.boom", "engine.echo"])
def test_a_chained_job_canceled_while_it_waits_for_its_prompt_ends_canceled(
    gemini_worker: WorkerProcess,
    engine: tuple[Celery, str],
    client: ImageGenClient,
    seed_node: dict[str, Any],
    fake: FakeGemini,
    upstream: str,
) -> None:
    """The cancel was accepted (``changed``), so the job ends ``canceled`` whichever way its
    upstream ends it (it failed, or gave a value that cannot be a prompt), as a started run would."""
    app, queue = engine
    job_id = f"llm-canceled-{uuid.uuid4().hex[:6]}"
    chained = client.chain(app.signature(upstream, args=("",), queue=queue), seed_node, job_id=job_id)
    assert client.cancel(job_id).changed
    chained.apply_async()

    result = client.wait(job_id, timeout=WAIT_S)

    assert result.status == "canceled", result.errors
    assert [e.kind for e in result.errors] == ["canceled"]
    assert client.status(job_id).state == "canceled"
    events = [e.event for e in client.events(job_id, timeout=5)]
    assert events == ["canceled", "completed"]
    assert fake.requests == []


def test_a_hand_built_chain_takes_the_errback_too(
    gemini_worker: WorkerProcess, engine: tuple[Celery, str], client: ImageGenClient, seed_node: dict[str, Any]
) -> None:
    app, queue = engine
    link = client.signature(seed_node, job_id=f"llm-boom-{uuid.uuid4().hex[:6]}")
    chain(app.signature("engine.boom", args=("x",), queue=queue), link).on_error(
        client.upstream_failed(link)
    ).apply_async()
    assert client.wait(link.kwargs["order"]["job_id"], timeout=WAIT_S).status == "failed"


def test_a_template_is_rendered_at_submit_and_a_missing_placeholder_is_refused(
    gemini_worker: WorkerProcess, client: ImageGenClient, seed_node: dict[str, Any], fake: FakeGemini
) -> None:
    seed_node["inputs"]["user_query"] = "A poster of {{ llm_1.text }}, {{ style | lower }}"
    with pytest.raises(NodeValidationError, match="'style'"):
        client.submit(seed_node, job_id="template-missing", context={"llm_1": {"text": "a fox"}})
    with pytest.raises(JobNotFound):
        client.status("template-missing")  # refused before enqueueing

    context = {"llm_1": {"text": "a fox {{ not a template }}"}, "style": "WATERCOLOUR"}
    result = client.submit(seed_node, job_id="template-ok", context=context).wait(timeout=WAIT_S)

    rendered = "A poster of a fox {{ not a template }}, watercolour"
    assert result.status == "succeeded", result.errors
    assert result.original_prompt == rendered
    assert [request_text(r.body) for r in fake.requests] == [rendered]


# --- 2. the prompt step inside the job ------------------------------------------------


def test_diversify_gives_each_variation_its_own_prompt_and_counts_the_text_tokens(
    gemini_worker: WorkerProcess, client: ImageGenClient, seed_node: dict[str, Any], fake: FakeGemini
) -> None:
    node = with_inputs(seed_node, variations=4, prompt_enhancement="diversify", prompt_instructions="muted colours")
    result = client.submit(node).wait(timeout=WAIT_S)

    assert result.status == "succeeded", result.errors
    [step_request] = text_requests(fake)
    assert request_text(step_request.body) == "a girl driving a red car"
    assert "muted colours" in step_request.body["systemInstruction"]["parts"][0]["text"]
    sent = sorted(request_text(r.body) for r in image_requests(fake))
    assert len(sent) == len(set(sent)) == 4 and all(s.startswith("a girl driving a red car, ") for s in sent)
    assert sorted(image.prompt or "" for image in result.images) == sent
    assert result.original_prompt == "a girl driving a red car"
    step = result.prompt_step
    assert step is not None and step.usage is not None and step.usage.prompt_tokens > 0
    assert (step.mode, step.text_model, step.model_id) == ("diversify", "gemini_2_5_flash", TEXT_MODEL_ID)
    image_tokens = sum(i.metadata.usage.total_tokens for i in result.images if i.metadata.usage)
    assert result.usage is not None and result.usage.total_tokens == image_tokens + step.usage.total_tokens
    assert step.estimated_cost_usd is not None and step.estimated_cost_usd > 0
    assert result.estimated_cost_usd == pytest.approx(4 * 0.134 + step.estimated_cost_usd)
    assert_matches_published_schema(result)


def test_enhance_writes_one_detailed_prompt_for_every_variation(
    gemini_worker: WorkerProcess, client: ImageGenClient, seed_node: dict[str, Any], fake: FakeGemini
) -> None:
    fake.script("fenced")  # the text model's answer comes in a code fence after "Prompt:"
    result = client.submit(with_inputs(seed_node, variations=2, prompt_enhancement="enhance")).wait(timeout=WAIT_S)

    assert result.status == "succeeded", result.errors
    [prompt] = {image.prompt for image in result.images}
    assert prompt is not None and prompt.startswith("A detailed image of a girl driving a red car")
    assert "```" not in prompt and "Prompt:" not in prompt
    assert [request_text(r.body) for r in image_requests(fake)] == [prompt, prompt]
    assert result.original_prompt == "a girl driving a red car"


def test_a_429_on_the_text_step_is_retried_after_the_servers_delay(
    gemini_worker: WorkerProcess, client: ImageGenClient, seed_node: dict[str, Any], fake: FakeGemini
) -> None:
    fake.script(Behaviour("error", code=429, retry_delay_s=1))
    result = client.submit(with_inputs(seed_node, prompt_enhancement="enhance")).wait(timeout=WAIT_S)

    assert result.status == "succeeded", result.errors
    first, second = text_requests(fake)
    assert second.timestamp - first.timestamp >= 1.0  # base delay is 0.1 s: only RetryInfo explains this
    assert result.prompt_step is not None and result.prompt_step.attempts == 2
    assert len(image_requests(fake)) == 1


def test_a_blocked_text_prompt_ends_the_job_blocked_with_its_reason(
    gemini_worker: WorkerProcess, client: ImageGenClient, seed_node: dict[str, Any], fake: FakeGemini
) -> None:
    fake.script(Behaviour("prompt_block", reason="PROHIBITED_CONTENT"))
    result = client.submit(with_inputs(seed_node, variations=2, prompt_enhancement="diversify")).wait(timeout=WAIT_S)

    assert result.status == "failed" and result.images == []
    assert [(e.kind, e.reason) for e in result.errors] == [("blocked", "PROHIBITED_CONTENT")] * 2
    assert "prompt step" in result.errors[0].message
    assert image_requests(fake) == []
    assert len(text_requests(fake)) == 1  # a block is not retried
    assert_paid_for(result)
    assert_matches_published_schema(result)


@pytest.mark.parametrize(
    ("behaviour", "why"),
    [
        (Behaviour("wrong_count"), "prompt(s)"),
        (Behaviour("ok", message="not json at all"), "JSON"),
        (Behaviour("ok", message='{"prompts": ["a car\\u001b[2J", "a bus"]}'), "control character U+001B"),
    ],
)
def test_a_refused_text_answer_is_still_counted_as_paid(
    gemini_worker: WorkerProcess,
    client: ImageGenClient,
    seed_node: dict[str, Any],
    fake: FakeGemini,
    behaviour: Behaviour,
    why: str,
) -> None:
    """The call was made and billed though its answer cannot be used: its tokens and cost count
    in the job's totals (they had been null, understating the spend)."""
    fake.script(behaviour)
    result = client.submit(with_inputs(seed_node, variations=2, prompt_enhancement="diversify")).wait(timeout=WAIT_S)

    assert result.status == "failed" and image_requests(fake) == [] and len(text_requests(fake)) == 1
    assert all(e.kind == "permanent" and why in e.message for e in result.errors), result.errors
    assert_paid_for(result)


def assert_paid_for(result: Any) -> None:
    step = result.prompt_step
    assert step is not None and step.usage is not None and step.usage.prompt_tokens > 0, step
    assert step.response_id and step.estimated_cost_usd is not None and step.estimated_cost_usd > 0
    assert result.usage == step.usage  # the job's totals (its cost is rounded to 6 decimals)
    assert result.estimated_cost_usd == pytest.approx(step.estimated_cost_usd, abs=1e-6)


def test_the_offline_model_has_an_offline_prompt_step(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    start_worker()
    result = client.submit(with_inputs(offline_node, variations=3, prompt_enhancement="diversify")).wait(timeout=WAIT_S)

    assert result.status == "succeeded", result.errors
    assert sorted(image.prompt or "" for image in result.images) == [
        f"a girl driving a red car (offline variation {n} of 3, not AI)" for n in (1, 2, 3)
    ]
    assert result.prompt_step is not None and result.prompt_step.text_model == "offline_prompt_writer"
    assert result.estimated_cost_usd == 0.0


def test_a_prompt_step_whose_earlier_delivery_died_while_publishing_is_finished(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    """The guard says "pending": a delivery died between writing the prompts and publishing
    the chord. The redelivery publishes it (before, it saw the claim, did nothing, and the job
    ended lost at its deadline)."""
    handle = client.submit(with_inputs(offline_node, variations=2, prompt_enhancement="diversify"))
    client.records.client.set(prompt_step_key(handle.job_id, 1), "pending", ex=600)
    start_worker()
    result = handle.wait(timeout=WAIT_S)
    assert result.status == "succeeded" and len(result.images) == 2
    assert client.records.client.get(prompt_step_key(handle.job_id, 1)) == b"done"


def test_two_copies_of_the_prompt_step_at_once_pay_for_one_text_call_and_one_chord(
    gemini_worker: WorkerProcess, client: ImageGenClient, seed_node: dict[str, Any], fake: FakeGemini
) -> None:
    """A prompt step sent twice (a job task redelivered once its dispatch lease ran out while the
    step still ran): one copy writes the prompts and publishes the
    chord; the other must pay neither for the text call nor for every variation again."""
    fake.latency_s = 1.0  # both copies are in the step at once
    inputs = with_inputs(seed_node, variations=2, prompt_enhancement="diversify")["inputs"]
    job_id, now = "prompt-step-twice", datetime.now(UTC).isoformat()
    client.records.claim(
        job_id, node_fingerprint="x", model=inputs["model"], variations=2, submitted_at=datetime.now(UTC)
    )
    variation = {"job_id": job_id, "run": 1, "prompt": inputs["user_query"], "model": inputs["model"]}
    step = {  # worker/tasks/prompt_step.py PromptStepWork, as run_job sends it
        "result_id": job_task_id(job_id, 1),
        "mode": "diversify",
        "text_model": "gemini_2_5_flash",
        "variations": [{**variation, "index": i, "size": inputs["size"]} for i in range(2)],
        "summary": {
            "job_id": job_id,
            "run": 1,
            "name": seed_node["name"],
            "model": inputs["model"],
            "size": inputs["size"],
            "variations": 2,
            "submitted_at": now,
            "started_at": now,
            "original_prompt": inputs["user_query"],
        },
    }
    for _ in range(2):
        client.celery.send_task(PROMPT_STEP, args=(step,))
    result = client.wait(job_id, timeout=WAIT_S)
    assert result.status == "succeeded", result.errors
    time.sleep(3)  # a second step or chord, if any, would have called the provider by now
    assert len(text_requests(fake)) == 1, gemini_worker.log()[-3000:]
    assert len(image_requests(fake)) == 2


def test_the_cli_fills_a_template_from_a_context_file(
    start_worker: StartWorker, job_env: dict[str, str], offline_node: dict[str, Any], tmp_path: Path
) -> None:
    start_worker()
    offline_node["inputs"]["user_query"] = "A poster of {{ llm_1.text }}"
    node_file, context_file = tmp_path / "node.json", tmp_path / "context.json"
    node_file.write_text(json.dumps(offline_node))
    context_file.write_text(json.dumps({"llm_2": {"text": "a fox"}}))

    refused = imagegen(job_env, "submit", str(node_file), "--context", str(context_file), "--job-id", "cli-tpl")
    assert refused.returncode == 2 and "'llm_1'" in refused.stderr and "inputs.user_query" in refused.stderr

    context_file.write_text(json.dumps({"llm_1": {"text": "a fox"}}))
    run = imagegen(job_env, "submit", str(node_file), "--context", str(context_file), "--wait", "--timeout", "60")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["original_prompt"] == "A poster of a fox"


def test_prompt_step_retries_and_failures_reach_the_workers_metrics(
    start_worker: StartWorker,
    gemini_worker: WorkerProcess,
    client: ImageGenClient,
    seed_node: dict[str, Any],
    fake: FakeGemini,
) -> None:
    """A failed prompt step ends its variations as if they had run: they count under the image
    model with the step's error kind, and a retried text call counts as a prompt-step retry."""
    gemini_worker.stop()  # this test's worker serves metrics
    port = free_port()
    start_worker(env={**gemini_worker.env, "IMAGEGEN_METRICS_PORT": str(port), "IMAGEGEN_METRICS_HOST": "127.0.0.1"})
    fake.script(Behaviour("error", code=503), Behaviour("prompt_block", reason="PROHIBITED_CONTENT"))
    result = client.submit(with_inputs(seed_node, variations=2, prompt_enhancement="diversify")).wait(timeout=WAIT_S)
    assert [e.kind for e in result.errors] == ["blocked", "blocked"]

    url, ended = f"http://127.0.0.1:{port}/metrics", ("imagegen_jobs_total", (("status", "failed"),))
    # finalize counts the job after it stores and announces the result, so a waiting client
    # can read its result a moment before the count is there
    assert wait_for(lambda: metric_samples(url).get(ended, 0) >= 1), "the failed job was never counted"
    found = metric_samples(url)
    model = seed_node["inputs"]["model"]
    assert found[("imagegen_variations_total", (("model", model), ("outcome", "blocked")))] == 2
    assert (
        found[("imagegen_prompt_step_retries_total", (("reason", "transient"), ("text_model", "gemini_2_5_flash")))]
        == 1
    )
    assert found[ended] == 1
