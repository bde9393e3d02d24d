"""Attacks on where images are written and signed, as a hostile node author
(or anyone who can put a message on the broker) would make them.

Each class is attacked at the producer and, with messages that bypass the
producer, at the worker; what escaped is checked on disk, in the emulators'
buckets and on a listening socket."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.storage.blob import BlobServiceClient
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.clouds import (
    Target,
    TargetError,
    TargetPolicy,
    canonical_prefix,
    node_target,
    parse_allowed_targets,
    platform_target,
)
from contract.errors import NodeValidationError
from contract.job_ids import is_new_job_id
from contract.jobs import utcnow
from contract.node import validate_node
from contract.queue import SIGN_URL, dispatch_key, job_key, job_task_id
from contract.settings import Settings
from contract.work import SignRequest
from devtools.emulators import Emulator, azurite_connection_string, service_account_json
from producer.client import ImageGenClient, SignError
from tests.conftest import StartWorker
from tests.security.helpers import Listener, files_under, send_raw_job
from worker.errors import PermanentError, StorageError
from worker.storage import Location, location_for, object_key
from worker.storage.azure_blob import AzureBlobStore
from worker.storage.common import StoreOptions
from worker.storage.gcs import GCSStore
from worker.storage.keys import check_image_key
from worker.storage.local import LocalStore

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
META = {"job_id": "x"}
JOB_ID = st.from_regex(r"\A[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}){0,3}\Z")


def cloud(node: dict[str, Any], **inputs: Any) -> dict[str, Any]:
    return {**node, "inputs": {**node["inputs"], "use_cloud": True, **inputs}}


# --- 1. job ids are not paths ----------------------------------------------------------------------


def test_job_ids_that_are_paths_never_write_outside_local_storage(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], tmp_path: Path
) -> None:
    worker = start_worker()
    attacks = ["../escape", "/tmp/abs", "ok/../../escape", "a//b", "./x", "a/..", "x:dispatched", "line\nINJECTED"]
    for job_id in attacks:  # refused by the producer...
        with pytest.raises(NodeValidationError, match="job_id"):
            client.submit(offline_node, job_id=job_id)
    # ...and by the worker when a message skips the producer.
    for job_id in attacks:
        document = send_raw_job(client, job_id, offline_node).get(timeout=30)
        assert document["status"] == "failed" and "job_id" in document["errors"][0]["message"], job_id
    written = {p for p in files_under(tmp_path) if p.suffix == ".png"}
    assert written == set()
    assert "rejected by the worker" in worker.log()
    assert not any(line.startswith("INJECTED") for line in worker.log().splitlines())  # no forged log line
    assert not (tmp_path.parent / "escape").exists() and not Path("/tmp/abs").exists()


def test_local_store_refuses_keys_and_symlinks_that_leave_its_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "evil").symlink_to(outside, target_is_directory=True)
    location = Location(LocalStore(root), "")
    for job_id in ("../outside", "evil", "a/../../outside", "/abs"):
        with pytest.raises(StorageError):
            location.put(job_id, 0, 1, "png", PNG, "image/png", META)
    for key in ("../outside/x.png", "a/./b.png", "a//b.png", "a\\..\\b.png", "a/b%2F..png", ""):
        with pytest.raises(StorageError, match="canonical form"):
            location.store.put(key, PNG, "image/png", META)
    assert files_under(outside) == set() and files_under(root) == set()
    # Signing is confined too: another file under the root is not an image this service stored.
    (root / "notes.txt").write_text("private")
    with pytest.raises(StorageError):
        location.url_for((root / "notes.txt").as_uri())
    with pytest.raises(StorageError):
        location.url_for((outside / "x.png").as_uri())


def test_a_trailing_newline_is_not_a_safe_key_character(tmp_path: Path) -> None:
    """The key grammar is checked whole: a segment ending in a newline is a control character,
    refused by every store and by the image checks that confine signing."""
    store = LocalStore(tmp_path)
    for key in ("renders\n/x/variation-0.png", "t/acme/job-1/variation-0.png\n"):
        with pytest.raises(StorageError, match="canonical form"):
            store.put(key, PNG, "image/png", META)
    assert files_under(tmp_path) == set()
    with pytest.raises(StorageError):
        check_image_key("renders/t/acme/job-1/variation-0.png\n", "renders")
    inputs = {"use_cloud": True, "cloud_provider": "aws", "aws_bucket": "shared-bucket", "aws_prefix": "renders\n/x"}
    with pytest.raises(TargetError):  # a raw message's target, past the producer
        node_target(inputs, Settings(allowed_targets="s3://shared-bucket").target_policy)


def test_local_store_never_follows_a_symlink_below_its_root(tmp_path: Path) -> None:
    """A link planted deeper in the tree (a job's folder, or the image's own name) is refused or
    replaced, never followed: the walk opens each folder with O_NOFOLLOW relative to the last."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "tenant").mkdir(parents=True)
    outside.mkdir()
    (outside / "victim.png").write_bytes(b"precious")
    (root / "tenant" / "job-a").symlink_to(outside, target_is_directory=True)
    location = Location(LocalStore(root), "tenant")
    with pytest.raises(StorageError, match="leaves"):
        location.put("job-a", 0, 1, "png", PNG, "image/png", META)
    (root / "tenant" / "job-b").mkdir()
    (root / "tenant" / "job-b" / "variation-0.png").symlink_to(outside / "victim.png")
    stored = location.put("job-b", 0, 1, "png", PNG, "image/png", META)
    written = root / "tenant" / "job-b" / "variation-0.png"
    assert stored.uri == written.as_uri() and not written.is_symlink() and written.read_bytes() == PNG
    assert (outside / "victim.png").read_bytes() == b"precious"
    assert [p.name for p in outside.iterdir()] == ["victim.png"]
    assert not [p for p in (root / "tenant" / "job-b").iterdir() if p.name.startswith(".part-")]


