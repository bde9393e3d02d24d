"""The worker's own Prometheus metrics count outcomes, which Flower's task events cannot tell
apart: there every variation, job and webhook delivery ends "task-succeeded"."""

from __future__ import annotations

import base64
import socket
from typing import Any

import requests

from devtools.redis_server import free_port
from producer.client import ImageGenClient
from tests.conftest import StartWorker, metric_samples, wait_for

SECRET = "whsec_" + base64.b64encode(b"metrics-test-key-0123456789abcdef").decode()


def test_outcomes_retries_jobs_webhooks_and_the_queue_are_counted(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], job_env: dict[str, str]
) -> None:
    port = free_port()
    start_worker(
        {
            "IMAGEGEN_METRICS_PORT": str(port),
            "IMAGEGEN_METRICS_HOST": "127.0.0.1",
            # variation 1 fails for good, 2 once (then succeeds), 3 is blocked; 0 succeeds
            "IMAGEGEN_OFFLINE_FAILURES": "1:permanent,2:transient*1,3:blocked",
            "IMAGEGEN_RETRY_BASE_DELAY_S": "0.2",
            "WEBHOOK_METRICS": SECRET,
        }
    )
    offline_node["inputs"]["variations"] = 4
    hook = {"url": f"http://127.0.0.1:{free_port()}/hook?token=Q", "secret": "env:WEBHOOK_METRICS"}  # refused
    result = client.submit(offline_node, job_id="metrics-job-1", webhook=hook).wait(timeout=60)
    assert result.status == "partial"

    url = f"http://127.0.0.1:{port}/metrics"
    model = (("model", "offline_preview"),)
    retried, ended = (
        ("imagegen_webhook_deliveries_total", (("outcome", "retried"),)),
        ("imagegen_jobs_total", (("status", "partial"),)),
    )
    # both are counted after the result a waiting client reads: the job once it is stored and
    # announced, the webhook by its own task
    assert wait_for(lambda: min(metric_samples(url).get(key, 0) for key in (retried, ended)) >= 1, timeout=20)
    found = metric_samples(url)
    for outcome, count in (("succeeded", 2), ("permanent", 1), ("blocked", 1)):
        assert found[("imagegen_variations_total", (*model, ("outcome", outcome)))] == count, outcome
    assert found[("imagegen_variation_retries_total", (*model, ("reason", "transient")))] == 1
    assert found[("imagegen_variation_seconds_count", model)] == 2
    assert found[ended] == 1
    assert found[("imagegen_queue_messages", (("queue", job_env["IMAGEGEN_QUEUE"]),))] >= 0
    text = requests.get(url, timeout=5).text
    assert "metrics-job-1" not in text and "token" not in text  # bounded labels: no ids, no URLs


def test_a_port_it_cannot_listen_on_is_logged_and_the_worker_runs_on(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        worker = start_worker({"IMAGEGEN_METRICS_PORT": str(port), "IMAGEGEN_METRICS_HOST": "127.0.0.1"})
        assert client.submit(offline_node).wait(timeout=60).status == "succeeded"
    assert f"no metrics endpoint: cannot listen on 127.0.0.1:{port}" in worker.log()
