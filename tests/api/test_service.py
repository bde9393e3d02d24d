"""The API as a service: its OpenAPI document, probes, Redis faults and webhook wiring."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from openapi_spec_validator import validate

from contract.result import JobResult
from devtools.redis_server import free_port
from tests.api.conftest import ApiServer, StartApi, wait_finished
from tests.conftest import StartWorker, request_keys


def test_openapi_is_generated_from_the_contracts_models(api: ApiServer) -> None:
    document = api.client(None).get("/openapi.json").json()
    validate(document)  # a valid OpenAPI 3.1 document
    schemas = document["components"]["schemas"]
    contract = JobResult.model_json_schema(mode="serialization", ref_template="#/components/schemas/{model}")
    # The same properties, types, descriptions and required fields (FastAPI drops output defaults).
    assert _without_defaults(schemas["JobResult"]["properties"]) == _without_defaults(contract["properties"])
    assert schemas["JobResult"]["required"] == contract["required"]
    assert _without_defaults(schemas["ImageRecord"]) == _without_defaults(contract["$defs"]["ImageRecord"])
    assert "canceled" in schemas["JobView"]["properties"]["state"]["enum"]
    assert {"ImageGenerationNode", "NodeInputs", "SubmitEnvelope", "Webhook", "ProblemDocument"} <= set(schemas)
    paths = document["paths"]
    assert {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/cancel",
        "/v1/validate",
        "/v1/models",
        "/v1/sign",
        "/healthz",
        "/readyz",
    } <= set(paths)
    submit = paths["/v1/jobs"]["post"]
    body = submit["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert body == [
        {"$ref": "#/components/schemas/ImageGenerationNode"},
        {"$ref": "#/components/schemas/SubmitEnvelope"},
    ]
    assert submit["responses"]["422"]["content"] == {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDocument"}}
    }
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def _without_defaults(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_defaults(v) for k, v in schema.items() if k != "default"}
    if isinstance(schema, list):
        return [_without_defaults(item) for item in schema]
    return schema


def test_probes_and_an_unreachable_redis(start_api: StartApi, offline_node: dict[str, Any], api: ApiServer) -> None:
    assert api.client(None).get("/readyz").json() == {"status": "ready"}

    dead = start_api({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "IMAGEGEN_CLIENT_REDIS_PATIENCE_S": "2"})
    assert dead.client(None).get("/healthz").status_code == 200  # the process is up
    not_ready = dead.client(None).get("/readyz")
    assert not_ready.status_code == 503 and not_ready.headers["content-type"] == "application/problem+json"
    http = dead.client("acme", timeout=120)
    # (The client rides out a Redis restart for IMAGEGEN_CLIENT_REDIS_PATIENCE_S before it gives up.)
    response = http.post("/v1/jobs", json=offline_node)
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    assert "127.0.0.1" not in response.text and "Traceback" not in response.text
    # Nothing needs Redis to say a node is invalid.
    offline_node["inputs"]["size"] = "3x3"
    assert http.post("/v1/jobs", json=offline_node).status_code == 422


class _Receiver(ThreadingHTTPServer):
    deliveries: list[dict[str, Any]]


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    """A local webhook receiver that records every POST (headers and JSON body)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.server.deliveries.append({"headers": dict(self.headers), "body": json.loads(body)})  # type: ignore[attr-defined]
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = _Receiver(("127.0.0.1", free_port()), Handler)
    server.deliveries = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_webhook_given_over_http_is_delivered(
    api: ApiServer, start_worker: StartWorker, receiver: _Receiver, offline_node: dict[str, Any]
) -> None:
    key = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    start_worker({"TEST_API_WEBHOOK_KEY": key})
    http = api.client("acme")
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    webhook = {"url": url, "events": ["completed"], "secret": "env:TEST_API_WEBHOOK_KEY"}
    response = http.post("/v1/jobs", json={"node": offline_node, "job_id": "hooked", "webhook": webhook})
    assert response.status_code == 202, response.text
    view = wait_finished(http, "hooked")

    # Delivery is asynchronous (a task after the completed event): wait for it, bounded.
    for _ in range(200):
        if receiver.deliveries:
            break
        threading.Event().wait(0.1)
    assert receiver.deliveries, "no webhook delivery arrived"
    delivery = receiver.deliveries[0]
    assert delivery["headers"].get("webhook-signature", "").startswith("v1,")
    assert key not in json.dumps(delivery)
    assert view["result"]["status"] == "succeeded"
    # The receiver sees the job id it gave, not the tenant namespace the API stores it under.
    assert delivery["body"]["data"]["job_id"] == "hooked" == view["result"]["job_id"]

    # How it fared, over HTTP too (it was only in the Python client), for its owner only.
    for _ in range(200):
        deliveries = http.get("/v1/jobs/hooked/webhooks").json()
        if deliveries and deliveries[0]["state"] != "pending":
            break
        threading.Event().wait(0.1)
    assert [(d["event"], d["state"], d["last_http_status"]) for d in deliveries] == [("completed", "delivered", 204)]
    assert api.client("globex").get("/v1/jobs/hooked/webhooks").status_code == 404
    assert http.get("/v1/jobs/never-submitted/webhooks").status_code == 404
    refused = http.post("/v1/jobs", json={"node": offline_node, "job_id": "x/webhooks"})
    assert refused.status_code == 422 and "(API routes)" in refused.text  # the route's segment is no job id

    # The webhook is part of the job: the same id with another webhook is a conflict.
    other = {**webhook, "url": url + "/other"}
    assert http.post("/v1/jobs", json={"node": offline_node, "job_id": "hooked", "webhook": other}).status_code == 409


def test_production_refuses_a_loopback_webhook(
    start_api: StartApi, offline_node: dict[str, Any], store: redis.Redis, job_env: dict[str, str]
) -> None:
    api = start_api(
        {
            "IMAGEGEN_ENVIRONMENT": "production",
            "IMAGEGEN_STORAGE_URL": "s3://platform-bucket/images",
            "IMAGEGEN_ALLOWED_SECRET_REFS": "env:TENANT_",
        }
    )
    http = api.client("acme")
    before = request_keys(store)
    for url in ["https://127.0.0.1/hook", "https://localhost/hook", "http://hooks.example.com/x", "https://[::1]/"]:
        webhook = {"url": url, "secret": "env:TENANT_ACME_WEBHOOK"}
        response = http.post("/v1/jobs", json={"node": offline_node, "webhook": webhook})
        assert response.status_code == 422, response.text
        assert [p["field"] for p in response.json()["problems"]] == ["webhook.url"]
    assert not request_keys(store) - before and store.llen(job_env["IMAGEGEN_QUEUE"]) == 0