def test_platform_azure_uploads_cannot_leave_the_container(
    azurite: Emulator, azure_admin: BlobServiceClient, azure_container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = f"{azure_container}-victim"
    azure_admin.create_container(victim)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.extra["connection_string"])
    location = location_for(None, Settings(storage_url=f"az://{azure_container}/platform"))
    for job_id in (f"../../{victim}/x", f"../{victim}", "a/../.."):
        with pytest.raises(StorageError):
            location.put(job_id, 0, 1, "png", PNG, "image/png", META)
    for key in (f"../{victim}/x.png", f"platform/%2e%2e/%2e%2e/{victim}/x.png"):
        with pytest.raises(StorageError, match="canonical form"):
            location.store.put(key, PNG, "image/png", META)
    assert list(azure_admin.get_container_client(victim).list_blobs()) == []
    assert list(azure_admin.get_container_client(azure_container).list_blobs()) == []


@settings(max_examples=400, deadline=None, derandomize=True)
@given(a=JOB_ID, b=JOB_ID, run_a=st.integers(1, 99), run_b=st.integers(1, 99), i=st.integers(0, 7), j=st.integers(0, 7))
def test_keys_of_different_jobs_and_kinds_never_collide(a: str, b: str, run_a: int, run_b: int, i: int, j: int) -> None:
    if not (is_new_job_id(a) and is_new_job_id(b)):
        return
    # Redis: a job's hash is never another job's dispatch guard (the finding: "x:dispatched").
    assert job_key(a) != dispatch_key(b, run_b)
    assert job_task_id(a, run_a) != job_task_id(b, run_b) or (a, run_a) == (b, run_b)
    # Objects: one key per (job, run, variation), under any prefix.
    same = (a, run_a, i) == (b, run_b, j)
    assert (object_key("p", a, i, "png", run_a) == object_key("p", b, j, "png", run_b)) == same


def test_no_key_is_written_into_another_tenants_namespace() -> None:
    """The first ``t`` segment of a key says whose image it is when signed (check_image_key): the
    finding was tenant globex writing ``imagegen/t/acme/t/globex/x/...`` with the prefix
    ``imagegen/t/acme``, over acme's image of job ``t/globex/x``, which acme then signed."""
    acme_key = object_key("imagegen", "t/acme/t/globex/x", 0, "png")
    assert check_image_key(acme_key, "imagegen", "acme") == acme_key
    for prefix, job_id in [
        ("imagegen/t/acme", "t/globex/x"),  # globex's job under acme's namespace
        ("t/acme", "x"),  # a platform job there
        ("imagegen", "run-1/t/acme/x"),  # a platform id holding acme's namespace
        ("imagegen", "t/acme"),  # two segments: no tenant, but names one
    ]:
        with pytest.raises(StorageError, match="tenant namespace"):
            object_key(prefix, job_id, 0, "png")  # a message sent past the producer's checks
    # ... which refuse both before anything is spent: the node's prefix and the job id.
    with pytest.raises(TargetError, match="reserved"):
        canonical_prefix("imagegen/t/acme")
    assert not is_new_job_id("run-1/t/acme/x") and not is_new_job_id("t/acme")
    # The operator's own prefixes follow the same rule, at start (the settings refuse them).
    with pytest.raises(ValueError, match="reserved"):
        parse_allowed_targets("s3://shared-bucket/imagegen/t")
    with pytest.raises(TargetError, match="reserved"):
        platform_target("s3://platform-bucket/t/images", Settings())
    named = "IMAGEGEN_STORAGE_URL s3://platform-bucket/imagegen/t/x: its prefix has the segment 't'"
    with pytest.raises(ValueError, match=named):
        Settings(storage_url="s3://platform-bucket/imagegen/t/x")


