"""Who may call the API, and what each tenant may see: tokens, namespaces, the in-flight cap."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis

from api.app import ApiState, _submit
from api.problems import from_service_error
from api.quota import InFlightCap, in_flight_key
from api.tenants import Authenticator, Tenant, TokenConfigError, parse_api_tokens, strip_namespaces
from contract.jobs import JobConflict
from contract.settings import Settings
from producer.client import ImageGenClient, JobNotFound
from tests.api.conftest import TOKENS, ApiServer, StartApi, wait_finished
from tests.cli import imagegen
from tests.conftest import StartWorker, request_keys


def test_no_token_or_a_wrong_one_is_401(api: ApiServer, offline_node: dict[str, Any], store: redis.Redis) -> None:
    before = request_keys(store)
    for http in (api.client(None), api.client(token="acme-token-0123456789abcdeX"), api.client(token="x")):
        for method, path in [("POST", "/v1/jobs"), ("GET", "/v1/jobs/x"), ("GET", "/v1/models")]:
            response = http.request(method, path, json=offline_node)
            assert response.status_code == 401, (path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.headers["content-type"] == "application/problem+json"
    # A token of another scheme is no bearer token.
    basic = api.client(None).get("/v1/models", headers={"Authorization": f"Basic {TOKENS['acme']}"})
    assert basic.status_code == 401
    assert not request_keys(store) - before  # nothing written for a caller we do not know
    assert api.client(None).get("/healthz").status_code == 200  # probes need no token
    assert TOKENS["acme"] not in api.log() and TOKENS["globex"] not in api.log()


def test_a_tenant_cannot_read_cancel_or_sign_another_tenants_job(
    api: ApiServer, start_worker: StartWorker, offline_node: dict[str, Any]
) -> None:
    start_worker()
    acme, globex = api.client("acme"), api.client("globex")
    job_id = acme.post("/v1/jobs", json=offline_node, headers={"Idempotency-Key": "shared-name"}).json()["job_id"]
    view = wait_finished(acme, job_id)
    uri = view["result"]["images"][0]["uri"]

    unknown = globex.get("/v1/jobs/no-such-job")
    for response in (
        globex.get(f"/v1/jobs/{job_id}"),
        globex.get(f"/v1/jobs/{job_id}/events"),
        globex.post(f"/v1/jobs/{job_id}/cancel"),
    ):
        assert response.status_code == 404 and response.json()["title"] == unknown.json()["title"]
    assert globex.post("/v1/sign", json={"uri": uri}).status_code == 404
    assert acme.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"  # untouched

    # The owner signs its own image (a worker signs it).
    signed = acme.post("/v1/sign", json={"uri": uri})
    assert signed.status_code == 200, signed.text
    assert signed.json()["uri"] == uri and signed.json()["url"]
    # Its signed url given for the uri (an easy mistake): told which field to give, not "not found".
    mistaken = acme.post("/v1/sign", json={"uri": uri + "?X-Amz-Signature=abc"})
    assert mistaken.status_code == 422 and mistaken.json()["problems"][0]["field"] == "uri", mistaken.text
    assert "not its signed 'url'" in mistaken.text and "X-Amz-Signature" not in mistaken.text
    # A uri in its own namespace but outside the store: 404, like another tenant's, and nothing
    # about where the store is (it was a 502 naming the storage directory).
    refused = acme.post("/v1/sign", json={"uri": "file:///etc/t/acme/j1/variation-0.png"})
    assert refused.status_code == 404 and refused.json()["type"].endswith("image-not-found"), refused.text
    assert "storage" not in refused.text and "/tmp" not in refused.text

    # The same caller id in another tenant is another job.
    theirs = globex.post("/v1/jobs", json=offline_node, headers={"Idempotency-Key": "shared-name"})
    assert theirs.status_code == 202 and theirs.json()["created"] is True
    assert wait_finished(globex, "shared-name")["result"]["images"][0]["uri"] != uri


def test_signs_waiting_for_a_worker_are_capped_and_stall_no_other_route(
    start_api: StartApi, start_worker: StartWorker, offline_node: dict[str, Any], store: redis.Redis
) -> None:
    """A sign waits for a worker on a thread of its own, so many waiting signs cannot take the
    threads every other route's blocking calls run on (40: 40 signs from one tenant had stalled
    every tenant's requests for up to 30 s); and a tenant may hold only so many."""
    worker = start_worker()
    api = start_api({"IMAGEGEN_API_MAX_SIGNS_PER_TENANT": "44", "IMAGEGEN_API_MAX_SIGNS": "45"})
    acme, globex = api.client("acme", timeout=90), api.client("globex", timeout=90)
    job_id = acme.post("/v1/jobs", json=offline_node).json()["job_id"]
    uri = wait_finished(acme, job_id)["result"]["images"][0]["uri"]
    theirs = uri.replace("/t/acme/", "/t/globex/")
    queue = api.process.env["IMAGEGEN_QUEUE"]
    worker.stop()  # from here each sign waits for a worker
    with ThreadPoolExecutor(max_workers=48) as pool:
        waiting = [pool.submit(acme.post, "/v1/sign", json={"uri": uri}) for _ in range(44)]
        waiting.append(pool.submit(globex.post, "/v1/sign", json={"uri": theirs}))
        deadline = time.monotonic() + 30
        while store.llen(queue) < 45 and time.monotonic() < deadline:  # each admitted sign sent its task
            time.sleep(0.1)
        assert store.llen(queue) == 45

        over = acme.post("/v1/sign", json={"uri": uri})
        assert over.status_code == 429 and over.json()["type"].endswith("/too-many-signs"), over.text
        assert "IMAGEGEN_API_MAX_SIGNS_PER_TENANT" in over.json()["detail"] and over.headers["retry-after"]
        busy = globex.post("/v1/sign", json={"uri": theirs})
        assert busy.status_code == 503 and "IMAGEGEN_API_MAX_SIGNS" in busy.json()["detail"], busy.text
        # Every other route still answers while all 45 wait (45 > the shared pool's 40 threads).
        assert globex.get("/v1/models").status_code == 200
        assert acme.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"
        assert not any(future.done() for future in waiting)

        start_worker()
        answers = [future.result() for future in waiting]
    assert [a.status_code for a in answers[:44]] == [200] * 44, answers[0].text
    assert acme.post("/v1/sign", json={"uri": uri}).status_code == 200  # the slots were given back


