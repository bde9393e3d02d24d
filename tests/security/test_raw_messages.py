"""Messages sent to the broker past the producer (a forged or stale message): every task parses
its payload before its body, refuses in one log line what does not parse, checks the rest before
any cost, and never answers with a traceback, a forged log line or an image nobody can sign."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery import Task

from contract.queue import GENERATE_VARIATION, RUN_JOB, RUN_JOB_FROM_UPSTREAM, SIGN_URL, job_task_id
from contract.work import JobOrder, VariationWork
from producer.client import ImageGenClient
from tests.conftest import StartWorker, WorkerProcess
from worker.errors import NotStoredHere
from worker.payloads import PayloadRefused, describe, parse_arguments
from worker.storage.keys import check_image_key

FORGED = "FORGED LINE for job victim"


def wait_for_line(worker: WorkerProcess, needle: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in worker.log().splitlines() if needle in line]
        if lines:
            return lines[0]
        time.sleep(0.2)
    raise AssertionError(f"no log line with {needle!r}:\n{worker.log()[-3000:]}")


def stored_files(job_env: dict[str, str]) -> list[Path]:
    root = Path(job_env["IMAGEGEN_STORAGE_URL"])
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


def variation(**fields: Any) -> dict[str, Any]:
    good = {"job_id": f"raw-{uuid.uuid4().hex[:6]}", "run": 1, "index": 0, "prompt": "a red car"}
    return {**good, "model": "offline_preview", "size": "1024x1024", **fields}


# Each: a field of a raw variation, the value, and what the refusal line names.
PAYLOAD_REFUSALS = [
    ("job_id", f"raw-x\n{FORGED}", "work: job_id: Value error, invalid job id"),
    ("job_id", "a@1", "work: job_id: Value error, invalid job id"),
    ("job_id", "x" * 200, "work: job_id: Value error, invalid job id"),
    ("index", -1, "work: index: Input should be greater than or equal to 0"),
    ("index", 5000, "work: index: Input should be less than or equal to 999"),
    ("run", 0, "work: run: Input should be greater than or equal to 1"),
    ("seed", 2**70, "work: seed: Input should be less than or equal to 2147483647"),
    ("prompt", "", "work: prompt: String should have at least 1 character"),
]

PROMPT_REFUSALS = [
    ("x" * 200_000, "prompt refused: it is 200000 characters; at most 8000 are allowed"),
    ("hi\x00\x1b[31m", "prompt refused: it contains the control character U+0000 at position 2"),
    ("   ", "prompt refused: it is empty"),
]


def test_raw_variations_that_break_a_rule_are_refused_before_any_cost(
    start_worker: StartWorker, client: ImageGenClient, job_env: dict[str, str]
) -> None:
    """Without these checks each of them was generated (paid, with Gemini) and then refused by the
    store, or stored under a key ``sign`` never finds (``variation--1.png``, ``.run0``)."""
    worker = start_worker()
    for field, value, _ in PAYLOAD_REFUSALS:
        client.celery.send_task(GENERATE_VARIATION, args=(variation(**{field: value}),))
    prompt_jobs = []
    for prompt, _ in PROMPT_REFUSALS:
        work = variation(prompt=prompt)
        prompt_jobs.append(work["job_id"])
        client.celery.send_task(GENERATE_VARIATION, args=(work,))

    deadline = time.monotonic() + 30
    while worker.log().count("message refused, its payload does not parse") < len(PAYLOAD_REFUSALS):
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.2)
    for _, _, named in PAYLOAD_REFUSALS:
        assert named in worker.log()
    for job_id, (_, named) in zip(prompt_jobs, PROMPT_REFUSALS, strict=True):
        line = wait_for_line(worker, f"job {job_id} variation 0 failed")
        assert f"permanent ({named}" in line
    log = worker.log()
    assert log.count("message refused, its payload does not parse") == len(PAYLOAD_REFUSALS)
    assert FORGED not in log.replace(f"\\n{FORGED}", "")  # escaped inside the refusal, never a line of its own
    assert "x" * 201 not in log and "Traceback" not in log and "unexpected" not in log
    assert stored_files(job_env) == []  # nothing generated, nothing stored


def test_a_raw_order_that_does_not_parse_ends_its_job_failed_naming_the_field(
    start_worker: StartWorker, client: ImageGenClient
) -> None:
    """Celery used to raise the pydantic error out of the task: a traceback in the log, and the job
    left ``queued`` until the lost-job sweep."""
    worker = start_worker()
    job_id = f"raw-{uuid.uuid4().hex[:6]}"
    client.records.claim(
        job_id, node_fingerprint="f", model="offline_preview", variations=1, submitted_at=datetime.now(UTC)
    )
    order = {"job_id": job_id, "run": 1, "node": {"name": "n"}}  # no submitted_at
    client.celery.send_task(RUN_JOB, args=(order,), task_id=job_task_id(job_id, 1))
    result = client.wait(job_id, timeout=30)
    assert result.status == "failed"
    [error] = result.errors
    assert error.kind == "permanent"
    assert error.message == "the job's order was refused: order: submitted_at: Field required"
    assert "Traceback" not in worker.log() and "raised unexpected" not in worker.log()


def test_a_raw_order_may_not_end_another_run_than_its_own(start_worker: StartWorker, client: ImageGenClient) -> None:
    """The refusal ends a job only under the run's own task id: a message may not end a job it
    does not run, nor write a document under another job's id."""
    worker = start_worker()
    job_id = f"raw-{uuid.uuid4().hex[:6]}"
    client.records.claim(
        job_id, node_fingerprint="f", model="offline_preview", variations=1, submitted_at=datetime.now(UTC)
    )
    other = f"raw-other-{uuid.uuid4().hex[:6]}@1"
    client.celery.send_task(RUN_JOB, args=({"job_id": job_id, "run": 1, "node": {}},), task_id=other)
    for bad_id in (123, f"x\n{FORGED}"):
        client.celery.send_task(RUN_JOB, args=({"job_id": bad_id, "node": {}},))
    wait_for_line(worker, f"task {RUN_JOB}[{other}]: message refused")
    deadline = time.monotonic() + 30
    while worker.log().count("message refused") < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker.log().count("message refused") == 3
    status = client.records.read(job_id)
    assert status is not None and status.state == "queued"  # left to its own run (or the sweep)
    assert client.celery.AsyncResult(other).state == "PENDING"  # no document under the other id
    assert FORGED not in worker.log().replace(f"\\n{FORGED}", "") and "Traceback" not in worker.log()