def test_the_worker_refuses_a_prefix_into_a_tenants_namespace_without_the_producer(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    cloud_env: dict[str, str],
    s3_admin: Any,
    s3_bucket: str,
) -> None:
    start_worker(env={**cloud_env, "REVIEW_AWS": json.dumps({"access_key_id": "k", "secret_access_key": "s"})})
    node = cloud(
        offline_node, cloud_provider="aws", aws_bucket=s3_bucket, aws_region="us-east-1",
        aws_prefix="imagegen/t/acme", aws_credentials="env:REVIEW_AWS",
    )  # fmt: skip
    document = send_raw_job(client, "t/globex/x", node).get(timeout=30)
    assert document["status"] == "failed" and document["images"] == []
    assert "inputs.aws_prefix" in document["errors"][0]["message"]
    assert "reserved" in document["errors"][0]["message"]
    assert s3_admin.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0


def test_a_job_id_from_before_the_namespace_rule_ends_before_any_cost_and_stays_readable(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], settings: Settings
) -> None:
    """A job submitted under ``run-1/t/acme/x`` before the rule, still queued at the upgrade: the
    job task ends it failed (its images would land in acme's namespace), and the client still
    reads it; it did not wait for the lost-job deadline."""
    start_worker()
    job_id = "legacy-run/t/acme/x"
    client.records.claim(job_id, node_fingerprint="f", model="offline_preview", variations=1, submitted_at=utcnow())
    document = send_raw_job(client, job_id, offline_node).get(timeout=30)
    assert document["status"] == "failed" and document["images"] == []
    assert "a segment 't' only begins an id" in document["errors"][0]["message"]
    assert client.status(job_id).state == "failed" and client.result(job_id) is not None
    assert not files_under(Path(settings.storage_url))


# --- 2. the worker's identity is not lent to nodes -----------------------------------------------------


@pytest.mark.parametrize(
    "inputs",
    [
        {"cloud_provider": "aws", "aws_bucket": "platform-bucket"},
        {"cloud_provider": "gcp", "gcp_bucket": "platform-bucket"},
        {
            "cloud_provider": "azure",
            "azure_container": "images",
            "azure_account_url": "https://acct.blob.core.windows.net",
        },
    ],
)
def test_a_node_without_credentials_is_refused_unless_the_target_is_allow_listed(
    offline_node: dict[str, Any], inputs: dict[str, Any]
) -> None:
    node = cloud(offline_node, **inputs)
    with pytest.raises(NodeValidationError) as caught:
        validate_node(node, Settings())
    [problem] = caught.value.problems
    assert problem.field.endswith(("_credentials", "_connection_string"))
    assert "platform's own identity" in problem.message
    allowed = {
        "aws": "s3://platform-bucket",
        "gcp": "gs://platform-bucket",
        "azure": "az://acct.blob.core.windows.net/images",
    }[inputs["cloud_provider"]]
    validate_node(node, Settings(allowed_targets=allowed))  # the operator's explicit choice
    # A listed prefix does not open the whole bucket, and a sibling name is not the same bucket.
    with pytest.raises(NodeValidationError):
        validate_node(node, Settings(allowed_targets=allowed + "/shared"))
    with pytest.raises(NodeValidationError):
        validate_node(
            node,
            Settings(allowed_targets=allowed.replace("platform-bucket", "xyz-bucket").replace("images", "xyz-images")),
        )


