"""Cloud storage end to end: producer -> Redis -> real worker processes ->
credentials from OpenBao -> the emulator's bucket -> result document, and
re-signing through the ``imagegen.sign_url`` task and the CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from azure.storage.blob import BlobServiceClient
from google.cloud import storage

from contract.catalog import load_catalog
from contract.queue import SIGN_URL
from contract.result import ImageRecord, JobResult
from devtools.emulators import Emulator, azurite_connection_string
from devtools.fake_gemini import FakeGemini
from devtools.flower_process import FlowerProcess
from producer.client import ImageGenClient, SignError
from tests.cli import imagegen
from tests.cloud.conftest import PutSecret
from tests.cloud.helpers import FlakyProxy
from tests.conftest import StartWorker, wait_for
from tests.redis_scan import redis_dump
from worker.storage.keys import WRITE_CHECK_NAME

Read = Callable[[str], tuple[bytes, str, dict[str, str]]]  # uri -> bytes, content type, metadata


@dataclass
class CloudTarget:
    provider: str
    bucket: str
    fields: dict[str, Any]  # node inputs for use_cloud, credentials as vault: references
    read: Read


@pytest.fixture
def targets(
    request: pytest.FixtureRequest,
    put_secret: PutSecret,
    aws_keys_json: str,
    azurite: Emulator,
    sa_json: str,
) -> Callable[[str], CloudTarget]:
    """A fresh bucket (container) per provider, with its credentials stored in OpenBao."""

    def make(provider: str) -> CloudTarget:
        if provider == "aws":
            bucket, s3 = request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_admin")
            ref = put_secret({"credentials": aws_keys_json})["credentials"]

            def read_s3(uri: str) -> tuple[bytes, str, dict[str, str]]:
                obj = s3.get_object(Bucket=bucket, Key=urlsplit(uri).path.lstrip("/"))
                return obj["Body"].read(), obj["ContentType"], obj["Metadata"]

            fields = {"aws_bucket": bucket, "aws_prefix": "e2e", "aws_credentials": ref, "aws_region": "us-east-1"}
            return CloudTarget(provider, bucket, fields, read_s3)
        if provider == "azure":
            container = request.getfixturevalue("azure_container")
            admin: BlobServiceClient = request.getfixturevalue("azure_admin")
            ref = put_secret({"connection_string": azurite.extra["connection_string"]})["connection_string"]

            def read_blob(uri: str) -> tuple[bytes, str, dict[str, str]]:
                blob = admin.get_blob_client(container, uri.split(f"/{container}/", 1)[1])
                props = blob.get_blob_properties()
                return blob.download_blob().readall(), str(props.content_settings.content_type), dict(props.metadata)

            fields = {"azure_container": container, "azure_prefix": "e2e", "azure_connection_string": ref}
            return CloudTarget(provider, container, fields, read_blob)
        bucket = request.getfixturevalue("gcs_bucket")
        gcs: storage.Client = request.getfixturevalue("gcs_admin")
        ref = put_secret({"service_account": sa_json})["service_account"]

        def read_gcs(uri: str) -> tuple[bytes, str, dict[str, str]]:
            blob = gcs.bucket(bucket).get_blob(urlsplit(uri).path.lstrip("/"))
            assert blob is not None, f"{uri} was not stored"
            return blob.download_as_bytes(), str(blob.content_type), dict(blob.metadata or {})

        fields = {"gcp_bucket": bucket, "gcp_prefix": "e2e", "gcp_credentials": ref, "gcp_project": "imagegen-test"}
        return CloudTarget(provider, bucket, fields, read_gcs)

    return make


def cloud_node(offline_node: dict[str, Any], provider: str, fields: dict[str, Any]) -> dict[str, Any]:
    inputs = {**offline_node["inputs"], "use_cloud": True, "cloud_provider": provider, **fields}
    return {**offline_node, "inputs": inputs}


def assert_stored(image: ImageRecord, target: CloudTarget, result: JobResult) -> None:
    """The object holds the result's bytes and type, and the result's URL serves them."""
    data, content_type, metadata = target.read(image.uri)
    assert hashlib.sha256(data).hexdigest() == image.sha256 and len(data) == image.bytes
    assert content_type == image.mime_type == "image/png"
    assert metadata["job_id"] == result.job_id and metadata["model"] == "offline_preview"
    assert image.uri.endswith(f"/e2e/{result.job_id}/variation-{image.index}.png")
    download = requests.get(image.url, timeout=10)
    assert download.status_code == 200 and hashlib.sha256(download.content).hexdigest() == image.sha256


def tampered_sas(url: str) -> str:
    head, _, rest = url.partition("sig=")
    value, sep, tail = rest.partition("&")
    raw = bytearray(base64.b64decode(requests.utils.unquote(value)))
    raw[0] ^= 0xFF
    return f"{head}sig={requests.utils.quote(base64.b64encode(bytes(raw)).decode(), safe='')}{sep}{tail}"


@pytest.mark.parametrize("provider", ["aws", "azure", "gcp"])
def test_seed_example_with_use_cloud_stores_in_that_cloud(
    provider: str,
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    cloud_env: dict[str, str],
    targets: Callable[[str], CloudTarget],
) -> None:
    target = targets(provider)
    start_worker(env=cloud_env)
    result = client.submit(cloud_node(offline_node, provider, target.fields)).wait(timeout=60)

    assert result.status == "succeeded", result.errors
    [image] = result.images
    assert image.uri.startswith({"aws": "s3://", "azure": azurite_prefix(), "gcp": "gs://"}[provider])
    assert_stored(image, target, result)
    assert image.url_expires_at is not None
    expected = datetime.now(UTC) + timedelta(seconds=client.settings.signed_url_ttl_s)
    assert abs((image.url_expires_at - expected).total_seconds()) < 60
    if provider == "azure":  # Azurite verifies SAS signatures: prove ours is checked
        assert requests.get(tampered_sas(image.url), timeout=10).status_code == 403


# What a storage error found by the write check (worker/storage/write_check.py) ends with.
CHECKED_FIRST = " (a test write before generating failed: no image was made)"


def azurite_prefix() -> str:
    return "http://127.0.0.1:"


def test_missing_bucket_or_container_gives_a_storage_error_record(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    cloud_env: dict[str, str],
    targets: Callable[[str], CloudTarget],
) -> None:
    start_worker(env=cloud_env)
    expected = {
        "aws": "S3 bucket 'imagegen-e2e-missing': the bucket does not exist (NoSuchBucket, HTTP 404)",
        "azure": "Azure container 'imagegen-e2e-missing': the container does not exist (ContainerNotFound, HTTP 404)",
        "gcp": "GCS bucket 'imagegen-e2e-missing': the bucket does not exist (NotFound, HTTP 404)",
    }
    handles = {}
    for provider in expected:
        fields = targets(provider).fields
        bucket_field = {"aws": "aws_bucket", "azure": "azure_container", "gcp": "gcp_bucket"}[provider]
        fields[bucket_field] = "imagegen-e2e-missing"
        handles[provider] = client.submit(cloud_node(offline_node, provider, fields))
    for provider, handle in handles.items():
        result = handle.wait(timeout=60)
        assert result.status == "failed" and result.images == []
        [error] = result.errors
        assert (error.kind, error.message) == ("storage", expected[provider] + CHECKED_FIRST)


def test_denied_access_gives_a_storage_error_record(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    cloud_env: dict[str, str],
    targets: Callable[[str], CloudTarget],
    s3_admin: Any,
    azurite: Emulator,
    put_secret: PutSecret,
) -> None:
    """moto enforces a bucket policy's Deny; Azurite refuses a wrong account key (read from Vault)."""
    aws = targets("aws")
    deny = {"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{aws.bucket}/*"}
    s3_admin.put_bucket_policy(Bucket=aws.bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [deny]}))
    azure = targets("azure")
    wrong = azurite_connection_string(azurite.url, azurite.extra["account"], base64.b64encode(b"x" * 64).decode())
    azure.fields["azure_connection_string"] = put_secret({"connection_string": wrong})["connection_string"]

    start_worker(env=cloud_env)
    denied_s3 = client.submit(cloud_node(offline_node, "aws", aws.fields)).wait(timeout=60)
    denied_azure = client.submit(cloud_node(offline_node, "azure", azure.fields)).wait(timeout=60)

    for result, message in [
        (denied_s3, f"S3 bucket '{aws.bucket}': access denied (403, HTTP 403)"),
        (denied_azure, f"Azure container '{azure.bucket}': access denied (AuthorizationFailure, HTTP 403)"),
    ]:
        assert result.status == "failed"
        [error] = result.errors
        assert (error.kind, error.message, error.attempts) == ("storage", message + CHECKED_FIRST, 1)


