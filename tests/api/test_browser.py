"""What the API tells and refuses a browser (api/browser.py), and its other HTTP edges: a
cross-site page cannot change anything, no page of another site can frame the Playground,
no cache keeps an answer of /v1, without tokens only this machine's own names are answered
(DNS rebinding), probes answer HEAD, a slow body and a doubled
Idempotency-Key are refused."""

from __future__ import annotations

import contextlib
import select
import socket
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from api.browser import HEADERS, BrowserSafety
from api.problems import install_handlers
from contract.settings import Settings, SettingsError
from tests.api.conftest import TOKENS, ApiServer, StartApi, wait_finished
from tests.conftest import StartWorker


def test_a_page_of_another_site_cannot_cancel_a_job(api: ApiServer, offline_node: dict[str, Any]) -> None:
    """Cancel reads no body, so the JSON content-type gate does not cover it: a plain form post
    from another site would otherwise cancel a job whose id is easy to guess."""
    http = api.client("acme")
    job_id = http.post("/v1/jobs", json=offline_node, headers={"Idempotency-Key": "browser-csrf-1"}).json()["job_id"]
    cancel = f"/v1/jobs/{job_id}/cancel"
    for browser in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "http://evil.test"}):
        refused = http.post(cancel, headers=browser)
        assert refused.status_code == 403 and refused.json()["type"].endswith("cross-site"), refused.text
    assert http.get(f"/v1/jobs/{job_id}").json()["cancel_requested"] is False
    own_page = {"Sec-Fetch-Site": "same-origin", "Origin": api.url}
    assert http.post(cancel, headers=own_page).json()["changed"] is True  # the Playground's own request
    assert http.post(cancel).status_code == 200  # a program sends neither header


def test_every_answer_forbids_framing_and_sniffing(api: ApiServer) -> None:
    for path in ("/playground/", "/healthz", "/v1/jobs/nope"):
        headers = api.client("acme").get(path).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert "script-src 'self'" in headers["content-security-policy"]
        assert (headers["x-frame-options"], headers["x-content-type-options"]) == ("DENY", "nosniff")
        assert headers["referrer-policy"] == "no-referrer"


def test_no_answer_of_v1_is_kept_by_a_cache(
    api: ApiServer, start_worker: StartWorker, offline_node: dict[str, Any]
) -> None:
    """Job reads and /v1/sign carry image URLs, which are bearer credentials (presigned on
    S3/GCS/Azure): a browser's or a proxy's cache must not keep them, nor any tenant's answer."""
    start_worker()
    acme = api.client("acme")
    job_id = f"no-store-{uuid.uuid4().hex[:8]}"
    assert acme.post("/v1/jobs", json=offline_node, headers={"Idempotency-Key": job_id}).status_code == 202
    image = wait_finished(acme, job_id)["result"]["images"][0]
    assert image["url"]
    signed = acme.post("/v1/sign", json={"uri": image["uri"]})
    assert signed.status_code == 200 and signed.json()["url"]
    answers = {
        "job": acme.get(f"/v1/jobs/{job_id}"),
        "sign": signed,
        "models": acme.get("/v1/models"),
        "unknown job (404)": acme.get("/v1/jobs/no-such-job"),
        "no token (401)": api.client(None).get(f"/v1/jobs/{job_id}"),
        "invalid sign (422)": acme.post("/v1/sign", json={"uri": 5}),
    }
    seen = {name: answer.headers.get("cache-control") for name, answer in answers.items()}
    assert all(value == "no-store" for value in seen.values()), seen
    with acme.stream("GET", f"/v1/jobs/{job_id}/events") as stream:  # the route's own header stays
        assert stream.status_code == 200 and stream.headers["cache-control"] == "no-store"


def test_an_unexpected_error_is_a_problem_with_every_browser_header() -> None:
    """Starlette answers the catch-all 500 outside every middleware (BrowserSafety included)."""
    app = FastAPI()
    install_handlers(app)
    app.add_middleware(BrowserSafety)

    @app.get("/v1/boom")
    def boom() -> None:
        raise RuntimeError("/srv/secret/path went wrong")

    answer = TestClient(app, raise_server_exceptions=False).get("/v1/boom")
    assert answer.status_code == 500 and answer.json()["type"].endswith("/internal")
    assert "/srv/secret" not in answer.text
    assert answer.headers["cache-control"] == "no-store"
    assert {name.lower(): value for name, value in HEADERS.items()}.items() <= answer.headers.items()


