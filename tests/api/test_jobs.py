"""Submitting, reading and following jobs over HTTP: the same jobs as the client and the CLI."""

from __future__ import annotations

import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import redis

from contract.result import JobResult
from producer.client import ImageGenClient
from tests.api.conftest import TOKENS, ApiServer, StartApi, read_sse, wait_finished
from tests.cli import imagegen
from tests.conftest import StartWorker, wait_for


def test_a_job_submitted_over_http_ends_as_the_clients_do(
    api: ApiServer,
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    job_env: dict[str, str],
) -> None:
    start_worker()
    offline_node["inputs"]["variations"] = 2
    http = api.client("acme")

    response = http.post("/v1/jobs", json=offline_node)
    assert response.status_code == 202, response.text
    accepted = response.json()
    job_id = accepted["job_id"]
    assert not job_id.startswith("t/")  # the caller sees its own id, never the namespace
    assert response.headers["location"] == f"/v1/jobs/{job_id}" == accepted["links"]["self"]
    assert accepted["state"] == "queued" and accepted["created"] is True

    view = wait_finished(http, job_id)
    assert (view["state"], view["done"], view["total"]) == ("succeeded", 2, 2)
    over_http = JobResult.model_validate(view["result"])
    assert over_http.job_id == job_id and len(over_http.images) == 2

    # The same node through the Python client: the same document, field for field.
    direct = client.submit(offline_node).wait(timeout=90)
    assert set(view["result"]) == set(direct.model_dump(mode="json"))
    assert (over_http.status, over_http.model, over_http.size, over_http.variations) == (
        direct.status,
        direct.model,
        direct.size,
        direct.variations,
    )
    # Images live under the tenant's storage prefix; the CLI reads the same job under its internal id.
    assert all(f"/t/acme/{job_id}/" in image.uri for image in over_http.images)
    cli = imagegen(job_env, "result", f"t/acme/{job_id}")
    assert cli.returncode == 0, cli.stderr
    assert {**json.loads(cli.stdout), "job_id": job_id} == view["result"]


def test_the_same_idempotency_key_is_one_job_and_another_body_is_a_conflict(
    api: ApiServer, offline_node: dict[str, Any], store: redis.Redis, job_env: dict[str, str]
) -> None:
    http = api.client("acme")
    first = http.post("/v1/jobs", json=offline_node, headers={"Idempotency-Key": "run-42/node-7"})
    again = http.post("/v1/jobs", json=offline_node, headers={"Idempotency-Key": "run-42/node-7"})
    assert first.status_code == 202 and again.status_code == 200, again.text
    assert first.json()["job_id"] == again.json()["job_id"] == "run-42/node-7"
    assert again.json()["created"] is False and again.headers["location"] == "/v1/jobs/run-42/node-7"
    assert store.llen(job_env["IMAGEGEN_QUEUE"]) == 1  # one run_job message: never a second enqueue

    # The envelope form with the same id and node is the same job too.
    wrapped = http.post("/v1/jobs", json={"node": offline_node, "job_id": "run-42/node-7"})
    assert wrapped.status_code == 200 and wrapped.json()["created"] is False

    offline_node["inputs"]["user_query"] = "something else"
    conflict = http.post("/v1/jobs", json=offline_node, headers={"Idempotency-Key": "run-42/node-7"})
    assert conflict.status_code == 409
    assert conflict.headers["content-type"] == "application/problem+json"
    problem = conflict.json()
    assert problem["status"] == 409 and problem["type"].endswith("/job-conflict")
    assert "run-42/node-7" in problem["detail"] and "t/acme" not in problem["detail"]
    assert store.llen(job_env["IMAGEGEN_QUEUE"]) == 1


def _milestones(events: list[dict[str, Any]]) -> list[str]:
    """The start, finished variations and end (attempt-level events such as variation_started aside)."""
    return [e["event"] for e in events if e["event"] in ("started", "variation", "completed")]