def test_secret_values_never_reach_redis_logs_or_results(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    cloud_env: dict[str, str],
    targets: Callable[[str], CloudTarget],
    redis_url: str,
    aws_keys_json: str,
    azurite: Emulator,
    sa_json: str,
    job_env: dict[str, str],
    tmp_path: Path,
) -> None:
    aws, azure, gcp = targets("aws"), targets("azure"), targets("gcp")
    worker = start_worker(env=cloud_env)
    with FlowerProcess(job_env, ("ops", "flower-pw"), tmp_path) as flower:
        time.sleep(1)  # subscribed to events before the jobs run
        results = [
            client.submit(cloud_node(offline_node, t.provider, t.fields)).wait(timeout=60) for t in (aws, azure, gcp)
        ]
        missing = {**aws.fields, "aws_bucket": "imagegen-canary-missing"}
        results.append(client.submit(cloud_node(offline_node, "aws", missing)).wait(timeout=60))
        assert [r.status for r in results] == ["succeeded", "succeeded", "succeeded", "failed"]
        signed = client.sign(results[1].images[0].uri, cloud_node(offline_node, "azure", azure.fields))

        def listed() -> str:
            return requests.get(f"{flower.url}/api/tasks", auth=flower.auth, timeout=5).text

        # Workers publish task events in batches (worker/event_batching.py): Flower lags a moment.
        assert wait_for(lambda: SIGN_URL in listed(), timeout=10), "Flower never listed the sign task"
        flower_tasks = listed()

    canaries = {
        "aws secret key": json.loads(aws_keys_json)["aws_secret_access_key"],
        "azure account key": azurite.extra["key"],
        "gcp private key": json.loads(sa_json)["private_key"].splitlines()[5],
        "vault token": cloud_env["VAULT_TOKEN"],
    }
    places = {
        "redis": redis_dump(redis_url).decode(errors="replace"),
        "worker log": worker.log(),
        "results": json.dumps([r.model_dump(mode="json") for r in results]) + signed.url,
        "flower": flower_tasks,
    }
    assert "succeeded" in places["worker log"]  # the log is the real one
    assert "vault:" in flower_tasks and "imagegen.generate_variation" in flower_tasks  # Flower saw the references
    leaks = [(name, where) for name, value in canaries.items() for where, text in places.items() if value in text]
    assert leaks == []
    # Signed URLs are bearer credentials too: in the results, never in the worker's log or Flower.
    signatures = ("X-Amz-Signature=", "sig=", "X-Goog-Signature=")
    assert all(mark in places["results"] for mark in signatures)
    exposed = [(mark, where) for mark in signatures for where in ("worker log", "flower") if mark in places[where]]
    assert exposed == []