def test_one_tenants_slow_webhook_lookups_stall_no_other_tenant(
    start_api: StartApi, offline_node: dict[str, Any]
) -> None:
    """In production a submit resolves its webhook's host; behind a DNS server that does not
    answer, that holds a thread for seconds. 45 such submits on the shared pool (40 threads) had
    stalled every tenant's requests (GET /v1/models: 0.03 s -> 8.3 s, reproduced with a real
    resolver that never answered); a tenant's submits now run on threads of its own."""
    api = start_api(
        {
            "IMAGEGEN_ENVIRONMENT": "production",
            "IMAGEGEN_STORAGE_URL": "s3://images/prod",
            "IMAGEGEN_ALLOWED_SECRET_REFS": "env:WEBHOOK_",
            "PYTHONPATH": str(Path(__file__).parent / "slow_dns"),  # *.slow.test resolves in 3 s, to nothing
            "IMAGEGEN_API_SUBMIT_THREADS_PER_TENANT": "45",  # all at once: more than the shared pool's 40
        }
    )
    acme, globex = api.client("acme", timeout=120), api.client("globex", timeout=30)
    with ThreadPoolExecutor(max_workers=45) as pool:
        slow = [
            pool.submit(
                acme.post,
                "/v1/jobs",
                json={"node": offline_node, "webhook": {"url": f"https://h{n}.slow.test/x", "secret": "env:WEBHOOK_A"}},
            )
            for n in range(45)
        ]
        time.sleep(0.5)  # they are all in, waiting on their lookups
        assert globex.get("/v1/models").status_code == 200
        assert globex.get("/v1/jobs/nothing-here").status_code == 404
        assert not any(future.done() for future in slow)  # answered while acme's 45 still wait
        answers = [future.result() for future in slow]
    # A resolver that does not answer is no verdict on the name: try again (it was a 422).
    assert {a.status_code for a in answers} == {503}
    assert "could not be resolved now" in answers[0].text and "Retry-After" in answers[0].headers


def test_uris_outside_the_tenants_namespace_are_not_signed() -> None:
    acme = Tenant("acme")
    assert acme.owns_uri("s3://bucket/images/t/acme/job-1/variation-0.png")
    assert acme.owns_uri("file:///var/images/t/acme/run-42/node-7/variation-1.run2.png")
    for uri in [
        "s3://bucket/images/t/globex/job-1/variation-0.png",
        "s3://bucket/images/t/globex/t/acme/x/variation-0.png",  # globex's job named "t/acme/x"
        "s3://bucket/images/t/acme/../globex/job/variation-0.png",
        "s3://bucket/images/t/acme//variation-0.png",
        "s3://bucket/images/t/acme/job/variation-0.png?x=1",
        "s3://bucket/images/t/acme/job/variation-0.png#x",
        "s3://bucket/images/t/%61cme/job/variation-0.png",
        "s3://bucket/images/t/acme/variation-0.png",
        "s3://bucket/images/t\\acme/job/variation-0.png",
        "t/acme/job/variation-0.png",
        "s3://bucket/images/t/acme-evil/job/variation-0.png",
    ]:
        assert not acme.owns_uri(uri), uri