def test_the_worker_refuses_its_identity_for_a_node_target_even_without_the_producer(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    cloud_env: dict[str, str],
    s3_admin: Any,
    s3_bucket: str,
) -> None:
    # The worker's platform credentials would be accepted by the bucket: only the rule stops the write.
    start_worker(env={**cloud_env, "AWS_ACCESS_KEY_ID": "platform", "AWS_SECRET_ACCESS_KEY": "platform"})
    node = cloud(offline_node, cloud_provider="aws", aws_bucket=s3_bucket, aws_region="us-east-1")
    document = send_raw_job(client, "borrowed-identity", node).get(timeout=30)
    assert document["status"] == "failed"
    assert "platform's own identity" in document["errors"][0]["message"]
    assert s3_admin.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0
    # The sign task, sent raw with a credential-less target, refuses as well.
    request = SignRequest(uri=f"s3://{s3_bucket}/x/variation-0.png", target=Target("aws", s3_bucket))
    answer = client.celery.send_task(SIGN_URL, args=(request.model_dump(mode="json"),)).get(timeout=30)
    assert "url" not in answer and "platform's own identity" in answer["error"]["message"]


def test_sign_signs_only_images_under_the_callers_target(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    cloud_env: dict[str, str],
    s3_admin: Any,
    s3_bucket: str,
) -> None:
    platform_env = {
        **cloud_env,
        "IMAGEGEN_STORAGE_URL": f"s3://{s3_bucket}/platform",
        "AWS_ACCESS_KEY_ID": "platform",
        "AWS_SECRET_ACCESS_KEY": "platform",
    }
    worker = start_worker(env=platform_env)
    [image] = client.submit(offline_node).wait(timeout=60).images
    s3_admin.put_object(Bucket=s3_bucket, Key="billing/report.csv", Body=b"private")
    s3_admin.put_object(Bucket=s3_bucket, Key="platform/other/notes.txt", Body=b"private")
    assert requests.get(client.sign(image.uri).url, timeout=10).status_code == 200
    for uri in (
        f"s3://{s3_bucket}/billing/report.csv",  # outside the platform prefix
        f"s3://{s3_bucket}/platform/other/notes.txt",  # not an image this service stored
        f"s3://other-bucket/platform/{image.uri.split('/platform/')[1]}",
    ):
        with pytest.raises(SignError) as refused:
            client.sign(uri)
        # Told only that there is no such image: not the platform's bucket or prefix.
        assert refused.value.kind == "not_found" and "platform" not in str(refused.value), uri
    with pytest.raises(SignError):
        client.sign(f"s3://{s3_bucket}/platform/../billing/report.csv")  # not even a canonical key
    # The signed url handed in as the uri (an easy mistake): its signature must not reach a task's
    # arguments (Flower), and a raw message carrying it is refused before any store is opened,
    # without the signature in the worker's log.
    assert image.url is not None and "X-Amz-Signature=" in image.url
    with pytest.raises(NodeValidationError, match="not its signed 'url'") as mistaken:
        client.sign(image.url)
    assert mistaken.value.problems[0].field == "uri" and "X-Amz-Signature" not in str(mistaken.value)
    request = SignRequest(uri=image.url)
    answer = client.celery.send_task(SIGN_URL, args=(request.model_dump(mode="json"),)).get(timeout=30)
    assert answer["error"]["kind"] == "not_found" and "url" not in answer
    assert "X-Amz-Signature" not in worker.log()
    # Naming the platform bucket as one's own cloud without credentials is refused before any message.
    with pytest.raises(NodeValidationError, match="aws_credentials"):
        client.sign(image.uri, cloud(offline_node, cloud_provider="aws", aws_bucket=s3_bucket))


# --- 3. no token theft, no requests to internal hosts -----------------------------------------------------


def test_account_url_to_an_attacker_host_gets_no_token(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], cloud_env: dict[str, str]
) -> None:
    start_worker(env=cloud_env)
    with Listener() as attacker:
        node = cloud(offline_node, cloud_provider="azure", azure_container="images", azure_account_url=attacker.url)
        with pytest.raises(NodeValidationError, match="azure_connection_string"):
            client.submit(node)
        document = send_raw_job(client, "token-theft", node).get(timeout=30)
        assert document["status"] == "failed"
        assert attacker.connections == 0


PRODUCTION = {
    "environment": "production",
    "storage_url": "s3://platform-bucket/images",
    "allowed_secret_refs": "env:TENANT_",
}


