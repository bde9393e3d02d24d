"""Bad input gets a problem document naming what is wrong, and nothing is enqueued."""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from tests.api.conftest import TOKENS, ApiServer, StartApi
from tests.cli import imagegen
from tests.conftest import ROOT, StartWorker, request_keys, wait_for


@pytest.fixture
def nothing_enqueued(store: redis.Redis, job_env: dict[str, str]) -> Iterator[None]:
    """The test leaves Redis as it found it: no job record, no queue entry."""
    before = request_keys(store)
    yield
    assert not request_keys(store) - before
    assert store.llen(job_env["IMAGEGEN_QUEUE"]) == 0


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    document = dict(response.json())
    assert document["status"] == status and document["type"].startswith("https://") and document["title"]
    assert "Traceback" not in response.text
    return document


@pytest.mark.usefixtures("nothing_enqueued")
def test_malformed_json_is_400(api: ApiServer) -> None:
    http = api.client("acme")
    for body in [b'{"type": "image_generation",', b"{'a': 1}", b"\xff\xfe", b"[" * 100_000]:
        document = _problem(http.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"}), 400)
        assert document["type"].endswith("/malformed-json")


@pytest.mark.usefixtures("nothing_enqueued")
def test_well_formed_json_with_a_huge_number_is_a_422_naming_the_field(
    api: ApiServer, offline_node: dict[str, Any]
) -> None:
    # Python will not convert an int of more than 4,300 digits: that had been a 400 saying
    # only "the body is not JSON: ValueError".
    http = api.client("acme")
    body = json.dumps(offline_node).replace('"use_cloud"', '"seed": ' + "9" * 4301 + ', "use_cloud"')
    document = _problem(http.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"}), 422)
    [problem] = document["problems"]
    assert "4301" in str(problem["value"]) and "2**63" in problem["message"], problem
    assert len(json.dumps(document)) < 2000


def test_an_unknown_job_id_is_not_echoed_whole(api: ApiServer) -> None:
    document = _problem(api.client("acme").get("/v1/jobs/" + "a" * 20_000), 404)
    assert len(document["detail"]) < 200 and "20000 characters" in document["detail"], document["detail"]


@pytest.mark.usefixtures("nothing_enqueued")
def test_a_wrong_content_type_is_415(api: ApiServer, offline_node: dict[str, Any]) -> None:
    http = api.client("acme")
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]:
        response = http.post("/v1/jobs", content=json.dumps(offline_node), headers={"Content-Type": content_type})
        assert content_type.split(";")[0] in _problem(response, 415)["detail"]
    assert http.post("/v1/jobs", content=json.dumps(offline_node)).status_code == 415  # no Content-Type at all


@pytest.mark.usefixtures("nothing_enqueued")
def test_a_10_mb_body_is_413_before_it_is_read(api: ApiServer, offline_node: dict[str, Any]) -> None:
    http = api.client("acme")
    offline_node["inputs"]["user_query"] = "x" * (10 * 1024 * 1024)
    _problem(http.post("/v1/jobs", json=offline_node), 413)

    # Chunked, with no Content-Length: refused once it passes the limit.
    def chunks() -> Iterator[bytes]:
        yield b'{"type": "image_generation", "inputs": {"user_query": "'
        for _ in range(160):
            yield b"x" * 65536
        yield b'"}}'

    _problem(http.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}), 413)

    # Only the headers are sent: the answer comes without the server waiting for 10 MB.
    address = urlsplit(api.url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKENS["acme"].encode() + b"\r\nContent-Length: 10485760\r\n\r\n"
        )
        head = conn.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413") and "application/problem+json" in head