# Caller ids that themselves hold a "t/<tenant>/" segment: a message names them whole.
IDS_WITH_NAMESPACES = ["t/globex/zz", "x/t/acme/y", "t/acme/t/acme/z", "t/acme/t/globex/w"]


def test_messages_name_the_callers_own_id_whole() -> None:
    acme = Tenant("acme")
    for caller_id in [*IDS_WITH_NAMESPACES, "zz", "run-42/node-7"]:
        job_id = acme.job_id(caller_id)  # t/acme/<caller_id>
        conflict = from_service_error(JobConflict(job_id, "was submitted before with a different node or webhook"))
        assert conflict.status == 409
        assert conflict.detail == f"job {caller_id}: was submitted before with a different node or webhook"
        gone = from_service_error(JobNotFound.unknown(job_id))
        assert gone.status == 404 and gone.detail.startswith(f"no job {caller_id!r} "), gone.detail
    # Only the namespace of the message's job: another tenant's id is not shown as the caller's.
    assert strip_namespaces("job t/acme/a: like t/globex/b", "acme") == "job a: like t/globex/b"
    assert strip_namespaces("no job 't/acme/a', nor t/globex/b") == "no job 'a', nor t/globex/b"
    assert strip_namespaces("job t/globex/b", "acme") == "job t/globex/b"
    assert strip_namespaces("at/acme/x not/t/acme/y") == "at/acme/x not/t/acme/y"  # no id begins there


def test_a_409_and_a_404_name_the_callers_id_whole(api: ApiServer, offline_node: dict[str, Any]) -> None:
    """acme's job "t/globex/zz" (stored as t/acme/t/globex/zz) was "job zz" in a 409."""
    acme, globex = api.client("acme"), api.client("globex")
    for caller_id in IDS_WITH_NAMESPACES:
        first = acme.post("/v1/jobs", json={"node": offline_node, "job_id": caller_id})
        assert first.status_code == 202 and first.json()["job_id"] == caller_id, first.text
        other = {**offline_node, "inputs": {**offline_node["inputs"], "user_query": "something else"}}
        conflict = acme.post("/v1/jobs", json={"node": other, "job_id": caller_id})
        assert conflict.status_code == 409, conflict.text
        assert conflict.json()["detail"].startswith(f"job {caller_id}: was submitted before"), conflict.text
        assert acme.get(f"/v1/jobs/{caller_id}").json()["job_id"] == caller_id
        for unknown in (f"{caller_id}/none", caller_id.rsplit("/", 1)[-1]):
            missing = acme.get(f"/v1/jobs/{unknown}")
            assert missing.status_code == 404 and f"no job {unknown!r} " in missing.json()["detail"], missing.text
        # The other tenant has no such job: acme's "t/globex/zz" is not globex's "zz".
        theirs = globex.get(f"/v1/jobs/{caller_id}")
        assert theirs.status_code == 404 and f"no job {caller_id!r} " in theirs.json()["detail"], theirs.text