def test_sign_returns_a_fresh_working_url(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    cloud_env: dict[str, str],
    job_env: dict[str, str],
    targets: Callable[[str], CloudTarget],
    tmp_path: Path,
) -> None:
    azure, aws = targets("azure"), targets("aws")
    start_worker(env=cloud_env)
    azure_node, aws_node = cloud_node(offline_node, "azure", azure.fields), cloud_node(offline_node, "aws", aws.fields)
    [image] = client.submit(azure_node).wait(timeout=60).images
    time.sleep(1.1)  # signatures carry times in whole seconds

    signed = client.sign(image.uri, azure_node)
    assert signed.uri == image.uri and signed.url != image.url
    assert signed.url_expires_at is not None and image.url_expires_at is not None
    assert signed.url_expires_at > image.url_expires_at
    download = requests.get(signed.url, timeout=10)
    assert download.status_code == 200 and hashlib.sha256(download.content).hexdigest() == image.sha256
    assert requests.get(tampered_sas(signed.url), timeout=10).status_code == 403

    # Only objects of the node's own bucket are signed: no borrowing the worker's identity.
    with pytest.raises(SignError, match="no image this service stored has this uri") as caught:
        client.sign(image.uri.replace(azure.bucket, "another-container"), azure_node)
    assert caught.value.kind == "not_found" and azure.bucket not in str(caught.value)  # nothing about the store

    # The CLI, as a user runs it.
    [s3_image] = client.submit(aws_node).wait(timeout=60).images
    node_file = tmp_path / "node.json"
    node_file.write_text(json.dumps(aws_node))
    run = imagegen(job_env, "sign", s3_image.uri, "--node", str(node_file), timeout=60)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    assert printed["uri"] == s3_image.uri and printed["url_expires_at"]
    assert hashlib.sha256(requests.get(printed["url"], timeout=10).content).hexdigest() == s3_image.sha256


