"""Operators watch jobs in a real Flower: tasks visible behind basic auth,
Prometheus metrics exposed."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import redis
import requests

from devtools.flower_process import FlowerProcess
from devtools.redis_server import free_port
from producer.client import ImageGenClient
from tests.conftest import StartWorker


def test_flower_shows_the_jobs_tasks(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    job_env: dict[str, str],
    tmp_path: Path,
) -> None:
    start_worker()
    with FlowerProcess(job_env, ("ops", "s3cret-pw"), tmp_path) as flower:
        time.sleep(1)  # let Flower subscribe to events before the job runs
        offline_node["inputs"]["variations"] = 2
        job_id = client.submit(offline_node, job_id="flower-job-1").wait(timeout=60).job_id

        assert requests.get(f"{flower.url}/api/tasks", timeout=5).status_code == 401
        deadline = time.monotonic() + 20
        while True:
            response = requests.get(f"{flower.url}/api/tasks", auth=flower.auth, timeout=5)
            assert response.status_code == 200, response.text[:2000]
            tasks = response.json()
            names = sorted(t["name"] for t in tasks.values() if t.get("name"))
            if names.count("imagegen.generate_variation") == 2 and "imagegen.finalize" in names:
                break
            assert time.monotonic() < deadline, names
            time.sleep(0.5)
        info = requests.get(f"{flower.url}/api/task/info/{job_id}@1", auth=flower.auth, timeout=5).json()
        assert info["name"] == "imagegen.finalize" and info["state"] == "SUCCESS"
        metrics = requests.get(f"{flower.url}/metrics", timeout=5).text
        assert 'flower_events_total{task="imagegen.generate_variation",type="task-succeeded"' in metrics


def test_a_webhook_url_never_reaches_flower(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    job_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """A webhook URL may carry a bearer token in its path or query: deliveries name only the job,
    run and event (the worker reads the webhook from the job record), so Flower, which shows and
    keeps every task's arguments, never gets it, retries included (it had, 7 times a job)."""
    secret = "whsec_" + base64.b64encode(b"flower-test-key-0123456789abcdef").decode()
    start_worker({"WEBHOOK_FLOWER": secret})
    url = f"http://127.0.0.1:{free_port()}/hook/PATHCANARY7?token=QUERYCANARY7"  # refused: retried
    with FlowerProcess(job_env, ("ops", "s3cret-pw"), tmp_path) as flower:
        time.sleep(1)  # let Flower subscribe to events before the job runs
        webhook = {"url": url, "secret": "env:WEBHOOK_FLOWER"}
        client.submit(offline_node, job_id="flower-hook-1", webhook=webhook).wait(timeout=60)
        _retried_task(flower, "imagegen.deliver_webhook", timeout_s=30)
        _assert_shown_nowhere(flower, "CANARY7")


def test_a_retried_variation_shows_its_label_not_its_prompt_in_flower(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    job_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """A variation's message carries a short label for Flower; its retry kept it (Celery leaves
    it off a retry's message, which Flower then showed whole: the tenant's prompt, its target)."""
    start_worker({"IMAGEGEN_OFFLINE_FAILURES": "0:transient*1", "IMAGEGEN_RETRY_BASE_DELAY_S": "0.1"})
    offline_node["inputs"]["user_query"] = "PROMPTCANARY9 a confidential product launch"
    with FlowerProcess(job_env, ("ops", "s3cret-pw"), tmp_path) as flower:
        time.sleep(1)  # let Flower subscribe to events before the job runs
        assert client.submit(offline_node, job_id="flower-retry-1").wait(timeout=60).status == "succeeded"
        retried = _retried_task(flower, "imagegen.generate_variation", timeout_s=20, state="SUCCESS")
        assert retried["args"] == "(job flower-retry-1 run 1 variation 0)", retried["args"]
        _assert_shown_nowhere(flower, "PROMPTCANARY9")


def test_flower_reads_no_result_and_sends_no_task(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    job_env: dict[str, str],
    tmp_path: Path,
    redis_url: str,
) -> None:
    """A job's result document holds signed image URLs under the id ``<job id>@<run>`` that
    /api/tasks lists: Flower's one password must not read it (it did, through
    /api/task/result), nor run a task with the platform's credentials (/api/task/*apply*)."""
    start_worker()
    with FlowerProcess(job_env, ("ops", "s3cret-pw"), tmp_path) as flower:
        time.sleep(1)  # let Flower subscribe to events before the job runs
        result = client.submit(offline_node, job_id="flower-result-1").wait(timeout=60)
        assert result.status == "succeeded"
        task_id = f"{result.job_id}@1"
        deadline = time.monotonic() + 20
        while requests.get(f"{flower.url}/api/task/info/{task_id}", auth=flower.auth, timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "Flower never saw the job's finalize task"
            time.sleep(0.5)

        answer = requests.get(f"{flower.url}/api/task/result/{task_id}", auth=flower.auth, timeout=5)
        assert answer.status_code == 404
        assert result.images[0].uri not in answer.text
        queue = job_env["IMAGEGEN_QUEUE"]
        raw = redis.Redis.from_url(redis_url)
        for route in ("apply", "async-apply", "send-task"):
            sent = requests.post(
                f"{flower.url}/api/task/{route}/imagegen.sign_url",
                auth=flower.auth,
                json={"args": [result.images[0].uri], "queue": queue},
                timeout=10,
            )
            assert sent.status_code == 404, (route, sent.status_code)
        assert raw.llen(queue) == 0  # nothing was sent to the workers
        # What operators use Flower for still works.
        assert requests.get(f"{flower.url}/api/workers", auth=flower.auth, timeout=10).status_code == 200


def _retried_task(flower: FlowerProcess, name: str, timeout_s: float, state: str | None = None) -> dict[str, Any]:
    """The first task ``name`` that Flower shows retried (a retry keeps the task's id), once it is
    in ``state`` if one is given."""
    deadline = time.monotonic() + timeout_s
    while True:
        tasks = requests.get(f"{flower.url}/api/tasks", auth=flower.auth, timeout=5).json()
        retried = [t for t in tasks.values() if t.get("name") == name and t.get("retries")]
        if retried and (state is None or retried[0].get("state") == state):
            return dict(retried[0])
        assert time.monotonic() < deadline, f"no {name} retried in Flower"
        time.sleep(0.5)


def _assert_shown_nowhere(flower: FlowerProcess, canary: str) -> None:
    """``canary`` is in no task Flower lists, nor in any task's own page."""
    for task_id, task in requests.get(f"{flower.url}/api/tasks", auth=flower.auth, timeout=5).json().items():
        info = requests.get(f"{flower.url}/api/task/info/{task_id}", auth=flower.auth, timeout=5).text
        assert canary not in json.dumps(task) + info, task.get("name")