def test_token_settings_are_checked() -> None:
    assert parse_api_tokens(" a=env:A , b.c=file:/run/b ,d=vault:secret/api#d ")["d"].key == "d"
    for bad in ["a", "=env:A", "a/b=env:A", "..=env:A", "a=raw-token-value", "a=env:A,a=env:B", "a=file:relative"]:
        try:
            parse_api_tokens(bad)
        except ValueError as exc:
            assert "raw-token-value" not in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_two_tenants_with_one_token_are_refused_at_start_and_on_a_reread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two tenants whose references resolve to one token: every caller with it was the last tenant
    listed, so acme's callers read and canceled globex's jobs."""
    shared, acme_token, globex_token = "shared-token-0123456789", "acme-token-0123456789", "globex-token-0123456789"
    acme, globex = tmp_path / "acme", tmp_path / "globex"
    acme.write_text(shared)
    globex.write_text(shared)
    tokens = f"acme=file:{acme},globex=file:{globex}"
    with pytest.raises(TokenConfigError) as refused:
        Authenticator(Settings(api_tokens=tokens, environment="development"))
    assert "'acme' and 'globex'" in str(refused.value) and shared not in str(refused.value)

    acme.write_text(acme_token)
    globex.write_text(globex_token)
    auth = Authenticator(Settings(api_tokens=tokens, environment="development", secret_cache_ttl_s=0))
    globex.write_text(acme_token)  # a rotation gone wrong: globex's file now holds acme's token
    with caplog.at_level(logging.ERROR, logger="api.tenants"):
        auth.refresh()
    assert auth.tenant_for(acme_token) == Tenant("acme") and auth.tenant_for(globex_token) == Tenant("globex")
    assert "'acme' and 'globex' have the same token" in caplog.text and "keeping the tokens in use" in caplog.text
    assert acme_token not in caplog.text


def test_production_refuses_to_start_without_tokens(job_env: dict[str, str]) -> None:
    production = {
        **job_env,
        "IMAGEGEN_ENVIRONMENT": "production",
        "IMAGEGEN_STORAGE_URL": "s3://bucket/images",
        "IMAGEGEN_ALLOWED_SECRET_REFS": "env:TENANT_",
        "IMAGEGEN_API_TOKENS": "",
    }
    run = imagegen(production, "serve", "--port", "1")
    assert run.returncode == 2 and "IMAGEGEN_API_TOKENS is empty" in run.stderr and "Traceback" not in run.stderr
    # A token reference that does not resolve stops the start too, naming the reference only.
    run = imagegen({**production, "IMAGEGEN_API_TOKENS": "acme=env:TEST_NOT_SET_ANYWHERE"}, "serve", "--port", "1")
    assert run.returncode == 2 and "env:TEST_NOT_SET_ANYWHERE" in run.stderr


def test_development_without_tokens_is_one_anonymous_tenant(
    start_api: StartApi, offline_node: dict[str, Any], client: Any
) -> None:
    api = start_api(tokens=False)
    response = api.client(None).post("/v1/jobs", json=offline_node, headers={"Idempotency-Key": "anon"})
    assert response.status_code == 202, response.text
    assert client.status("t/dev/anon").state == "queued"
    assert "every caller is the tenant 'dev'" in api.log()


def test_the_in_flight_cap_answers_429_with_retry_after(
    start_api: StartApi, offline_node: dict[str, Any], store: redis.Redis, job_env: dict[str, str]
) -> None:
    # Tenants of their own: the suite's Redis outlives tests, and other tests leave acme's jobs queued.
    tenant, other = f"cap{uuid.uuid4().hex[:8]}", f"other{uuid.uuid4().hex[:8]}"
    tokens = {
        "IMAGEGEN_API_TOKENS": f"{tenant}=env:TEST_API_TOKEN_ACME,{other}=env:TEST_API_TOKEN_GLOBEX",
        "IMAGEGEN_API_MAX_JOBS_IN_FLIGHT": "2",
    }
    api = start_api(tokens)  # no worker: jobs stay queued
    acme = api.client("acme")  # acme's token is this tenant's here
    for n in range(2):
        assert acme.post("/v1/jobs", json=offline_node, headers={"Idempotency-Key": f"cap-{n}"}).status_code == 202
    refused = acme.post("/v1/jobs", json=offline_node, headers={"Idempotency-Key": "cap-2"})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert refused.json()["type"].endswith("/too-many-jobs") and "2" in refused.json()["detail"]
    assert not store.exists(f"imagegen:job:t/{tenant}/cap-2") and store.llen(job_env["IMAGEGEN_QUEUE"]) == 2

    # Asking again for a job in flight takes no slot; another tenant has its own cap.
    assert acme.post("/v1/jobs", json=offline_node, headers={"Idempotency-Key": "cap-1"}).status_code == 200
    assert api.client("globex").post("/v1/jobs", json=offline_node).status_code == 202

    # A finished job frees its slot (here: canceled while queued, ended by hand as a worker would).
    assert acme.post("/v1/jobs/cap-0/cancel").json()["changed"] is True
    store.hset(f"imagegen:job:t/{tenant}/cap-0", "state", "canceled")
    assert acme.post("/v1/jobs", json=offline_node, headers={"Idempotency-Key": "cap-2"}).status_code == 202


class _SubmitsAfter:
    """The client, but its first submit first runs ``before``: another request's steps, interleaved
    as two requests' threads can be."""

    def __init__(self, client: ImageGenClient, before: Callable[[], object]):
        self.client, self.before, self.done = client, before, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        if not self.done:
            self.done = True
            self.before()
        return self.client.submit(*args, **kwargs)