@pytest.mark.parametrize(
    "url",
    [
        "http://acct.blob.core.windows.net",  # not https
        "https://10.0.0.7",  # an internal address
        "https://169.254.169.254",  # the metadata service
        "https://attacker.example",  # not Azure
        "https://acct.blob.core.windows.net.attacker.example",  # a lookalike suffix
        "https://acct.blob.core.windows.net@attacker.example",  # user info
        "https://acct.blob.core.windows.net/?sv=x&sig=y",  # a SAS token
        "https://acct.blob.core.windows.net/a/b/../c",  # a path
        # Parsed as a public host by urllib, dialled as 10.0.0.2 by urllib3 (and the SDKs):
        "https://10.0.0.2\\.blob.core.windows.net",
        "https://10.0.0.2%5C.blob.core.windows.net",
        "https://10.0.0.2 .blob.core.windows.net",
        "https://10.0.0.2\t.blob.core.windows.net",
    ],
)
def test_production_account_urls_must_be_public_azure_endpoints(offline_node: dict[str, Any], url: str) -> None:
    node = cloud(
        offline_node,
        cloud_provider="azure",
        azure_container="images",
        azure_account_url=url,
    )
    # The worker's own Azure identity, for a container the operator listed.
    settings = Settings(**PRODUCTION, allowed_targets="az://acct.blob.core.windows.net/images")
    with pytest.raises(NodeValidationError) as caught:
        validate_node(node, settings)
    # (The listed target is named by its host, so another host is also not a listed target.)
    assert caught.value.problems[0].field == "inputs.azure_account_url"
    assert url not in str(caught.value)  # may hold a SAS: not echoed
    good = cloud(offline_node, **{**node["inputs"], "azure_account_url": "https://acct.blob.core.windows.net"})
    validate_node(good, settings)


def test_a_backslash_blob_endpoint_inside_a_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    account_key = "a2V5" * 11
    endpoint = "https://127.0.0.2\\.blob.core.windows.net"  # urllib3 would dial 127.0.0.2:443
    monkeypatch.setenv("TENANT_AZURE", azurite_connection_string(endpoint, "acct", account_key))
    azure = Target("azure", "images", credentials="env:TENANT_AZURE")
    with pytest.raises(StorageError, match="blob endpoint must not hold a backslash") as caught:
        location_for(azure, Settings(**PRODUCTION))
    assert account_key not in str(caught.value)


