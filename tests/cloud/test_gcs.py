"""The GCS store against a real gcp-storage-emulator: bytes, type, metadata, v4
signed URLs from a service-account key read from Vault, errors, retries, gs://.

The emulator does not verify signatures, so the URL's signing fields are
checked here and the signature itself by the key's public half."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from google.cloud import storage

from contract.settings import Settings
from devtools.emulators import Emulator
from tests.cloud.conftest import PutSecret
from tests.cloud.helpers import META, PNG, FlakyProxy, gcp_node, store_for_fields
from worker.errors import StorageError
from worker.storage import object_key


@pytest.fixture
def sa_ref(put_secret: PutSecret, sa_json: str) -> str:
    return put_secret({"service_account": sa_json})["service_account"]


def test_put_stores_bytes_type_metadata_and_signs_v4(
    cloud_settings: Settings, gcs_admin: storage.Client, gcs_bucket: str, gcs_emulator: Emulator, sa_ref: str
) -> None:
    store, prefix = store_for_fields(gcp_node(gcs_bucket, sa_ref, gcp_prefix="renders"), cloud_settings)
    key = object_key(prefix, "job-1", 0, "png")
    stored = store.put(key, PNG, "image/png", META)

    assert stored.uri == f"gs://{gcs_bucket}/renders/job-1/variation-0.png"
    blob = gcs_admin.bucket(gcs_bucket).get_blob(key)
    assert blob is not None and blob.content_type == "image/png" and blob.metadata == META
    assert blob.download_as_bytes() == PNG

    download = requests.get(stored.url, timeout=10)
    assert download.status_code == 200 and download.content == PNG
    url = urlsplit(stored.url)
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert f"{url.scheme}://{url.netloc}" == gcs_emulator.url
    assert query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert query["X-Goog-Expires"] == str(cloud_settings.signed_url_ttl_s)
    assert query["X-Goog-Credential"].startswith("imagegen-worker@imagegen-test.iam.gserviceaccount.com/")
    assert len(query["X-Goog-Signature"]) == 512  # hex of an RSA-2048 signature
    assert stored.url_expires_at is not None
    expected = datetime.now(UTC) + timedelta(seconds=cloud_settings.signed_url_ttl_s)
    assert abs((stored.url_expires_at - expected).total_seconds()) < 5
    assert store.url_for(stored.uri).url != ""  # re-signing works offline


def test_missing_bucket_is_a_clear_permanent_error(cloud_settings: Settings, sa_ref: str) -> None:
    store, _ = store_for_fields(gcp_node("imagegen-no-such-bucket", sa_ref), cloud_settings)
    with pytest.raises(StorageError) as caught:
        store.put("k.png", PNG, "image/png", META)
    assert str(caught.value) == "GCS bucket 'imagegen-no-such-bucket': the bucket does not exist (NotFound, HTTP 404)"


def test_url_for_refuses_other_buckets(cloud_settings: Settings, gcs_bucket: str, sa_ref: str) -> None:
    store, _ = store_for_fields(gcp_node(gcs_bucket, sa_ref), cloud_settings)
    with pytest.raises(StorageError, match="is not an object in GCS bucket"):
        store.url_for("gs://another-bucket/k.png")


def test_transient_errors_are_retried_then_succeed(
    cloud_settings: Settings,
    gcs_emulator: Emulator,
    gcs_admin: storage.Client,
    gcs_bucket: str,
    sa_ref: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only uploads: the library also fetches bucket metadata in a background thread.
    with FlakyProxy(gcs_emulator.url, failures=2, status=503, only="POST /upload/") as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        store, _ = store_for_fields(gcp_node(gcs_bucket, sa_ref), cloud_settings)
        store.put("k.png", PNG, "image/png", META)
    assert len(proxy.requests) == 3
    assert gcs_admin.bucket(gcs_bucket).blob("k.png").download_as_bytes() == PNG


def test_without_signing_credentials_the_store_does_not_open(cloud_settings: Settings, gcs_bucket: str) -> None:
    # The worker's own identity writes here only because the operator listed the bucket. The
    # store used to open, upload, then fail to sign: a paid image left behind, unreported.
    allowed = Settings(allowed_targets=f"gs://{gcs_bucket}")
    with pytest.raises(StorageError, match="cannot sign a URL without service-account credentials"):
        store_for_fields(gcp_node(gcs_bucket, None), allowed)  # the worker opens it before the model is called


def test_malformed_service_account_secret_is_named_not_echoed(
    cloud_settings: Settings, gcs_bucket: str, put_secret: PutSecret
) -> None:
    ref = put_secret({"sa": json.dumps({"type": "service_account", "private_key": "canary-not-a-key"})})["sa"]
    with pytest.raises(StorageError) as caught:
        store_for_fields(gcp_node(gcs_bucket, ref), cloud_settings)
    assert str(caught.value) == (
        f"GCS bucket '{gcs_bucket}': gcp_credentials {ref}: "
        "must be a service-account key JSON (type, client_email, private_key, ...)"
    )


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, password: bytes = b"") -> str:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption).decode()


@pytest.mark.parametrize(
    ("change", "said"),
    [
        # google-auth raised a bare TypeError for these: an "internal error" naming no field.
        ({"private_key": _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048), b"pw")}, "encrypted"),
        # google-auth loaded these, the upload succeeded, and signing the URL raised TypeError.
        ({"private_key": _pem(ec.generate_private_key(ec.SECP256R1()))}, "not RSA"),
        ({"private_key": _pem(ed25519.Ed25519PrivateKey.generate())}, "not RSA"),
        ({"client_email": ["canary@example.com"]}, "must be a service-account key JSON"),
    ],
    ids=["encrypted-rsa", "ec", "ed25519", "non-string-field"],
)
def test_a_service_account_key_that_cannot_sign_is_refused_when_the_store_opens(
    cloud_settings: Settings, gcs_bucket: str, put_secret: PutSecret, sa_json: str, change: dict[str, Any], said: str
) -> None:
    ref = put_secret({"sa": json.dumps({**json.loads(sa_json), **change})})["sa"]
    with pytest.raises(StorageError) as caught:  # before the model is called: nothing paid for
        store_for_fields(gcp_node(gcs_bucket, ref), cloud_settings)
    message = str(caught.value)
    assert message.startswith(f"GCS bucket '{gcs_bucket}': gcp_credentials {ref}: ") and said in message
    if "private_key" in change:
        assert "RSA service-account key is required" in message
    assert "PRIVATE KEY" not in message and "canary" not in message


def test_a_deeply_nested_service_account_secret_is_named_not_a_crash(
    cloud_settings: Settings, gcs_bucket: str, put_secret: PutSecret
) -> None:
    ref = put_secret({"sa": "[" * 30_000 + "]" * 30_000})["sa"]  # json.loads: RecursionError; under 64 KiB
    with pytest.raises(StorageError, match=f"gcp_credentials {ref}: must be a service-account key JSON"):
        store_for_fields(gcp_node(gcs_bucket, ref), cloud_settings)


def test_platform_gs_url_uses_application_default_credentials(
    cloud_settings: Settings, gcs_bucket: str, sa_json: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "sa.json"
    key_file.write_text(sa_json)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    settings = cloud_settings.model_copy(update={"storage_url": f"gs://{gcs_bucket}/platform/images"})
    store, prefix = store_for_fields({"use_cloud": False}, settings)
    stored = store.put(object_key(prefix, "j", 0, "png"), PNG, "image/png", META)
    assert stored.uri == f"gs://{gcs_bucket}/platform/images/j/variation-0.png"
    assert "X-Goog-Signature=" in stored.url and requests.get(stored.url, timeout=10).content == PNG


def test_signature_verifies_with_the_service_account_public_key(
    cloud_settings: Settings, gcs_bucket: str, sa_ref: str, sa_json: str
) -> None:
    """The emulator ignores signatures, so check ours against the key's public half."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    store, _ = store_for_fields(gcp_node(gcs_bucket, sa_ref), cloud_settings)
    stored = store.put("k.png", PNG, "image/png", META)
    url = urlsplit(stored.url)
    query = parse_qs(url.query, keep_blank_values=True)
    signature = bytes.fromhex(query.pop("X-Goog-Signature")[0])
    canonical_query = "&".join(
        f"{requests.utils.quote(k, safe='')}={requests.utils.quote(v[0], safe='')}" for k, v in sorted(query.items())
    )
    canonical_request = "\n".join(
        ["GET", url.path, canonical_query, f"host:{url.netloc}\n", "host", "UNSIGNED-PAYLOAD"]
    )
    scope = query["X-Goog-Credential"][0].split("/", 1)[1]
    digest = hashes.Hash(hashes.SHA256())
    digest.update(canonical_request.encode())
    to_sign = "\n".join(["GOOG4-RSA-SHA256", query["X-Goog-Date"][0], scope, digest.finalize().hex()])
    key = serialization.load_pem_private_key(json.loads(sa_json)["private_key"].encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    key.public_key().verify(signature, to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())  # raises if wrong
    with pytest.raises(InvalidSignature):  # and the check can fail: another string to sign
        key.public_key().verify(signature, to_sign.encode() + b"x", padding.PKCS1v15(), hashes.SHA256())