def _api_state(settings: Settings, client: ImageGenClient | _SubmitsAfter, cap: InFlightCap) -> ApiState:
    return cast(ApiState, SimpleNamespace(settings=settings, client=client, cap=cap))


def _cap_of_one(settings: Settings, client: ImageGenClient) -> tuple[Tenant, InFlightCap]:
    return Tenant(f"race{uuid.uuid4().hex[:6]}"), InFlightCap(client.records.client, 1, settings.result_ttl_s)


def test_a_submit_that_loses_to_the_same_id_sent_at_once_leaves_the_job_its_slot(
    settings: Settings, client: ImageGenClient, offline_node: dict[str, Any], store: redis.Redis
) -> None:
    """Request A books the slot; B (same id) books nothing, as the id is a member, and enqueues the
    job before A's claim; A then finds the job and enqueues nothing. A gave its slot back, and the
    queued job was counted no more: one tenant could go past IMAGEGEN_API_MAX_JOBS_IN_FLIGHT."""
    tenant, cap = _cap_of_one(settings, client)
    raw = json.dumps(offline_node).encode()

    def b() -> None:
        assert _submit(_api_state(settings, client, cap), tenant, raw, offline_node, "same").created

    a = _submit(_api_state(settings, _SubmitsAfter(client, b), cap), tenant, raw, offline_node, "same")
    job_id = tenant.job_id("same")
    assert a.created is False and client.status(job_id).state == "queued"
    assert store.smembers(in_flight_key(tenant.name)) == {job_id.encode()}
    assert not cap.book(tenant.name, tenant.job_id("other")).booked  # the cap of one is taken


def test_a_rerun_that_loses_to_another_leaves_the_job_its_slot(
    settings: Settings, client: ImageGenClient, offline_node: dict[str, Any], store: redis.Redis
) -> None:
    tenant, cap = _cap_of_one(settings, client)
    job_id = tenant.job_id("failed")
    client.submit(offline_node, job_id)
    store.hset(f"imagegen:job:{job_id}", "state", "failed")  # ended by hand, as a worker would
    data = {"node": offline_node, "job_id": "failed", "rerun": True}
    raw = json.dumps(data).encode()

    def b() -> None:
        assert _submit(_api_state(settings, client, cap), tenant, raw, data, None).created

    with pytest.raises(JobConflict):  # 409: the job is queued again, by B
        _submit(_api_state(settings, _SubmitsAfter(client, b), cap), tenant, raw, data, None)
    assert client.status(job_id).state == "queued" and client.status(job_id).run == 2
    assert store.smembers(in_flight_key(tenant.name)) == {job_id.encode()}


def test_a_job_enqueued_on_another_requests_released_booking_is_counted(
    settings: Settings, client: ImageGenClient, offline_node: dict[str, Any], store: redis.Redis
) -> None:
    """A booked the id and B's booking took no slot (a member already); A's submit then failed, and A
    gave the slot back before B enqueued the job."""
    tenant, cap = _cap_of_one(settings, client)
    job_id = tenant.job_id("again")
    assert cap.book(tenant.name, job_id).added  # A
    raw = json.dumps(offline_node).encode()
    b = _submit(
        _api_state(settings, _SubmitsAfter(client, lambda: cap.release(tenant.name, job_id)), cap),
        tenant,
        raw,
        offline_node,
        "again",
    )
    assert b.created and store.smembers(in_flight_key(tenant.name)) == {job_id.encode()}


def test_a_rotated_token_file_is_picked_up(start_api: StartApi, tmp_path: Any) -> None:
    token_file = tmp_path / "acme.token"
    token_file.write_text("first-token-0123456789abcdef\n")  # a mounted Secret ends with a newline
    api = start_api(
        {"IMAGEGEN_API_TOKENS": f"acme=file:{token_file}", "IMAGEGEN_SECRET_CACHE_TTL_S": "0"}, tokens=False
    )
    assert api.client(token="first-token-0123456789abcdef").get("/v1/models").status_code == 200
    token_file.write_text("second-token-0123456789abcdef\n")
    assert api.client(token="first-token-0123456789abcdef").get("/v1/models").status_code == 401
    assert api.client(token="second-token-0123456789abcdef").get("/v1/models").status_code == 200
    token_file.unlink()  # a failed re-read keeps the tokens in use, and says so in the log
    assert api.client(token="second-token-0123456789abcdef").get("/v1/models").status_code == 200
    assert "keeping the tokens in use" in api.log() and "second-token" not in api.log()