def test_events_stream_start_each_variation_and_the_end_and_resume_after_last_event_id(
    start_api: Any, start_worker: StartWorker, offline_node: dict[str, Any]
) -> None:
    start_worker({"IMAGEGEN_OFFLINE_LATENCY_S": "0.4"}, concurrency=2)
    api = start_api()
    http = api.client("acme")
    offline_node["inputs"]["variations"] = 4
    job_id = http.post("/v1/jobs", json=offline_node, headers={"Idempotency-Key": "sse-1"}).json()["job_id"]

    # Read up to the first finished variation, then drop the connection mid-job.
    with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        seen = read_sse(response, until=lambda event: event["event"] == "variation")
    assert _milestones(seen) == ["started", "variation"]

    # Reconnect with Last-Event-ID: only what was missed, up to the end; then the stream closes.
    with http.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": seen[-1]["id"]}) as response:
        rest = read_sse(response)
    assert _milestones(rest) == ["variation"] * 3 + ["completed"] and rest[-1]["event"] == "completed"
    assert not {e["id"] for e in seen} & {e["id"] for e in rest}

    # From the beginning: start, four variations (each index once), the end with the result document.
    with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        everything = read_sse(response)
    assert [e["id"] for e in everything] == [e["id"] for e in seen + rest]
    assert _milestones(everything) == ["started"] + ["variation"] * 4 + ["completed"]
    assert sorted(e["data"]["index"] for e in everything if e["event"] == "variation") == [0, 1, 2, 3]
    assert all(e["data"]["job_id"] == job_id for e in everything)
    end = everything[-1]["data"]
    assert JobResult.model_validate(end).status == "succeeded"
    assert end == http.get(f"/v1/jobs/{job_id}").json()["result"]

    # ?after= does what Last-Event-ID does; a malformed id is a problem document.
    with http.stream("GET", f"/v1/jobs/{job_id}/events", params={"after": everything[-2]["id"]}) as response:
        assert [e["event"] for e in read_sse(response)] == ["completed"]
    bad = http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "yesterday"})
    assert bad.status_code == 422 and bad.json()["problems"][0]["field"] == "Last-Event-ID"
    # Ids Redis itself refuses (a part above 2**64-1; a newline that "$" lets in) were a 200 with an
    # empty stream, which an EventSource retried for ever.
    for header in ("99999999999999999999-0", "0-99999999999999999999"):
        assert http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": header}).status_code == 422
    assert http.get(f"/v1/jobs/{job_id}/events", params={"after": "1-0\n"}).status_code == 422


def test_cancel_during_a_job_ends_it_canceled_with_fewer_images(
    start_api: Any, start_worker: StartWorker, offline_node: dict[str, Any]
) -> None:
    start_worker({"IMAGEGEN_OFFLINE_LATENCY_S": "1.0"}, concurrency=2)
    http = start_api().client("acme")
    offline_node["inputs"]["variations"] = 6
    job_id = http.post("/v1/jobs", json=offline_node).json()["job_id"]

    with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        read_sse(response, until=lambda event: event["event"] == "variation")  # the job is running
    canceled = http.post(f"/v1/jobs/{job_id}/cancel")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["changed"] is True and canceled.json()["job_id"] == job_id

    view = wait_finished(http, job_id)
    assert view["state"] == "canceled" and view["result"]["status"] == "canceled"
    assert len(view["result"]["images"]) < 6

    # Canceling a finished job changes nothing and says so.
    again = http.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 200 and again.json()["changed"] is False
    assert "already canceled" in again.json()["message"] and "t/acme" not in again.json()["message"]


def test_unknown_jobs_are_problem_documents(api: ApiServer) -> None:
    http = api.client("acme")
    for method, path in [
        ("GET", "/v1/jobs/never-submitted"),
        ("GET", "/v1/jobs/never-submitted/events"),
        ("POST", "/v1/jobs/never-submitted/cancel"),
        ("GET", "/v1/jobs/..%2Fetc"),
    ]:
        response = http.request(method, path)
        assert response.status_code == 404, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 404 and "Traceback" not in response.text