class _Redirector(http.server.BaseHTTPRequestHandler):
    """An endpoint that passes the host rules, then sends every request elsewhere (307)."""

    to = ""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(307)
        self.send_header("Location", f"{self.to}/latest/meta-data/iam/security-credentials/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("provider", ["azure", "gcp"])
def test_an_allowed_endpoint_cannot_redirect_the_worker_elsewhere(
    provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host checks see only the first host: the SDKs followed redirects (Azure's uploads, the
    # GCS key's token request with its signed assertion) to hosts nobody checked.
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    policy = TargetPolicy(production=True, allowed_endpoint_hosts=("127.0.0.1",))
    options = StoreOptions(retry_attempts=3, retry_max_delay_s=0.05, timeout_s=5)
    with Listener() as internal:
        handler = type("Handler", (_Redirector,), {"to": internal.url})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            store: Any
            if provider == "azure":
                key = base64.b64encode(b"k" * 32).decode()
                secret = f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={key};BlobEndpoint={endpoint}/acct"
                store = AzureBlobStore.open(Target("azure", "images", credentials="vault:k#v"), secret, options, policy)
            else:
                info = {**json.loads(service_account_json()), "token_uri": f"{endpoint}/token"}
                store = GCSStore.open(
                    Target("gcp", "images", credentials="vault:k#v"), json.dumps(info), options, policy
                )
            with pytest.raises(StorageError, match="answered with a redirect, which is not followed"):
                store.put("t/acme/j/variation-0.png", PNG, "image/png", META)
        finally:
            server.shutdown()
            server.server_close()
        assert internal.connections == 0


@pytest.mark.parametrize(
    ("listed", "account_url", "covered"),
    [
        ("az://127.0.0.1:10000/images", "https://127.0.0.1:10000", True),
        ("az://127.0.0.1:10000/images", "https://127.0.0.1:8200", False),  # another port: another service
        ("az://127.0.0.1/images", "https://127.0.0.1:10000", False),
        # A path-style account (an IP, an emulator): another account on the same host is not covered.
        ("az://127.0.0.1:10000/images", "https://127.0.0.1:10000/finance", False),
        ("az://ACCT.blob.core.windows.net/images", "https://acct.blob.core.windows.net/", True),
        ("az://acct.blob.core.windows.net/images", "https://acct.blob.core.windows.net:443", True),
        ("az://acct.blob.core.windows.net:443/images", "https://acct.blob.core.windows.net", True),
    ],
)
def test_an_allowed_azure_target_is_its_host_port_and_account(listed: str, account_url: str, covered: bool) -> None:
    [allowed] = parse_allowed_targets(listed)
    assert allowed.covers(Target("azure", "images", account_url=account_url)) is covered


def test_endpoints_inside_referenced_secrets_are_checked_before_any_connection(
    monkeypatch: pytest.MonkeyPatch, sa_json: str
) -> None:
    with Listener() as internal:
        account_key = "a2V5" * 11
        monkeypatch.setenv("TENANT_AZURE", azurite_connection_string(internal.url, "acct", account_key))
        azure = Target("azure", "images", credentials="env:TENANT_AZURE")
        with pytest.raises(StorageError, match="blob endpoint") as caught:
            location_for(azure, Settings(**PRODUCTION))
        assert account_key not in str(caught.value)

        monkeypatch.setenv("TENANT_GCP", json.dumps({**json.loads(sa_json), "token_uri": f"{internal.url}/token"}))
        gcp = Target("gcp", "images", credentials="env:TENANT_GCP")
        with pytest.raises(StorageError, match="token_uri"):
            location_for(gcp, Settings(**PRODUCTION))
        assert internal.connections == 0
        # An operator can list an internal endpoint on purpose.
        allowed = Settings(**PRODUCTION, allowed_endpoint_hosts="127.0.0.1")
        location_for(gcp, allowed)
        assert internal.connections == 0  # building the store contacts nobody; uploads would


def test_aws_region_is_checked_at_submit_and_named(offline_node: dict[str, Any]) -> None:
    for region in ("us-east-1.attacker.example", "../x", "us-east-1/", "US-EAST-1", "a" * 300, "us-east-1\n"):
        node = cloud(
            offline_node,
            cloud_provider="aws",
            aws_bucket="tenant-bucket",
            aws_region=region,
            aws_credentials="env:TENANT_AWS",
        )
        with pytest.raises(NodeValidationError) as caught:
            validate_node(node, Settings())
        assert [p.field for p in caught.value.problems] == ["inputs.aws_region"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("aws_bucket", "Bucket_With_Caps"),
        ("aws_bucket", "192.168.1.1"),
        ("aws_bucket", "a..b"),
        ("azure_container", "a--b"),
        ("azure_container", "$root"),
        ("gcp_bucket", "goog-bucket"),
        ("aws_prefix", "../other-tenant"),
        ("azure_prefix", "a/./b"),
        ("gcp_prefix", "a\\b"),
        # "$" matched before a trailing newline: each of these passed as the name before it.
        ("aws_bucket", "tenant-bucket\n"),
        ("azure_container", "images\n"),
        ("gcp_bucket", "tenant-bucket\n"),
        ("gcp_project", "my-project\n"),
        ("aws_prefix", "renders\n/x"),
        ("gcp_prefix", "renders\n"),
        # A "t" segment would put the images in a tenant's namespace (t/<tenant>/), where it signs them.
        ("aws_prefix", "imagegen/t/acme"),
        ("azure_prefix", "t"),
        ("gcp_prefix", "a/t/b"),
    ],
)
def test_bucket_container_and_prefix_rules(offline_node: dict[str, Any], field: str, value: str) -> None:
    provider = {"aws": "aws", "azure": "azure", "gcp": "gcp"}[field.split("_")[0]]
    base = {
        "aws": {"aws_bucket": "tenant-bucket", "aws_credentials": "env:T"},
        "azure": {"azure_container": "images", "azure_connection_string": "env:T"},
        "gcp": {"gcp_bucket": "tenant-bucket", "gcp_credentials": "env:T"},
    }[provider]
    node = cloud(offline_node, cloud_provider=provider, **{**base, field: value})
    with pytest.raises(NodeValidationError) as caught:
        validate_node(node, Settings())
    assert [p.field for p in caught.value.problems] == [f"inputs.{field}"]


def test_a_node_target_cannot_claim_to_be_the_platform() -> None:
    with pytest.raises(PermanentError, match="platform"):
        location_for(Target("aws", "platform-bucket", platform=True), Settings())