@pytest.mark.parametrize("inputs", [["not", "a", "dict"], "text"])
def test_an_upstream_link_whose_inputs_are_not_an_object_ends_its_job(
    start_worker: StartWorker, client: ImageGenClient, inputs: Any
) -> None:
    worker = start_worker()
    job_id = f"raw-{uuid.uuid4().hex[:6]}"
    client.records.claim(
        job_id, node_fingerprint="f", model="offline_preview", variations=1, submitted_at=datetime.now(UTC)
    )
    order = {
        "job_id": job_id,
        "run": 1,
        "node": {"name": "n", "inputs": inputs},
        "submitted_at": "2026-12-01T00:00:00Z",
    }
    client.celery.send_task(RUN_JOB_FROM_UPSTREAM, args=("a prompt from the LLM", order))
    result = client.wait(job_id, timeout=30)
    assert result.status == "failed" and result.errors[0].message == "inputs: must be a JSON object {...}"
    assert "Traceback" not in worker.log() and "raised unexpected" not in worker.log()


def test_an_upstream_link_with_a_broken_order_is_refused_in_one_line(
    start_worker: StartWorker, client: ImageGenClient
) -> None:
    worker = start_worker()
    client.celery.send_task(RUN_JOB_FROM_UPSTREAM, args=("prompt", {"job_id": f"x\n{FORGED}", "node": {}}))
    client.celery.send_task(
        RUN_JOB_FROM_UPSTREAM,
        args=("prompt", {"job_id": f"x\n{FORGED}", "node": {}, "submitted_at": "2026-12-01T00:00:00Z"}),
    )
    wait_for_line(worker, "job order refused: order: submitted_at: Field required")
    wait_for_line(worker, "job order refused: job_id 'x\\nFORGED")
    assert FORGED not in worker.log().replace(f"\\n{FORGED}", "") and "Traceback" not in worker.log()