@pytest.mark.usefixtures("nothing_enqueued")
def test_an_invalid_node_is_422_with_the_clis_problems(
    api: ApiServer, seed_node: dict[str, Any], tmp_path: Any, job_env: dict[str, str]
) -> None:
    seed_node["inputs"].update(model="gemini_2_5_image", size="1000x1000", variations=99, colour="red")
    node_file = tmp_path / "bad.json"
    node_file.write_text(json.dumps(seed_node))
    cli = imagegen(job_env, "validate", str(node_file))
    assert cli.returncode == 2

    http = api.client("acme")
    for body in (seed_node, {"node": seed_node, "job_id": "ok-id"}):
        document = _problem(http.post("/v1/jobs", json=body), 422)
        problems = document["problems"]
        fields = [p["field"] for p in problems]
        assert {"inputs.size", "inputs.variations", "inputs.colour"} <= set(fields)
        assert all(set(p) == {"field", "value", "message"} for p in problems)
        # Each problem is a line the CLI prints, in the same order.
        for problem in problems:
            assert f"{problem['field']}" in cli.stderr and problem["message"] in cli.stderr
        assert document["detail"].splitlines()[1:] == cli.stderr.strip().splitlines()[1:]

        report = http.post("/v1/validate", json=body)
        assert report.status_code == 200 and report.json()["valid"] is False
        assert report.json()["problems"] == problems


@pytest.mark.usefixtures("nothing_enqueued")
@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b'{"name": "n", "name": "m"}', "name", "more than once"),
        (b'{"name": "n", "type": "image_generation", "inputs": {"seed": 1e400}}', "inputs.seed", "finite"),
        (b"[1]", "(document)", "JSON object"),
        (b'{"inputs": ' + b'{"a": ' * 40 + b"1" + b"}" * 41, "(document)", "more than 32 deep"),
    ],
)
def test_a_documents_own_problem_is_a_validation_report_and_a_422_on_submit(
    api: ApiServer, body: bytes, field: str, words: str
) -> None:
    """/v1/validate answers 200 with ``valid: false`` for every problem of the node, the
    document's own included (it answered 422, which its contract does not list); /v1/jobs
    answers 422 with the same problems."""
    http = api.client("acme")
    headers = {"Content-Type": "application/json"}
    report = http.post("/v1/validate", content=body, headers=headers)
    assert report.status_code == 200, report.text
    assert report.json()["valid"] is False
    [problem] = report.json()["problems"]
    assert problem["field"] == field and words in problem["message"], problem
    assert _problem(http.post("/v1/jobs", content=body, headers=headers), 422)["problems"] == [problem]


@pytest.mark.usefixtures("nothing_enqueued")
def test_envelope_and_job_id_problems_are_422(api: ApiServer, offline_node: dict[str, Any]) -> None:
    http = api.client("acme")
    cases: list[tuple[dict[str, Any], dict[str, str], str]] = [
        ({"node": offline_node, "priority": 1}, {}, "priority"),
        ({"node": "not an object"}, {}, "node"),
        ({"node": offline_node, "job_id": "../escape"}, {}, "job_id"),
        ({"node": offline_node, "job_id": "a"}, {"Idempotency-Key": "b"}, "job_id"),
        ({"node": offline_node, "job_id": "x/events"}, {}, "job_id"),  # a route suffix
        ({"node": offline_node, "job_id": "j" * 125}, {}, "job_id"),  # too long with t/acme/
        ({"node": offline_node, "rerun": True}, {}, "rerun"),
        ({"node": offline_node, "webhook": {"url": "ftp://x", "secret": "env:W"}}, {}, "webhook.url"),
        ({"node": offline_node, "webhook": {"url": "http://h.example/", "secret": "whsec_raw"}}, {}, "webhook.secret"),
        (offline_node, {"Idempotency-Key": "bad key"}, "Idempotency-Key"),
    ]
    for body, headers, field in cases:
        document = _problem(http.post("/v1/jobs", json=body, headers=headers), 422)
        assert field in [p["field"] for p in document["problems"]], (body, document)
        # The detail names the request, not the node, which had no problem (it said "invalid image_generation node").
        assert document["detail"].startswith("invalid request (1 problem(s))"), document["detail"]
    assert "whsec_raw" not in json.dumps(document)
    bad_node = {**offline_node, "inputs": {**offline_node["inputs"], "variations": 99}}
    document = _problem(http.post("/v1/jobs", json=bad_node), 422)
    assert document["detail"].startswith("invalid image_generation node (1 problem(s))"), document["detail"]
    # A top level that is not an object; duplicate keys.
    _problem(http.post("/v1/jobs", json=[offline_node]), 422)
    duplicated = b'{"type": "image_generation", "type": "image_generation", "inputs": {}}'
    _problem(http.post("/v1/jobs", content=duplicated, headers={"Content-Type": "application/json"}), 422)