def test_platform_s3_storage_when_use_cloud_is_false(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    cloud_env: dict[str, str],
    s3_admin: Any,
    s3_bucket: str,
) -> None:
    """IMAGEGEN_STORAGE_URL=s3://bucket/prefix with the worker's own (default chain) credentials."""
    start_worker(
        env={
            **cloud_env,
            "IMAGEGEN_STORAGE_URL": f"s3://{s3_bucket}/platform",
            "AWS_ACCESS_KEY_ID": "platform-key",
            "AWS_SECRET_ACCESS_KEY": "platform-secret",
        }
    )
    result = client.submit(offline_node).wait(timeout=60)
    assert result.status == "succeeded", result.errors
    [image] = result.images
    assert image.uri == f"s3://{s3_bucket}/platform/{result.job_id}/variation-0.png"
    body = s3_admin.get_object(Bucket=s3_bucket, Key=f"platform/{result.job_id}/variation-0.png")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == image.sha256
    signed = client.sign(image.uri)  # no node: the platform store
    assert hashlib.sha256(requests.get(signed.url, timeout=10).content).hexdigest() == image.sha256


def test_a_store_that_cannot_open_fails_before_the_model_is_paid(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    cloud_env: dict[str, str],
    targets: Callable[[str], CloudTarget],
) -> None:
    """A credential reference that names no secret: every variation fails with a storage error,
    and the (billed) model is never called."""
    with FakeGemini(api_key="AIzaCANARY-cloud-1") as fake:
        start_worker(env={**cloud_env, "GOOGLE_GEMINI_BASE_URL": fake.base_url, "GEMINI_API_KEY": "AIzaCANARY-cloud-1"})
        fields = targets("aws").fields
        fields["aws_credentials"] = fields["aws_credentials"].rsplit("#", 1)[0] + "-missing#credentials"
        node = cloud_node(offline_node, "aws", fields)
        node["inputs"].update(model="gemini_3_image", variations=2)
        result = client.submit(node).wait(timeout=60)
        assert result.status == "failed" and result.images == []
        assert [e.kind for e in result.errors] == ["storage", "storage"]
        assert "no such secret" in result.errors[0].message
        assert fake.requests == []


@contextmanager
def nothing_paid_for(
    start_worker: StartWorker, client: ImageGenClient, cloud_env: dict[str, str], quota_model_id: str
) -> Iterator[None]:
    """A worker calling FakeGemini, with ``quota_model_id`` under the project's shared quota; the
    jobs run in the block must make no model call and take no slot of that quota."""
    quota_key = f"imagegen:ratelimit:{quota_model_id}"
    client.records.client.delete(quota_key)
    with FakeGemini(api_key="AIzaCANARY-unpaid-1") as fake:
        start_worker(
            env={
                **cloud_env,
                "GOOGLE_GEMINI_BASE_URL": fake.base_url,
                "GEMINI_API_KEY": "AIzaCANARY-unpaid-1",
                "IMAGEGEN_RATE_LIMITS": f"{quota_model_id}=600:10",
            }
        )
        yield
        assert fake.requests == []  # not one call paid for
        assert not client.records.client.exists(quota_key)  # nor a slot of the quota taken from others


def test_a_missing_bucket_or_container_fails_before_any_image_is_paid_for(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    cloud_env: dict[str, str],
    targets: Callable[[str], CloudTarget],
) -> None:
    """Opening a store builds a client and checks nothing: the write check finds the missing
    bucket before the (billed) model is called, once, and every variation fails with it."""
    missing = {
        "aws": ("aws_bucket", "S3 bucket 'imagegen-unpaid-missing': the bucket does not exist (NoSuchBucket"),
        "azure": ("azure_container", "Azure container 'imagegen-unpaid-missing': the container does not exist"),
        "gcp": ("gcp_bucket", "GCS bucket 'imagegen-unpaid-missing': the bucket does not exist (NotFound"),
    }
    with nothing_paid_for(start_worker, client, cloud_env, "gemini-3-pro-image"):
        handles = {}
        for provider, (bucket_field, _) in missing.items():
            fields = {**targets(provider).fields, bucket_field: "imagegen-unpaid-missing"}
            node = cloud_node(offline_node, provider, fields)
            node["inputs"].update(model="gemini_3_image", variations=3)
            handles[provider] = client.submit(node)
        results = {provider: handle.wait(timeout=60) for provider, handle in handles.items()}
    for provider, result in results.items():
        assert result.status == "failed" and result.images == [] and result.estimated_cost_usd == 0.0
        assert [(e.kind, e.attempts) for e in result.errors] == [("storage", 1)] * 3
        assert all(e.message.startswith(missing[provider][1]) for e in result.errors), result.errors
        assert all(e.message.endswith(CHECKED_FIRST) and e.estimated_cost_usd is None for e in result.errors)