def test_sign_requests_past_the_producer_get_an_answer_and_forge_no_log_line(
    start_worker: StartWorker, client: ImageGenClient
) -> None:
    worker = start_worker()
    forged_uri = f"file:///x\n{FORGED}/variation-0.png"
    answer = client.celery.send_task(SIGN_URL, args=({"uri": forged_uri},)).get(timeout=30)
    assert answer["error"]["kind"] == "not_found"
    unknown_cloud = {"uri": "ftp://b/t/variation-0.png", "target": {"provider": "ftp", "bucket": "b"}}
    answer = client.celery.send_task(SIGN_URL, args=(unknown_cloud,)).get(timeout=30)
    assert answer["error"] == {
        "kind": "permanent",
        "message": "cloud_provider 'ftp' is not supported; allowed: aws, azure, gcp",
    }
    broken = {"uri": "file:///x/variation-0.png", "tenant": "../acme"}
    answer = client.celery.send_task(SIGN_URL, args=(broken,)).get(timeout=30)
    assert answer["error"]["kind"] == "permanent"
    assert answer["error"]["message"].startswith("the sign request was refused: request: tenant: String should match")
    log = worker.log()
    assert FORGED not in log.replace(f"\\n{FORGED}", "")
    assert "Traceback" not in log and "internal error" not in log


def test_a_raw_variation_for_an_unknown_cloud_is_a_permanent_error_naming_it(
    start_worker: StartWorker, client: ImageGenClient, job_env: dict[str, str]
) -> None:
    worker = start_worker()
    work = VariationWork.model_validate(variation())
    raw = {**work.model_dump(mode="json"), "target": {"provider": "ftp", "bucket": "b", "credentials": None}}
    client.celery.send_task(GENERATE_VARIATION, args=(raw,))
    line = wait_for_line(worker, f"job {work.job_id} variation 0 failed")
    assert "permanent (cloud_provider 'ftp' is not supported" in line
    assert "Traceback" not in worker.log() and "internal error" not in worker.log()
    assert stored_files(job_env) == []


# --- the seams -------------------------------------------------------------------------------------


def _task_fun(self: Task, work: VariationWork, note: str = "") -> None:
    raise AssertionError("never called")


def test_parse_arguments_parses_payloads_and_names_every_broken_field() -> None:
    good = variation()
    bound = parse_arguments(_task_fun, (object(), good), {})
    assert bound is not None and isinstance(bound.arguments["work"], VariationWork)
    with pytest.raises(PayloadRefused) as refused:
        parse_arguments(_task_fun, (object(), {**good, "index": -1, "run": "x", "extra": 1}), {})
    problem = refused.value.problem
    assert "work: index: Input should be greater than or equal to 0" in problem
    assert "work: run: Input should be a valid integer" in problem
    assert "work: extra: Extra inputs are not permitted" in problem
    assert refused.value.arguments["work"]["index"] == -1  # as it arrived, for the task's refusal
    with pytest.raises(PayloadRefused, match="its arguments do not fit the task"):
        parse_arguments(_task_fun, (object(), good, "a", "b"), {})


def test_a_refusal_quotes_no_value_but_an_excerpt_and_stays_one_bounded_line() -> None:
    secret_like = "AKIA" + "S" * 50_000
    with pytest.raises(PayloadRefused) as refused:
        parse_arguments(_task_fun, (object(), {**variation(), "seed": secret_like, "job_id": "a\nb" * 3000}), {})
    problem = refused.value.problem
    assert secret_like[:60] not in problem and "\n" not in problem and len(problem) < 700


def test_describe_names_the_payload_and_the_field() -> None:
    try:
        JobOrder.model_validate({"job_id": "j", "node": {}})
    except Exception as exc:
        assert describe(exc, "order") == "order: submitted_at: Field required"  # type: ignore[arg-type]
    else:
        raise AssertionError("parsed")


def test_a_prefix_with_a_namespace_does_not_move_the_tenant_of_a_key() -> None:
    """tenant acme naming globex's own prefix: ``t/globex/x`` + ``t/acme/y`` is globex's job
    ``x/t/acme/y``, not acme's job ``y``."""
    key = "t/globex/x/t/acme/y/variation-0.png"
    with pytest.raises(NotStoredHere):
        check_image_key(key, "t/globex/x", "acme")
    assert check_image_key("img/t/acme/y/variation-0.png", "img", "acme") == "img/t/acme/y/variation-0.png"


def test_a_first_attempt_in_the_future_is_taken_as_now() -> None:
    """A message's own start time cannot stretch its retries' time budget without end."""
    state = VariationWork.model_validate(variation(retry={"first_attempt_at": time.time() + 10**9})).retry
    assert state.first_attempt_at is not None and state.first_attempt_at <= time.time()
    for bad in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match="first_attempt_at"):
            VariationWork.model_validate(variation(retry={"first_attempt_at": bad}))
    with pytest.raises(ValueError, match="throttled"):
        VariationWork.model_validate(variation(retry={"throttled": -5}))
