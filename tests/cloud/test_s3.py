"""The S3 store against a real moto server: bytes, type, metadata, presigned
URLs, re-signing, permanent and transient errors, platform storage, caching."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from contract.settings import Settings
from devtools.emulators import Emulator
from tests.cloud.conftest import PutSecret
from tests.cloud.helpers import META, PNG, FlakyProxy, aws_node, store_for_fields
from worker import storage
from worker.errors import StorageError
from worker.storage import object_key


@pytest.fixture
def aws_ref(put_secret: PutSecret, aws_keys_json: str) -> str:
    return put_secret({"credentials": aws_keys_json})["credentials"]


def test_put_stores_bytes_type_metadata_and_presigns(
    cloud_settings: Settings, s3_admin: Any, s3_bucket: str, aws_ref: str
) -> None:
    store, prefix = store_for_fields(aws_node(s3_bucket, aws_ref, aws_prefix="renders/"), cloud_settings)
    key = object_key(prefix, "job-1", 0, "png")
    stored = store.put(key, PNG, "image/png", META)

    assert stored.uri == f"s3://{s3_bucket}/renders/job-1/variation-0.png"
    head = s3_admin.head_object(Bucket=s3_bucket, Key=key)
    assert head["ContentType"] == "image/png" and head["Metadata"] == META
    assert s3_admin.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == PNG

    download = requests.get(stored.url, timeout=10)
    assert download.status_code == 200 and download.content == PNG
    assert f"X-Amz-Expires={cloud_settings.signed_url_ttl_s}" in stored.url
    assert stored.url_expires_at is not None
    expected = datetime.now(UTC) + timedelta(seconds=cloud_settings.signed_url_ttl_s)
    assert abs((stored.url_expires_at - expected).total_seconds()) < 5


def test_url_for_re_signs_only_objects_of_its_bucket(cloud_settings: Settings, s3_bucket: str, aws_ref: str) -> None:
    store, _ = store_for_fields(aws_node(s3_bucket, aws_ref), cloud_settings)
    first = store.put("a/b.png", PNG, "image/png", META)

    again = store.url_for(first.uri)
    assert again.uri == first.uri and requests.get(again.url, timeout=10).content == PNG
    with pytest.raises(StorageError, match="is not an object in S3 bucket"):
        store.url_for("s3://someone-elses-bucket/a/b.png")


def test_missing_bucket_is_a_clear_permanent_error(cloud_settings: Settings, aws_ref: str, aws_keys_json: str) -> None:
    store, _ = store_for_fields(aws_node("imagegen-no-such-bucket", aws_ref), cloud_settings)
    with pytest.raises(StorageError) as caught:
        store.put("k.png", PNG, "image/png", META)
    message = str(caught.value)
    assert message == "S3 bucket 'imagegen-no-such-bucket': the bucket does not exist (NoSuchBucket, HTTP 404)"
    assert json.loads(aws_keys_json)["aws_secret_access_key"] not in message


def test_bucket_policy_denial_is_permanent_and_not_retried(
    cloud_settings: Settings, moto: Emulator, s3_admin: Any, s3_bucket: str, aws_ref: str, monkeypatch: Any
) -> None:
    deny = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{s3_bucket}/*"}
        ],
    }
    s3_admin.put_bucket_policy(Bucket=s3_bucket, Policy=json.dumps(deny))
    with FlakyProxy(moto.url) as proxy:  # only counts requests here
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        store, _ = store_for_fields(aws_node(s3_bucket, aws_ref), cloud_settings)
        with pytest.raises(StorageError, match=rf"^S3 bucket '{s3_bucket}': access denied \(403, HTTP 403\)$"):
            store.put("k.png", PNG, "image/png", META)
    assert len(proxy.requests) == 1  # a denial is not retried
    assert "Contents" not in s3_admin.list_objects_v2(Bucket=s3_bucket)


@pytest.mark.parametrize(("failures", "status"), [(2, 503), (1, 0), (1, 429)], ids=["503", "dropped", "throttled"])
def test_transient_errors_are_retried_then_succeed(
    cloud_settings: Settings,
    moto: Emulator,
    s3_admin: Any,
    s3_bucket: str,
    aws_ref: str,
    monkeypatch: Any,
    failures: int,
    status: int,
) -> None:
    with FlakyProxy(moto.url, failures=failures, status=status) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        store, _ = store_for_fields(aws_node(s3_bucket, aws_ref), cloud_settings)
        store.put("k.png", PNG, "image/png", META)
    assert len(proxy.requests) == failures + 1
    assert s3_admin.get_object(Bucket=s3_bucket, Key="k.png")["Body"].read() == PNG


def test_persistent_5xx_gives_up_after_the_bounded_attempts(
    cloud_settings: Settings, moto: Emulator, s3_bucket: str, aws_ref: str, monkeypatch: Any
) -> None:
    with FlakyProxy(moto.url, failures=100, status=503) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        store, _ = store_for_fields(aws_node(s3_bucket, aws_ref), cloud_settings)
        with pytest.raises(StorageError, match=r"gave up after 4 attempt\(s\): request failed \(503, HTTP 503\)"):
            store.put("k.png", PNG, "image/png", META)
    assert len(proxy.requests) == cloud_settings.storage_retry_attempts == 4


@pytest.mark.parametrize(
    "content",
    [
        "AKIAIMAGEGEN:not-json-canary-value",
        # Deep enough for json.loads's RecursionError (it was an "internal error", no field named),
        # within the 64 KiB a secret value may hold.
        "[" * 30_000 + "]" * 30_000,
        '{"canary": ' * 5_000 + "1" + "}" * 5_000,
    ],
)
def test_credentials_secret_must_be_the_documented_json(
    cloud_settings: Settings, s3_bucket: str, put_secret: PutSecret, content: str
) -> None:
    ref = put_secret({"credentials": content})["credentials"]
    with pytest.raises(StorageError) as caught:
        store_for_fields(aws_node(s3_bucket, ref), cloud_settings)
    assert str(caught.value).startswith(f"S3 bucket '{s3_bucket}': aws_credentials {ref}: must be JSON")
    assert "canary" not in str(caught.value)


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"aws_access_key_id": "", "aws_secret_access_key": "canary-secret"}, "aws_access_key_id"),
        ({"aws_access_key_id": "AKIA\nX", "aws_secret_access_key": "canary-secret"}, "aws_access_key_id"),
        ({"aws_access_key_id": "AKIAX", "aws_secret_access_key": "canary secret"}, "aws_secret_access_key"),
        (
            {"aws_access_key_id": "AKIAX", "aws_secret_access_key": "canary-secret", "aws_session_token": "a\tb"},
            "aws_session_token",
        ),
        (
            {"aws_access_key_id": "AKIAX", "aws_secret_access_key": "canary-secret", "aws_session_token": 7},
            "aws_session_token",
        ),
    ],
)
def test_each_aws_key_is_checked_when_the_store_opens(
    cloud_settings: Settings, s3_bucket: str, put_secret: PutSecret, keys: dict[str, Any], named: str
) -> None:
    # An empty key id used to be dropped and fail at signing, after the image was paid for; a
    # newline in one failed every retry of the upload with "HTTPClientError".
    ref = put_secret({"credentials": json.dumps(keys)})["credentials"]
    with pytest.raises(StorageError) as caught:
        store_for_fields(aws_node(s3_bucket, ref), cloud_settings)
    assert f"aws_credentials {ref}: {named} must be a non-empty string of printable ASCII" in str(caught.value)
    assert "canary" not in str(caught.value)


def test_platform_s3_url_uses_the_default_credential_chain(
    cloud_settings: Settings, s3_admin: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "platform-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "platform-secret")
    settings = cloud_settings.model_copy(update={"storage_url": f"s3://{s3_bucket}/platform/images"})
    store, prefix = store_for_fields({"use_cloud": False, "cloud_provider": "aws"}, settings)
    assert prefix == "platform/images"
    stored = store.put(object_key(prefix, "j", 0, "png"), PNG, "image/png", META)
    assert stored.uri == f"s3://{s3_bucket}/platform/images/j/variation-0.png"
    assert requests.get(stored.url, timeout=10).content == PNG


def test_public_base_url_serves_platform_objects_unsigned_but_not_node_buckets(
    cloud_settings: Settings, s3_bucket: str, aws_ref: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "platform-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "platform-secret")
    settings = cloud_settings.model_copy(
        update={"storage_url": f"s3://{s3_bucket}/p", "storage_public_base_url": "https://cdn.example.test/img/"}
    )
    platform, prefix = store_for_fields({"use_cloud": False}, settings)
    stored = platform.put(object_key(prefix, "j", 0, "png"), PNG, "image/png", META)
    assert (stored.url, stored.url_expires_at) == ("https://cdn.example.test/img/p/j/variation-0.png", None)

    own, _ = store_for_fields(aws_node(s3_bucket, aws_ref), settings)
    assert own.put("k.png", PNG, "image/png", META).url_expires_at is not None  # the CDN fronts only the platform


def test_stores_are_cached_per_target_and_shared_by_threads(
    cloud_settings: Settings, s3_bucket: str, aws_ref: str, put_secret: PutSecret, aws_keys_json: str
) -> None:
    seen: list[object] = []
    threads = [
        threading.Thread(target=lambda: seen.append(store_for_fields(aws_node(s3_bucket, aws_ref), cloud_settings)[0]))
        for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 16 and len({id(store) for store in seen}) == 1

    other_ref = put_secret({"credentials": aws_keys_json})["credentials"]
    assert store_for_fields(aws_node(s3_bucket, other_ref), cloud_settings)[0] is not seen[0]


def test_the_store_cache_is_bounded_least_recently_used_first(
    cloud_settings: Settings, aws_ref: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tenants name their own buckets: every distinct one is a store, and each used to stay for good.
    monkeypatch.setattr(storage, "MAX_CACHED_STORES", 4)
    first = store_for_fields(aws_node("tenant-bucket-0", aws_ref), cloud_settings)[0]
    for i in range(1, 12):
        store_for_fields(aws_node(f"tenant-bucket-{i}", aws_ref), cloud_settings)
        assert store_for_fields(aws_node("tenant-bucket-0", aws_ref), cloud_settings)[0] is first  # used: kept
    assert len(storage._stores) == 4
    assert store_for_fields(aws_node("tenant-bucket-1", aws_ref), cloud_settings)[0] is not None
    assert {target.bucket for target, _ in storage._stores} == {
        "tenant-bucket-0",
        "tenant-bucket-10",
        "tenant-bucket-11",
        "tenant-bucket-1",
    }


def test_a_store_rebuilt_after_it_expired_is_not_the_next_evicted(
    cloud_settings: Settings, aws_ref: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "MAX_CACHED_STORES", 2)
    clock = [0.0]
    monkeypatch.setattr(storage.time, "monotonic", lambda: clock[0])
    ttl = cloud_settings.secret_cache_ttl_s

    def store(bucket: str) -> Any:
        return store_for_fields(aws_node(bucket, aws_ref), cloud_settings)[0]

    store("bucket-a")
    clock[0] = 1.0
    store("bucket-b")
    clock[0] = ttl + 0.5  # a expired, b not yet
    rebuilt = store("bucket-a")
    store("bucket-c")  # one over the bound: the least recently used goes, which is b
    assert store("bucket-a") is rebuilt  # it kept its old place at the front and went first


def test_a_slow_store_build_holds_up_only_the_threads_that_want_that_store(
    cloud_settings: Settings, s3_bucket: str, aws_ref: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = store_for_fields(aws_node(s3_bucket, aws_ref), cloud_settings)[0]
    release, entered = threading.Event(), threading.Event()
    real_build = storage._build

    def stuck_build(target: Any, options: Any, settings: Settings) -> Any:
        if target.bucket == "slow-vault-bucket":  # e.g. its Vault read hangs
            entered.set()
            release.wait(30)
        return real_build(target, options, settings)

    monkeypatch.setattr(storage, "_build", stuck_build)
    slow = threading.Thread(target=lambda: store_for_fields(aws_node("slow-vault-bucket", aws_ref), cloud_settings))
    slow.start()
    try:
        assert entered.wait(10)
        seen: list[object] = []
        other = threading.Thread(
            target=lambda: seen.append(store_for_fields(aws_node(s3_bucket, aws_ref), cloud_settings)[0])
        )
        other.start()
        other.join(20)  # with one lock around every build this waited for the stuck one
        assert not other.is_alive() and seen == [cached] and not release.is_set()
    finally:
        release.set()
        slow.join(30)


def test_stores_share_one_boto3_session_but_keep_their_own_keys(
    cloud_settings: Settings, s3_admin: Any, s3_bucket: str, put_secret: PutSecret
) -> None:
    # A session per store cost ~12 MB (its own copy of the service models); clients of one session
    # must still sign with their own keys.
    good = put_secret({"credentials": json.dumps({"aws_access_key_id": "AKIDGOOD", "aws_secret_access_key": "s1"})})
    other = put_secret({"credentials": json.dumps({"aws_access_key_id": "AKIDOTHER", "aws_secret_access_key": "s2"})})
    first = store_for_fields(aws_node(s3_bucket, good["credentials"]), cloud_settings)[0]
    second = store_for_fields(aws_node(s3_bucket, other["credentials"]), cloud_settings)[0]
    assert "AKIDGOOD" in first.url_for(f"s3://{s3_bucket}/j/variation-0.png").url  # type: ignore[union-attr]
    assert "AKIDOTHER" in second.url_for(f"s3://{s3_bucket}/j/variation-0.png").url  # type: ignore[union-attr]
    assert first.client._request_signer._credentials.access_key == "AKIDGOOD"  # type: ignore[attr-defined]
    assert second.client._request_signer._credentials.access_key == "AKIDOTHER"  # type: ignore[attr-defined]
    assert first.client._loader is second.client._loader  # type: ignore[attr-defined]  # one copy of the models