def test_a_missing_bucket_fails_a_job_with_a_prompt_step_before_its_text_call(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    cloud_env: dict[str, str],
    targets: Callable[[str], CloudTarget],
) -> None:
    """The prompt step's text call is paid for too: the step checks the store before making it,
    as each variation does before its image, and the job ends with the store's error."""
    expected = "S3 bucket 'imagegen-unpaid-step': the bucket does not exist (NoSuchBucket"
    with nothing_paid_for(start_worker, client, cloud_env, "gemini-2.5-flash"):  # the text model
        node = cloud_node(offline_node, "aws", {**targets("aws").fields, "aws_bucket": "imagegen-unpaid-step"})
        node["inputs"].update(model="gemini_3_image", variations=2, prompt_enhancement="enhance")
        result = client.submit(node).wait(timeout=60)
    assert result.status == "failed" and result.images == [] and result.estimated_cost_usd == 0.0
    assert [e.kind for e in result.errors] == ["storage", "storage"]
    assert all(e.message.startswith(expected) and e.message.endswith(CHECKED_FIRST) for e in result.errors)
    step = result.prompt_step
    assert step is not None and step.attempts == 0 and step.usage is None and step.estimated_cost_usd == 0.0


def test_a_working_bucket_is_checked_once_per_worker_process_not_per_image(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    cloud_env: dict[str, str],
    targets: Callable[[str], CloudTarget],
    moto: Emulator,
) -> None:
    aws = targets("aws")
    with FlakyProxy(moto.url, only="PUT ") as proxy:  # counts the S3 writes
        start_worker(env={**cloud_env, "AWS_ENDPOINT_URL_S3": proxy.url})
        node = cloud_node(offline_node, "aws", aws.fields)
        node["inputs"]["variations"] = 3
        results = [client.submit(node).wait(timeout=60) for _ in range(2)]
        assert [r.status for r in results] == ["succeeded", "succeeded"], [r.errors for r in results]
        for result in results:  # the URLs are signed for the proxy's address
            for image in result.images:
                assert_stored(image, aws, result)
    markers = [line for line in proxy.requests if line.endswith(f"/{WRITE_CHECK_NAME}")]
    assert markers == [f"PUT /{aws.bucket}/e2e/{WRITE_CHECK_NAME}"]  # one check for 6 images
    assert len(proxy.requests) == 1 + 6


def test_an_image_paid_for_whose_upload_fails_still_counts_its_cost(
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    cloud_env: dict[str, str],
    targets: Callable[[str], CloudTarget],
    moto: Emulator,
) -> None:
    """The write check passes, then the images' own uploads are refused (403): each generation
    was billed, so its price is on its error record and in the job's cost."""
    aws = targets("aws")
    job_id = f"unstored-{uuid.uuid4().hex[:8]}"
    with (
        FakeGemini(api_key="AIzaCANARY-unstored-1") as fake,
        FlakyProxy(moto.url, failures=100, status=403, only=f"PUT /{aws.bucket}/e2e/{job_id}/") as proxy,
    ):
        start_worker(
            env={
                **cloud_env,
                "AWS_ENDPOINT_URL_S3": proxy.url,
                "GOOGLE_GEMINI_BASE_URL": fake.base_url,
                "GEMINI_API_KEY": "AIzaCANARY-unstored-1",
            }
        )
        node = cloud_node(offline_node, "aws", aws.fields)
        node["inputs"].update(model="gemini_3_image", variations=2)
        result = client.submit(node, job_id).wait(timeout=60)
        assert len(fake.requests) == 2 and len(proxy.requests) == 2
    settings = client.settings
    entry = load_catalog(settings.model_catalog_file, settings.model_catalog_replace).get("gemini_3_image")
    assert entry is not None
    price = entry.price_for(result.size)
    assert price is not None and price > 0

    assert result.status == "failed" and result.images == []
    assert result.estimated_cost_usd == round(2 * price, 6)  # was 0.0: only stored images counted
    assert [(e.kind, e.message) for e in result.errors] == [
        ("storage", f"S3 bucket '{aws.bucket}': access denied (403, HTTP 403)")
    ] * 2
    assert [e.estimated_cost_usd for e in result.errors] == [price, price]
    assert all(e.metadata is not None and e.metadata.response_id and e.metadata.usage for e in result.errors)
    assert result.usage is not None and result.usage.total_tokens > 0
