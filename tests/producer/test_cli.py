"""``imagegen`` as a user runs it: a real process, real Redis, real worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from contract.redis_client import redacted_url
from tests.cli import imagegen
from tests.conftest import ROOT, StartWorker, request_keys


@pytest.fixture
def bad_size_node(tmp_path: Path, seed_node: dict[str, Any]) -> Path:
    seed_node["inputs"].update(model="gemini_2_5_image", size="1000x1000")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(seed_node))
    return path


def test_validate_reports_size_and_allowed_sizes(job_env: dict[str, str], bad_size_node: Path) -> None:
    run = imagegen(job_env, "validate", str(bad_size_node))
    assert run.returncode == 2
    assert 'inputs.size = "1000x1000"' in run.stderr and "1024x1024, 832x1248" in run.stderr
    assert "Traceback" not in run.stderr


def test_submit_of_an_invalid_node_enqueues_nothing(
    job_env: dict[str, str], bad_size_node: Path, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    before = request_keys(client)
    run = imagegen(job_env, "submit", str(bad_size_node), "--wait", "--job-id", "bad id")
    assert run.returncode == 2 and "inputs.size" in run.stderr and "allowed sizes" in run.stderr
    assert '- job_id = "bad id"' in run.stderr  # every problem in one answer, not one round each
    assert run.stdout == ""
    assert not request_keys(client) - before  # no job record, no queue entry
    assert client.llen(job_env["IMAGEGEN_QUEUE"]) == 0


def test_an_unreadable_file_is_a_usage_error(job_env: dict[str, str], tmp_path: Path) -> None:
    run = imagegen(job_env, "submit", str(tmp_path / "missing.json"))
    assert run.returncode == 2 and "cannot read" in run.stderr and "missing.json" in run.stderr
    assert "queue" not in run.stderr and "Traceback" not in run.stderr


def test_a_bad_catalog_file_is_a_settings_error_naming_it(job_env: dict[str, str], tmp_path: Path) -> None:
    # It was a pydantic traceback from validate, and "cannot reach the queue" for a missing file.
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"models": {"gemini_2_5_image": {"sizes": {"1024x1024": {"tier": "9K"}}}}}))
    for path in (catalog, tmp_path / "missing.json"):
        run = imagegen(
            {**job_env, "IMAGEGEN_MODEL_CATALOG_FILE": str(path)}, "validate", str(ROOT / "examples/seed-node.json")
        )
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.startswith(f"imagegen: invalid settings: IMAGEGEN_MODEL_CATALOG_FILE: {path}: "), run.stderr


def test_a_reader_that_stops_reading_is_not_a_queue_failure(job_env: dict[str, str]) -> None:
    # `imagegen status J | head -1` said "cannot reach the queue ... BrokenPipeError", exit 5.
    process = subprocess.Popen(
        [sys.executable, "-m", "producer.cli", "validate", str(ROOT / "examples/seed-node.json")],
        cwd=ROOT,
        env={**os.environ, **job_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the first line is written
    errors = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0, errors
    assert "cannot reach" not in errors and "Traceback" not in errors


def test_validate_takes_the_context_submit_takes(job_env: dict[str, str], tmp_path: Path) -> None:
    # /v1/validate accepted a context; `imagegen validate --context` was "unrecognized arguments".
    node = json.loads((ROOT / "examples/seed-node.json").read_text())
    node["inputs"]["user_query"] = "a {{ llm_1.text }} car"
    (tmp_path / "node.json").write_text(json.dumps(node))
    (tmp_path / "context.json").write_text(json.dumps({"llm_1": {"text": "red"}}))
    (tmp_path / "empty.json").write_text("{}")
    run = imagegen(job_env, "validate", str(tmp_path / "node.json"), "--context", str(tmp_path / "context.json"))
    assert run.returncode == 0 and run.stdout.startswith("valid: 1 x gemini_3_image"), run.stderr
    run = imagegen(job_env, "validate", str(tmp_path / "node.json"), "--context", str(tmp_path / "empty.json"))
    assert run.returncode == 2 and "placeholder(s) 'llm_1' that the context does not provide" in run.stderr


def test_validate_accepts_the_seed_from_stdin(job_env: dict[str, str]) -> None:
    run = imagegen(job_env, "validate", "-", stdin=(ROOT / "examples" / "seed-node.json").read_text())
    assert run.returncode == 0 and "1 x gemini_3_image at 1024x1024" in run.stdout


def test_submit_wait_status_and_result(
    job_env: dict[str, str], start_worker: StartWorker, tmp_path: Path, offline_node: dict[str, Any]
) -> None:
    start_worker()
    node_file = tmp_path / "node.json"
    node_file.write_text(json.dumps(offline_node))

    waited = imagegen(job_env, "submit", str(node_file), "--wait", "--timeout", "60", "--job-id", "cli-1")
    assert waited.returncode == 0, waited.stderr
    document = json.loads(waited.stdout)
    assert document["status"] == "succeeded" and document["job_id"] == "cli-1"

    again = imagegen(job_env, "submit", str(node_file), "--job-id", "cli-1")
    assert again.returncode == 0 and again.stdout.strip() == "cli-1"
    assert "submitted before with this node and is succeeded; not enqueued again" in again.stderr
    assert "--rerun" not in again.stderr

    status = json.loads(imagegen(job_env, "status", "cli-1").stdout)
    assert (status["state"], status["done"], status["variations"], status["finished"]) == ("succeeded", 1, 1, True)
    assert json.loads(imagegen(job_env, "result", "cli-1").stdout) == document


def test_failed_and_partial_jobs_exit_non_zero(
    job_env: dict[str, str], start_worker: StartWorker, tmp_path: Path, offline_node: dict[str, Any]
) -> None:
    start_worker({"IMAGEGEN_OFFLINE_FAILURES": "0:permanent"})
    offline_node["inputs"]["variations"] = 2
    node_file = tmp_path / "node.json"
    node_file.write_text(json.dumps(offline_node))
    partial = imagegen(job_env, "submit", str(node_file), "--wait", "--timeout", "60")
    assert partial.returncode == 3 and json.loads(partial.stdout)["status"] == "partial"
    offline_node["inputs"]["variations"] = 1
    node_file.write_text(json.dumps(offline_node))
    failed = imagegen(job_env, "submit", str(node_file), "--wait", "--timeout", "60", "--job-id", "cli-failed")
    assert failed.returncode == 1 and json.loads(failed.stdout)["status"] == "failed"
    again = imagegen(job_env, "submit", str(node_file), "--job-id", "cli-failed")
    assert again.returncode == 0 and "is failed; not enqueued again; --rerun runs it again" in again.stderr


def test_unknown_job_and_unreachable_queue_are_clear_errors(job_env: dict[str, str]) -> None:
    unknown = imagegen(job_env, "status", "no-such-job")
    assert unknown.returncode == 4 and "no job 'no-such-job'" in unknown.stderr
    unreachable = {"REDIS_URL": "redis://:hunter2@127.0.0.1:1/0", "IMAGEGEN_CLIENT_REDIS_PATIENCE_S": "2"}
    down = imagegen({**job_env, **unreachable}, "status", "x")
    assert down.returncode == 5 and "cannot reach the queue" in down.stderr
    assert "hunter2" not in down.stderr and "Traceback" not in down.stderr
    no_broker = {"IMAGEGEN_BROKER_URL": "amqp://guest:s3cret@127.0.0.1:1//", "IMAGEGEN_CLIENT_REDIS_PATIENCE_S": "1"}
    node = str(ROOT / "examples" / "seed-node.json")
    broker_down = imagegen({**job_env, **no_broker}, "submit", node)
    assert (
        broker_down.returncode == 5
        and "cannot reach the broker at amqp://guest:***@127.0.0.1:1//" in broker_down.stderr
    )
    assert "(IMAGEGEN_BROKER_URL)" in broker_down.stderr and "s3cret" not in broker_down.stderr


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("redis://127.0.0.1:1/0?password=s3cretpw", "s3cretpw"),  # redis-py reads ?password= too
        ("sentinel://:s3cretpw@127.0.0.1:1,127.0.0.1:2/mymaster/0", "s3cretpw"),  # the HA form: two sentinels
    ],
)
def test_an_unreachable_queue_is_named_without_its_password_whatever_the_url_form(
    job_env: dict[str, str], url: str, secret: str
) -> None:
    """Both had been printed (the query's password) or had crashed the message with a traceback
    (a netloc of two hosts has no single port)."""
    down = imagegen({**job_env, "REDIS_URL": url, "IMAGEGEN_CLIENT_REDIS_PATIENCE_S": "0"}, "status", "x")
    assert down.returncode == 5 and "cannot reach the queue at" in down.stderr, down.stderr
    assert secret not in down.stderr and "Traceback" not in down.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:pw@[::1]:6379/0", "redis://user:***@[::1]:6379/0"),
        ("rediss://h:6380/0?password=pw&ssl_cert_reqs=none", "rediss://h:6380/0?…"),
        ("sentinel://:pw@a:1,b:2/svc/0", "sentinel://:***@a:1,b:2/svc/0"),
        ("amqp://guest:p@w:d@host:notaport//", "amqp://guest:***@host:notaport//"),
        ("redis://h:6379/0#pw", "redis://h:6379/0?…"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_redacted_url_shows_no_password_and_never_raises(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


def test_cancel_a_queued_job_then_again(job_env: dict[str, str], tmp_path: Path, offline_node: dict[str, Any]) -> None:
    node_file = tmp_path / "node.json"
    node_file.write_text(json.dumps(offline_node))
    assert imagegen(job_env, "submit", str(node_file), "--job-id", "cli-cancel").returncode == 0  # no worker: queued

    first = imagegen(job_env, "cancel", "cli-cancel")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"job_id": "cli-cancel", "state": "queued", "changed": True}
    assert "cancel requested" in first.stderr

    again = imagegen(job_env, "cancel", "cli-cancel")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False
    assert "requested before" in again.stderr

    unknown = imagegen(job_env, "cancel", "never-submitted")
    assert unknown.returncode == 4 and "never-submitted" in unknown.stderr
    assert imagegen(job_env, "cancel", "../x").returncode == 2


def test_a_canceled_job_has_its_own_exit_code(
    job_env: dict[str, str], start_worker: StartWorker, tmp_path: Path, offline_node: dict[str, Any]
) -> None:
    offline_node["inputs"]["variations"] = 4
    node_file = tmp_path / "node.json"
    node_file.write_text(json.dumps(offline_node))
    assert imagegen(job_env, "submit", str(node_file), "--job-id", "cli-canceled").returncode == 0
    assert imagegen(job_env, "cancel", "cli-canceled").returncode == 0
    start_worker()  # the worker finds the queued job canceled: it ends canceled
    run = imagegen(job_env, "result", "cli-canceled", "--wait", "--timeout", "60")
    assert run.returncode == 7, run.stderr
    assert json.loads(run.stdout)["status"] == "canceled"


def test_serve_refuses_bad_settings_in_one_line(job_env: dict[str, str]) -> None:
    bad_port = imagegen(job_env, "serve", "--port", "70000")
    assert bad_port.returncode == 2 and "not a TCP port" in bad_port.stderr
    for workers in ("0", "-1", "65", "two", "1e3"):
        bad_workers = imagegen(job_env, "serve", "--workers", workers)
        assert bad_workers.returncode == 2 and "is not a number of processes from 1 to 64" in bad_workers.stderr
    bad_tokens = imagegen({**job_env, "IMAGEGEN_API_TOKENS": "acme=the-token-itself"}, "serve", "--port", "1")
    assert bad_tokens.returncode == 2 and "IMAGEGEN_API_TOKENS" in bad_tokens.stderr
    assert "the-token-itself" not in bad_tokens.stderr and "Traceback" not in bad_tokens.stderr


def test_bad_settings_and_timeouts_are_one_line_usage_errors(job_env: dict[str, str], tmp_path: Path) -> None:
    """Exit 2 naming the variable or option and what is allowed; no traceback, no secret."""
    secrets = {"GEMINI_API_KEY": "AIza-cli-secret-0123456789", "REDIS_URL": "http://127.0.0.1:6379/0"}
    bad_url = imagegen({**job_env, **secrets}, "validate", str(ROOT / "examples" / "seed-node.json"))
    assert bad_url.returncode == 2 and "REDIS_URL: scheme 'http' is not one of" in bad_url.stderr
    assert "Traceback" not in bad_url.stderr and "AIza-cli-secret" not in bad_url.stderr
    bad_number = imagegen({**job_env, "IMAGEGEN_MAX_VARIATIONS": "lots"}, "status", "x")
    assert bad_number.returncode == 2 and "IMAGEGEN_MAX_VARIATIONS='lots'" in bad_number.stderr
    for timeout in ("nan", "inf", "-1", "soon"):
        refused = imagegen(job_env, "result", "x", "--wait", "--timeout", timeout)
        assert refused.returncode == 2 and "is not a number of seconds" in refused.stderr, timeout
        assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    ("uri", "shown"),
    [("s3://b/" + "k" * 3000, "(3007 characters)"), ("s3://b/k\n\x1b[31mX", r"s3://b/k\n\u001b[31mX"), ("", '""')],
)
def test_a_bad_uri_to_sign_is_a_usage_error_naming_it(job_env: dict[str, str], uri: str, shown: str) -> None:
    """Refused before any message is sent; no traceback, and the terminal gets no raw escapes."""
    run = imagegen(job_env, "sign", uri, "--timeout", "1")
    assert run.returncode == 2, run.stderr
    assert "invalid sign request" in run.stderr and "- uri = " in run.stderr and shown in run.stderr
    assert "Traceback" not in run.stderr and "\x1b" not in run.stderr