def test_without_tokens_only_this_machines_names_are_answered(
    start_api: StartApi, api: ApiServer, offline_node: dict[str, Any]
) -> None:
    """A page on attacker.example whose name is re-pointed at 127.0.0.1 (DNS rebinding) is
    same-origin to the browser (Origin and Host both attacker.example), so the cross-site check
    passes it; without tokens it would submit, read and cancel the tenant dev's jobs."""
    anonymous = start_api({"IMAGEGEN_API_ALLOWED_HOSTS": "imagegen.test, Dev-Box"}, tokens=False)
    http = anonymous.client(None)
    port = urlsplit(anonymous.url).port
    rebound = {
        "Host": "attacker.example:8000",
        "Origin": "http://attacker.example:8000",
        "Sec-Fetch-Site": "same-origin",
    }
    for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/jobs/rebound"), ("GET", "/playground/"), ("GET", "/")):
        refused = http.request(method, path, json=offline_node, headers={**rebound, "Idempotency-Key": "rebound"})
        problem = refused.json()
        assert refused.status_code == 403 and problem["type"].endswith("/host-not-allowed"), (path, refused.text)
        assert "'attacker.example:8000'" in problem["detail"] and "localhost" in problem["detail"]
        assert "IMAGEGEN_API_ALLOWED_HOSTS" in problem["detail"] and refused.headers["x-frame-options"] == "DENY"
    assert http.get("/v1/jobs/rebound").status_code == 404  # nothing was submitted
    long_host = http.get("/healthz", headers={"Host": "a" * 300})
    assert long_host.status_code == 403 and "a" * 100 not in long_host.text  # the value is bounded
    for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "imagegen.test:80", "dev-box"):
        assert http.get("/v1/models", headers={"Host": host}).status_code == 200, host
    # With tokens, a request must carry one: any Host is answered (a load balancer's, a Service's name).
    assert api.client("acme").get("/v1/models", headers={"Host": "attacker.example"}).status_code == 200
    with pytest.raises(SettingsError, match="IMAGEGEN_API_ALLOWED_HOSTS"):
        Settings(api_allowed_hosts="imagegen.test:8000")


def test_probes_answer_head(api: ApiServer) -> None:
    anonymous = api.client(None)
    assert anonymous.head("/healthz").status_code == 200 and anonymous.head("/readyz").status_code == 200


def test_a_doubled_idempotency_key_is_refused(api: ApiServer, offline_node: dict[str, Any]) -> None:
    http = api.client("acme")
    doubled = http.post("/v1/jobs", json=offline_node, headers=[("Idempotency-Key", "k-a"), ("Idempotency-Key", "k-b")])
    assert doubled.status_code == 422 and doubled.json()["problems"][0]["field"] == "Idempotency-Key"
    assert http.get("/v1/jobs/k-a").status_code == 404 and http.get("/v1/jobs/k-b").status_code == 404


def test_a_body_sent_a_byte_at_a_time_is_cut_off(start_api: StartApi) -> None:
    api = start_api({"IMAGEGEN_API_BODY_TIMEOUT_S": "2"})
    address = urlsplit(api.url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as conn:
        conn.sendall(
            b"POST /v1/validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKENS["acme"].encode() + b"\r\nContent-Length: 1000\r\n\r\n"
        )
        answer = b""
        for _ in range(20):  # a byte every 0.5 s: each inside any read timeout, the whole far longer
            # Stop sending once the answer is there: a byte sent after the server closed draws a
            # reset, which can throw away the answer still unread (this test was flaky so).
            if select.select([conn], [], [], 0.5)[0]:
                break
            try:
                conn.sendall(b" ")
            except OSError:
                break
        conn.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(4096):  # the answer, until the server closes ("Connection: close")
                answer += chunk
    head = answer.decode(errors="replace")
    assert head.startswith("HTTP/1.1 408") and "body-too-slow" in head, head
