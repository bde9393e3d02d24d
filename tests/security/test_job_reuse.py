"""Reusing a job id: the same node is idempotent, a different node is a
conflict (never the old job's result), and a failed or partial job is run
again only when asked, keeping its previous result until the new one lands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contract.jobs import JobConflict
from producer.cli import EXIT_CONFLICT
from producer.client import ImageGenClient
from tests.cli import imagegen
from tests.conftest import StartWorker
from tests.redis_scan import all_redis_entries


def test_the_same_id_with_another_node_is_a_conflict_not_the_old_result(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    job_env: dict[str, str],
    tmp_path: Path,
) -> None:
    start_worker()
    first = client.submit(offline_node, job_id="reused/id-1").wait(timeout=60)
    other = {**offline_node, "inputs": {**offline_node["inputs"], "user_query": "something else entirely"}}
    with pytest.raises(JobConflict, match="different node"):
        client.submit(other, job_id="reused/id-1")
    # Key order, spacing and the description do not make a node different.
    same = json.loads(json.dumps({**offline_node, "description": "edited"}, sort_keys=True))
    again = client.submit(json.dumps(same, indent=4), job_id="reused/id-1")
    assert not again.created and again.wait(timeout=5) == first

    node_file = tmp_path / "other.json"
    node_file.write_text(json.dumps(other))
    run = imagegen(job_env, "submit", str(node_file), "--job-id", "reused/id-1", "--wait")
    assert run.returncode == EXIT_CONFLICT and run.stdout == ""
    assert "different node" in run.stderr and "Traceback" not in run.stderr


def test_a_failed_job_runs_again_on_request_and_keeps_its_result_until_replaced(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], tmp_path: Path
) -> None:
    failing = start_worker({"IMAGEGEN_OFFLINE_FAILURES": "0:permanent"})
    handle = client.submit(offline_node, job_id="flaky-1")
    failed = handle.wait(timeout=60)
    assert failed.status == "failed"
    failing.stop()

    with pytest.raises(JobConflict, match="different node"):  # a rerun is of the same node
        client.submit({**offline_node, "name": "renamed"}, job_id="flaky-1", rerun=True)
    rerun = client.submit(offline_node, job_id="flaky-1", rerun=True)
    assert rerun.created and rerun.run == 2
    assert client.status("flaky-1").state == "queued"
    assert client.result("flaky-1") == failed  # the previous result stays readable meanwhile

    start_worker()
    succeeded = client.wait("flaky-1", timeout=60)
    assert succeeded.status == "succeeded" and client.result("flaky-1") == succeeded
    [image] = succeeded.images
    assert image.uri.endswith("/flaky-1/variation-0.run2.png")  # never overwrites the earlier run's objects

    with pytest.raises(JobConflict, match="only a failed or partial job can be rerun"):
        client.submit(offline_node, job_id="flaky-1", rerun=True)


def test_a_running_job_cannot_be_rerun(client: ImageGenClient, offline_node: dict[str, Any]) -> None:
    client.submit(offline_node, job_id="queued-1")  # no worker: stays queued
    with pytest.raises(JobConflict, match="is queued"):
        client.submit(offline_node, job_id="queued-1", rerun=True)


def test_a_big_node_is_not_multiplied_by_its_variations_in_redis(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], redis_url: str
) -> None:
    """The description never leaves the producer; each variation carries the prompt, not the node."""
    canary = "DESCRIPTION-CANARY-" + "d" * 1900
    node = {**offline_node, "description": canary, "name": "n" * 200}
    node["inputs"] = {**node["inputs"], "variations": 8, "user_query": "p" * 7000}
    start_worker()
    result = client.submit(node, job_id="footprint-1").wait(timeout=60)
    assert result.status == "succeeded"
    entries = all_redis_entries(redis_url)
    assert not any(canary.encode() in value for value in entries.values())
    # Left behind by this job: its record, its result document and the variations' results.
    mine = {k: v for k, v in entries.items() if b"footprint-1" in k or b"footprint-1" in v}
    prompt_copies = sum(v.count(b"p" * 7000) for v in mine.values())
    # The result document records the prompt once (original_prompt); its "completed" event only
    # outlines the ending; never one copy per variation (8 here).
    assert prompt_copies == 1, f"{prompt_copies} copies of the prompt are kept in Redis after the job"
