"""Operators watch jobs in a real Flower: tasks visible behind basic auth,
Prometheus metrics exposed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

from devtools.flower_process import FlowerProcess
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