@pytest.mark.usefixtures("nothing_enqueued")
def test_an_invalid_idempotency_key_is_named_with_its_value_and_what_is_allowed(
    api: ApiServer, offline_node: dict[str, Any]
) -> None:
    """The header is the job id, but the problem named the envelope's field "job_id", which the
    caller never sent."""
    http = api.client("acme")
    for key, value, allowed in [
        ("bad key", "bad key", "a job id is 1 to 128 characters"),
        ("k" * 300, f"{'k' * 48}… (300 characters)", "a job id is 1 to 128 characters"),  # bounded
        ("run-1/events", "run-1/events", "must not end with the segment 'events'"),
    ]:
        [problem] = _problem(http.post("/v1/jobs", json=offline_node, headers={"Idempotency-Key": key}), 422)[
            "problems"
        ]
        assert (problem["field"], problem["value"]) == ("Idempotency-Key", value), problem
        assert allowed in problem["message"], problem
    # The envelope's own job_id is still named so.
    [problem] = _problem(http.post("/v1/jobs", json={"node": offline_node, "job_id": "bad key"}), 422)["problems"]
    assert problem["field"] == "job_id"


@pytest.mark.usefixtures("nothing_enqueued")
def test_a_refused_webhook_url_is_never_quoted_with_its_query_or_fragment(
    api: ApiServer, offline_node: dict[str, Any]
) -> None:
    """A webhook URL may carry a token (docs/security.md §8) and a 422 value is never a credential:
    every refusal quotes at most scheme://host[:port]/path (user info was already never echoed)."""
    http = api.client("acme")
    for url, quoted, why in [
        ("ftp://hooks.example.com/x?token=SECRET123", "ftp://hooks.example.com/x", "http:// or https://"),
        ("https://hooks.example.com/x#SECRET123", "https://hooks.example.com/x", "fragment"),
        ("https://hooks.example.com:8443/x?t=SECRET123#f", "https://hooks.example.com:8443/x", "fragment"),
        ("https://hooks_example.com/x?token=SECRET123", "https://hooks_example.com/x", "DNS name"),
        ("https://hooks.example.com/x\\y?token=SECRET123", "https://hooks.example.com/x\\y", "backslashes"),
        (f"https://hooks.example.com/{'p' * 2100}?token=SECRET123", "https://hooks.example.com/ppp", "characters"),
        (f"https://u:SECRET123@hooks.example.com/{'p' * 2100}", "https://hooks.example.com/ppp", "characters"),
    ]:
        body = {"node": offline_node, "webhook": {"url": url, "secret": "env:WEBHOOK_T1"}}
        response = http.post("/v1/jobs", json=body)
        [problem] = _problem(response, 422)["problems"]
        assert problem["field"] == "webhook.url" and why in problem["message"], (url, problem)
        assert str(problem["value"]).startswith(quoted), (url, problem)
        assert "SECRET123" not in response.text, (url, response.text)
    assert "SECRET123" not in api.log()


def test_a_wrong_sign_body_says_what_is_allowed(api: ApiServer) -> None:
    """Not pydantic's words ("Extra inputs are not permitted", "Input should be a valid string")."""
    http = api.client("acme")
    uri = "file:///tmp/images/t/acme/job/variation-0.png"
    for body, field, value, allowed in [
        ({"uri": uri, "url": "x"}, "url", None, "is not a known field; allowed: uri, node"),
        ({}, "uri", None, "is required: it must be the image's durable uri from the result document"),
        ({"uri": 5}, "uri", 5, "a string of at most 2048 characters"),
        ({"uri": uri, "node": "x"}, "node", "x", "must be the job's node JSON object, or left out"),
    ]:
        document = _problem(http.post("/v1/sign", json=body), 422)
        assert [(p["field"], p["value"]) for p in document["problems"]] == [(field, value)], document
        assert allowed in document["problems"][0]["message"], document
        assert "Input should" not in document["detail"] and "Extra inputs" not in document["detail"]