def test_a_failed_job_runs_again_with_rerun_and_a_node_with_a_node_key_is_still_a_node(
    api: ApiServer, start_worker: StartWorker, offline_node: dict[str, Any]
) -> None:
    start_worker({"IMAGEGEN_OFFLINE_FAILURES": "0:permanent"})
    http = api.client("acme")
    offline_node["node"] = {"canvas": "ignored"}  # a node's extra top-level key: "type" makes it a node
    first = http.post("/v1/jobs", json=offline_node, headers={"Idempotency-Key": "flaky"})
    assert first.status_code == 202, first.text
    assert wait_finished(http, "flaky")["state"] == "failed"

    not_again = http.post("/v1/jobs", json=offline_node, headers={"Idempotency-Key": "flaky"})
    assert not_again.status_code == 200 and not_again.json()["state"] == "failed"
    rerun = http.post("/v1/jobs", json={"node": offline_node, "job_id": "flaky", "rerun": True})
    assert rerun.status_code == 202 and rerun.json()["run"] == 2, rerun.text
    view = wait_finished(http, "flaky")
    assert view["run"] == 2 and view["result"]["status"] == "failed"
    # A rerun of an id never submitted (a typo, an expired job) creates nothing: 404.
    typo = http.post("/v1/jobs", json={"node": offline_node, "job_id": "flakey", "rerun": True})
    assert typo.status_code == 404 and typo.json()["type"].endswith("job-not-found"), typo.text
    assert http.get("/v1/jobs/flakey").status_code == 404


def test_a_tenant_can_open_only_so_many_event_streams(start_api: Any, offline_node: dict[str, Any]) -> None:
    """Each open stream holds a Redis connection in a blocking read: one tenant's idle streams must
    not take them all. At the cap: 429; a closed stream frees its place; other tenants are not counted."""
    api = start_api({"IMAGEGEN_API_MAX_STREAMS_PER_TENANT": "2", "IMAGEGEN_API_MAX_STREAMS": "3"})
    acme, globex = api.client("acme"), api.client("globex")
    job_id = acme.post("/v1/jobs", json=offline_node).json()["job_id"]  # no worker: it stays queued
    url = f"/v1/jobs/{job_id}/events"
    with acme.stream("GET", url) as first, acme.stream("GET", url) as second:
        assert (first.status_code, second.status_code) == (200, 200)
        third = acme.get(url)
        assert third.status_code == 429 and third.json()["type"].endswith("too-many-streams"), third.text
        assert "IMAGEGEN_API_MAX_STREAMS_PER_TENANT" in third.json()["detail"]
        theirs = f"/v1/jobs/{globex.post('/v1/jobs', json=offline_node).json()['job_id']}/events"
        with globex.stream("GET", theirs) as other:
            assert other.status_code == 200  # acme's streams do not count against globex
            busy = globex.get(theirs)  # but all of them count against the process
            assert busy.status_code == 503 and "IMAGEGEN_API_MAX_STREAMS" in busy.json()["detail"], busy.text
            assert api.client(None).get("/readyz").status_code == 200  # the probe still has a connection
    deadline = time.monotonic() + 10  # the server notices the closed streams

    def status_of_a_new_stream() -> int:
        with acme.stream("GET", url) as response:
            return response.status_code

    while (status := status_of_a_new_stream()) == 429 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == 200


def test_heads_and_clients_gone_before_the_stream_starts_hold_no_stream_slot(
    start_api: StartApi, offline_node: dict[str, Any]
) -> None:
    """A HEAD of /events, or a client that hangs up before the stream's first byte, counts a stream
    whose generator never runs: its place must be given back all the same."""
    api = start_api({"IMAGEGEN_API_MAX_STREAMS_PER_TENANT": "2"})
    acme = api.client("acme", timeout=10)
    job_id = acme.post("/v1/jobs", json=offline_node).json()["job_id"]  # no worker: it stays queued
    url = f"/v1/jobs/{job_id}/events"

    def status_of_a_new_stream() -> int:
        with acme.stream("GET", url) as response:
            return response.status_code

    for _ in range(3):
        acme.head(url)
    assert wait_for(lambda: status_of_a_new_stream() == 200, timeout=10)
    address = urlsplit(api.url)
    request = f"GET {url} HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Bearer {TOKENS['acme']}\r\n\r\n"
    for _ in range(20):
        with socket.create_connection((address.hostname, address.port)) as gone:
            gone.sendall(request.encode())  # and closed at once
    assert wait_for(lambda: status_of_a_new_stream() == 200, timeout=10)
