"""The write check (worker/storage/write_check.py) against real emulators: what it writes and
where, that a write-only policy passes it, how long a pass or a failure is kept, and that a
transient failure is retried instead of failing the variation."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from contract.settings import Settings
from devtools.emulators import Emulator
from tests.cloud.conftest import PutSecret
from tests.cloud.helpers import FlakyProxy, aws_node, store_for_fields
from worker.errors import NotStoredHere, StorageError, TransientError
from worker.storage import check_image_key, write_check
from worker.storage.base import WRITE_CHECK_BODY
from worker.storage.keys import WRITE_CHECK_NAME, write_check_key
from worker.storage.local import LocalStore
from worker.storage.write_check import ensure_writable


@pytest.fixture
def aws_ref(put_secret: PutSecret, aws_keys_json: str) -> str:
    return put_secret({"credentials": aws_keys_json})["credentials"]


def _keys(s3_admin: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_admin.list_objects_v2(Bucket=bucket).get("Contents", []))


def _marker_puts(proxy: FlakyProxy) -> list[str]:
    return [line for line in proxy.requests if line.endswith(f"/{WRITE_CHECK_NAME}")]


def test_the_marker_is_one_small_object_in_the_jobs_namespace_that_cannot_be_signed(
    cloud_settings: Settings, s3_admin: Any, s3_bucket: str, aws_ref: str
) -> None:
    store, prefix = store_for_fields(aws_node(s3_bucket, aws_ref, aws_prefix="renders/"), cloud_settings)
    ensure_writable(store, prefix, "t/acme/job-1")  # a tenant's job: inside t/acme, where its images go
    ensure_writable(store, prefix, "run-7/node-2")  # the platform's own job: beside its job folders

    marker = f"renders/t/acme/{WRITE_CHECK_NAME}"
    assert _keys(s3_admin, s3_bucket) == [f"renders/{WRITE_CHECK_NAME}", marker]
    obj = s3_admin.get_object(Bucket=s3_bucket, Key=marker)
    assert obj["Body"].read() == WRITE_CHECK_BODY and obj["ContentType"] == "text/plain"
    with pytest.raises(NotStoredHere):  # no image's name: sign never hands out a URL for it
        check_image_key(marker, "renders", "acme")
    # A prefix that would move the marker into another tenant's namespace is refused, as for images.
    with pytest.raises(StorageError, match="tenant namespace is not its job's"):
        write_check_key("t/globex", "t/acme/job-1")


def test_the_check_needs_only_a_write_and_a_denied_write_fails(
    cloud_settings: Settings,
    moto: Emulator,
    s3_admin: Any,
    s3_bucket: str,
    aws_ref: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One PutObject and nothing else (no HeadBucket, ListBucket or GetObject, which a write-only
    policy may deny); a policy that denies the write fails the check, naming the bucket."""
    with FlakyProxy(moto.url) as proxy:  # counts every request
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        store, prefix = store_for_fields(aws_node(s3_bucket, aws_ref, aws_prefix="renders"), cloud_settings)
        ensure_writable(store, prefix, "job-1")
        assert proxy.requests == [f"PUT /{s3_bucket}/renders/{WRITE_CHECK_NAME}"]

        deny = {"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{s3_bucket}/*"}
        s3_admin.put_bucket_policy(Bucket=s3_bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [deny]}))
        with pytest.raises(StorageError) as caught:
            ensure_writable(store, prefix, "t/acme/job-2")  # another marker key: checked, not the cached pass
    assert str(caught.value) == (
        f"S3 bucket '{s3_bucket}': access denied (403, HTTP 403)"
        " (a test write before generating failed: no image was made)"
    )
    assert "canary" not in str(caught.value)  # the secret key (aws_keys_json) is never quoted


def test_a_pass_is_kept_for_its_ttl_once_per_process_whatever_the_threads(
    cloud_settings: Settings,
    moto: Emulator,
    s3_bucket: str,
    aws_ref: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(write_check, "WRITE_CHECK_TTL_S", 1.0)
    with FlakyProxy(moto.url, only="PUT") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        store, prefix = store_for_fields(aws_node(s3_bucket, aws_ref), cloud_settings)
        # A job's variations start together: one of them writes, the others wait for its verdict.
        threads = [threading.Thread(target=ensure_writable, args=(store, prefix, "job-1")) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ensure_writable(store, prefix, "job-2")
        assert len(_marker_puts(proxy)) == 1
        ensure_writable(store, prefix, "t/acme/job-3")  # another tenant: its own marker
        assert len(_marker_puts(proxy)) == 2
        time.sleep(1.1)
        ensure_writable(store, prefix, "job-4")  # the pass expired: written again
        assert len(_marker_puts(proxy)) == 3


def test_a_failure_is_kept_briefly_then_a_fixed_bucket_passes(
    cloud_settings: Settings,
    moto: Emulator,
    s3_admin: Any,
    aws_ref: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(write_check, "FAILED_CHECK_TTL_S", 1.0)
    bucket = f"imagegen-later-{time.time_ns()}"
    with FlakyProxy(moto.url, only="PUT") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        store, prefix = store_for_fields(aws_node(bucket, aws_ref), cloud_settings)
        for _ in range(3):  # the variations of a job at a missing bucket: one request, not one each
            with pytest.raises(StorageError, match=rf"^S3 bucket '{bucket}': the bucket does not exist \(NoSuchBucket"):
                ensure_writable(store, prefix, "job-1")
        assert len(proxy.requests) == 1  # permanent: not retried either

        s3_admin.create_bucket(Bucket=bucket)
        time.sleep(1.1)
        ensure_writable(store, prefix, "job-1")
        assert len(proxy.requests) == 2
    assert _keys(s3_admin, bucket) == [WRITE_CHECK_NAME]


def test_a_transient_failure_is_retried_as_a_transient_error_and_not_kept(
    cloud_settings: Settings, moto: Emulator, s3_bucket: str, aws_ref: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = cloud_settings.storage_retry_attempts
    with FlakyProxy(moto.url, failures=attempts, status=503, only="PUT") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        store, prefix = store_for_fields(aws_node(s3_bucket, aws_ref), cloud_settings)
        outcomes: list[BaseException | None] = []

        def variation() -> None:
            try:
                ensure_writable(store, prefix, "job-1")
                outcomes.append(None)
            except Exception as exc:
                outcomes.append(exc)

        # Variations that start together share the one check and its outcome: no retry storm.
        threads = [threading.Thread(target=variation) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(outcomes) == 4 and all(isinstance(o, TransientError) for o in outcomes), outcomes
        assert str(outcomes[0]).startswith(f"S3 bucket '{s3_bucket}': gave up after {attempts} attempt(s)")
        assert len(proxy.requests) == attempts
        ensure_writable(store, prefix, "job-1")  # not kept: the next attempt writes, and passes
        assert len(proxy.requests) == attempts + 1


def test_the_local_check_leaves_nothing_behind_and_names_a_root_it_cannot_write(tmp_path: Path) -> None:
    root = tmp_path / "images"
    ensure_writable(LocalStore(root), "", "t/acme/job-1")
    assert [p.relative_to(root).as_posix() for p in sorted(root.rglob("*"))] == ["t", "t/acme"]  # no marker file

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.raises(StorageError, match=r"^cannot write \. in local storage '.*a-file'.*no image was made\)$"):
        ensure_writable(LocalStore(blocked), "", "job-1")