def test_validate_reports_the_cost_and_enqueues_nothing(
    api: ApiServer, seed_node: dict[str, Any], store: redis.Redis, job_env: dict[str, str]
) -> None:
    seed_node["inputs"].update(model="gemini_3_image", size="1024x1024", variations=3)
    before = request_keys(store)
    report = api.client("acme").post("/v1/validate", json=seed_node)
    assert report.status_code == 200, report.text
    body = report.json()
    models = {m["name"]: m for m in api.client("acme").get("/v1/models").json()["models"]}
    [size] = [s for s in models["gemini_3_image"]["sizes"] if s["size"] == "1024x1024"]
    assert body["valid"] is True and body["problems"] == [] and body["variations"] == 3
    assert body["price_usd_per_image"] == size["price_usd_per_image"] > 0
    assert body["estimated_cost_usd"] == pytest.approx(3 * size["price_usd_per_image"])
    assert store.llen(job_env["IMAGEGEN_QUEUE"]) == 0 and not request_keys(store) - before


def test_models_say_what_the_workers_can_call_and_validate_warns_of_the_rest(
    start_api: StartApi, start_worker: StartWorker, seed_node: dict[str, Any]
) -> None:
    # As deployed: the API holds no model credentials, only the workers do. It used to call every
    # Gemini model "not configured" there, and to call the spec's example node valid, with a
    # price, where no worker could run it.
    def gemini(api: ApiServer) -> Any:
        models = api.client("acme").get("/v1/models").json()["models"]
        return {m["name"]: m["configured"] for m in models}["gemini_3_image"]

    api = start_api(env={"GEMINI_API_KEY": "", "GOOGLE_API_KEY": ""})
    assert gemini(api) is None  # no worker has reported: the API cannot tell
    start_worker(env={"GEMINI_API_KEY": "", "GOOGLE_API_KEY": ""})
    assert wait_for(lambda: gemini(api) is False)
    report = api.client("acme").post("/v1/validate", json=seed_node).json()
    assert report["valid"] is True and report["problems"] == []
    [warning] = report["warnings"]
    assert warning["field"] == "inputs.model" and warning["value"] == "gemini_3_image"
    assert "not configured on this deployment's workers" in warning["message"]
    assert warning["message"].endswith("configured: offline_preview")

    start_worker(env={"GEMINI_API_KEY": "AIza-test-key-not-used"})  # a worker that holds the key
    assert wait_for(lambda: gemini(api) is True)
    assert api.client("acme").post("/v1/validate", json=seed_node).json()["warnings"] == []


def test_models_lists_the_catalog(api: ApiServer) -> None:
    from contract.catalog import load_catalog

    catalog = load_catalog()
    models = api.client("acme").get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == catalog.names()
    offline = next(m for m in models if m["name"] == "offline_preview")
    entry = catalog.models["offline_preview"]
    assert {s["size"]: s["aspect_ratio"] for s in offline["sizes"]} == {
        size: option.aspect_ratio for size, option in entry.sizes.items()
    }
    assert offline["model_id"] == entry.model_id


def test_unknown_routes_and_methods_are_problems(api: ApiServer) -> None:
    http = api.client("acme")
    _problem(http.get("/v2/anything"), 404)
    _problem(http.delete("/v1/models"), 405)


def _hostile_bodies(node: dict[str, Any]) -> list[Any]:
    def prompt(text: str) -> dict[str, Any]:
        return {**node, "inputs": {**node["inputs"], "user_query": text}}

    return [
        *([], "x", 1, None, {}, {"node": {}}, {"node": None}, {"node": []}, {**node, "node": 1}),
        *({"node": node, "context": c} for c in ("x", [], 5, "{}", {"a": [1, {"b": None}]}, {"": 1})),
        *({"node": node, "webhook": w} for w in ("x", {}, {"url": 5}, None, {"url": "http://127.0.0.1/h"})),
        {"node": node, "webhook": {"url": "https://example.com/h", "events": "all", "secret": 5}},
        {"node": node, "webhook": {"url": "https://example.com/h", "events": ["x"], "secret": "vault:a/b#c"}},
        *({"node": node, "job_id": j} for j in ([], "", "a" * 500)),
        *({"node": node, "rerun": r} for r in ("yes", True, None)),
        {"node": node, "extra": 1},
        {**node, "inputs": None},
        {**node, "inputs": {"user_query": {"x": 1}}},
        {**node, "inputs": {**node["inputs"], "variations": 10**18}},
        {**node, "inputs": {**node["inputs"], "seed": -1}},
        prompt("{{ x.y }}"),
        {"node": prompt("{{ x.y }}"), "context": {"x": {"y": 5}}},
        {"node": prompt("{{ x.y }}"), "context": {"x": {"y": "a" * 100_000}}},
        {"node": prompt("{{ x }}"), "context": {"x": [1] * 1000}},
    ]


def test_hostile_requests_get_a_problem_never_a_500(
    api: ApiServer, start_worker: StartWorker, offline_node: dict[str, Any]
) -> None:
    start_worker()  # signs with a node reach a worker
    acme = api.client("acme", timeout=60)
    failures = []

    def check(label: str, response: Any) -> None:
        text = response.text
        if response.status_code >= 500 or "Traceback" in text or str(ROOT) in text or 'File "' in text:
            failures.append((label, response.status_code, text[:400]))

    for body in _hostile_bodies(offline_node):
        for path in ("/v1/jobs", "/v1/validate"):
            check(f"{path} {json.dumps(body)[:120]}", acme.post(path, json=body))
    for key in ["", "a" * 5000, "../x", "t/globex/x", "x/events", "x\\y", "%2e%2e", "é".encode("latin-1")]:
        check(
            f"Idempotency-Key {key!r:.60}", acme.post("/v1/jobs", json=offline_node, headers={"Idempotency-Key": key})
        )
    cloud = copy.deepcopy(offline_node)
    cloud["inputs"].update(use_cloud=True, cloud_provider="aws", aws_bucket="b", aws_region="us-east-1")
    uri = "file:///tmp/x/t/acme/j/variation-0.png"
    for sign in [
        *({"uri": u} for u in (5, None, "", "x" * 5000, "t/acme/j/variation-0.png", "https://h/t/acme/j/v-0.png")),
        *({"uri": uri, "node": n} for n in ("x", {}, offline_node, cloud)),
        {},
        {"uri": uri, "x": 1},
        {"uri": "s3://b/t/acme/j/variation-0.png", "node": cloud},
        {"uri": "s3://b/t/acme/j/variation-0.png", "node": {**cloud, "inputs": None}},
    ]:
        check(f"/v1/sign {json.dumps(sign)[:120]}", acme.post("/v1/sign", json=sign))
    for path in [
        *("/v1/jobs/%00", "/v1/jobs/x%0A", "/v1/jobs/" + "a" * 8000, "/v1/jobs/%C3%A9", "/v1/jobs/..%2F.."),
        *("/v1/jobs//x", "/v1/jobs/x/events?after=" + "9" * 5000, "/v1/jobs/x/events?after=1-1&after=2-2"),
        *("/v1/jobs/x/events?after=%00", "/v1/jobs/x/webhooks", "/v1/jobs/", "/v1/jobs"),
    ]:
        check(f"GET {path[:80]}", acme.get(path))
    for cursor in ["x" * 5000, "", "18446744073709551616-0"]:
        check(f"Last-Event-ID {cursor[:20]}", acme.get("/v1/jobs/x/events", headers={"Last-Event-ID": cursor}))
    node_bytes = json.dumps(offline_node).encode()
    for content_type in ["application/json; charset=utf-16", "application/x+json", "APPLICATION/JSON"]:
        check(content_type, acme.post("/v1/jobs", content=node_bytes, headers={"Content-Type": content_type}))
    as_json = {"Content-Type": "application/json"}
    check("utf-16 body", acme.post("/v1/jobs", content=json.dumps(offline_node).encode("utf-16"), headers=as_json))
    check("BOM body", acme.post("/v1/jobs", content=b"\xef\xbb\xbf" + node_bytes, headers=as_json))
    assert not failures, "\n".join(map(str, failures))
    assert "Traceback" not in api.log()
