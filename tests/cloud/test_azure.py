"""The Azure Blob store against a real Azurite (which enforces SAS and shared
keys): bytes, type, metadata, SAS URLs, denial, retries, platform az://."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, UserDelegationKey, generate_container_sas

from contract.settings import Settings
from devtools.emulators import Emulator, azurite_connection_string
from tests.cloud.conftest import PutSecret
from tests.cloud.helpers import META, PNG, FlakyProxy, azure_node, store_for_fields
from worker.errors import GenerationError, PermanentError, StorageError
from worker.storage import object_key
from worker.storage.azure_blob import AzureBlobStore
from worker.storage.common import StoreOptions


@pytest.fixture
def conn_ref(put_secret: PutSecret, azurite: Emulator) -> str:
    return put_secret({"connection_string": azurite.extra["connection_string"]})["connection_string"]


def test_put_stores_bytes_type_metadata_and_a_working_sas(
    cloud_settings: Settings, azure_admin: BlobServiceClient, azure_container: str, azurite: Emulator, conn_ref: str
) -> None:
    store, prefix = store_for_fields(azure_node(azure_container, conn_ref, azure_prefix="renders"), cloud_settings)
    key = object_key(prefix, "job-1", 0, "png")
    stored = store.put(key, PNG, "image/png", META)

    account = azurite.extra["account"]
    assert stored.uri == f"{azurite.url}/{account}/{azure_container}/renders/job-1/variation-0.png"
    blob = azure_admin.get_blob_client(azure_container, key)
    props = blob.get_blob_properties()
    assert props.content_settings.content_type == "image/png" and props.metadata == META
    assert blob.download_blob().readall() == PNG

    assert stored.url.startswith(stored.uri + "?") and "sig=" in stored.url
    download = requests.get(stored.url, timeout=10)
    assert download.status_code == 200 and download.content == PNG
    assert download.headers["Content-Type"] == "image/png"
    assert stored.url_expires_at is not None
    expected = datetime.now(UTC) + timedelta(seconds=cloud_settings.signed_url_ttl_s)
    assert abs((stored.url_expires_at - expected).total_seconds()) < 5

    # Azurite checks the signature: a tampered or missing SAS is refused.
    assert requests.get(_tampered(stored.url), timeout=10).status_code == 403
    assert requests.get(stored.uri, timeout=10).status_code in (403, 404)  # private container


def _tampered(url: str) -> str:
    head, _, sig = url.partition("sig=")
    value, _, rest = sig.partition("&")
    raw = bytearray(base64.b64decode(requests.utils.unquote(value)))
    raw[0] ^= 0xFF
    return f"{head}sig={requests.utils.quote(base64.b64encode(bytes(raw)).decode(), safe='')}" + (
        f"&{rest}" if rest else ""
    )


def test_url_for_re_signs_only_blobs_of_its_container(
    cloud_settings: Settings, azure_container: str, conn_ref: str
) -> None:
    store, _ = store_for_fields(azure_node(azure_container, conn_ref), cloud_settings)
    first = store.put("a/b_c.png", PNG, "image/png", META)
    again = store.url_for(first.uri)
    assert again.uri == first.uri and requests.get(again.url, timeout=10).content == PNG
    with pytest.raises(StorageError, match="is not a blob in Azure container"):
        store.url_for(first.uri.replace(azure_container, "other-container"))
    # A blob path that climbs out of the container (the HTTP client would normalise it) is refused.
    for escape in ("/../other-container/x.png", "/a/%2e%2e/%2e%2e/other/x.png", "/a//b.png", "/a/b%20c.png"):
        with pytest.raises(StorageError, match="canonical form"):
            store.url_for(first.uri.rsplit("/a/", 1)[0] + escape)


def test_missing_container_is_a_clear_permanent_error(cloud_settings: Settings, conn_ref: str) -> None:
    store, _ = store_for_fields(azure_node("imagegen-no-such-container", conn_ref), cloud_settings)
    with pytest.raises(StorageError) as caught:
        store.put("k.png", PNG, "image/png", META)
    assert str(caught.value) == (
        "Azure container 'imagegen-no-such-container': the container does not exist (ContainerNotFound, HTTP 404)"
    )


def test_wrong_account_key_from_vault_is_denied_once_and_not_echoed(
    cloud_settings: Settings, azurite: Emulator, azure_container: str, put_secret: PutSecret, monkeypatch: Any
) -> None:
    wrong_key = base64.b64encode(b"canary-wrong-key" * 4).decode()
    with FlakyProxy(azurite.url) as proxy:  # counts requests
        bad = azurite_connection_string(proxy.url, azurite.extra["account"], wrong_key)
        ref = put_secret({"connection_string": bad})["connection_string"]
        store, _ = store_for_fields(azure_node(azure_container, ref), cloud_settings)
        with pytest.raises(StorageError) as caught:
            store.put("k.png", PNG, "image/png", META)
    assert str(caught.value) == f"Azure container '{azure_container}': access denied (AuthorizationFailure, HTTP 403)"
    assert wrong_key not in str(caught.value)
    assert len(proxy.requests) == 1


def test_transient_errors_are_retried_then_succeed(
    cloud_settings: Settings,
    azurite: Emulator,
    azure_admin: BlobServiceClient,
    azure_container: str,
    put_secret: PutSecret,
) -> None:
    with FlakyProxy(azurite.url, failures=2, status=503) as proxy:
        via_proxy = azurite_connection_string(proxy.url, azurite.extra["account"], azurite.extra["key"])
        ref = put_secret({"connection_string": via_proxy})["connection_string"]
        store, _ = store_for_fields(azure_node(azure_container, ref), cloud_settings)
        store.put("k.png", PNG, "image/png", META)
    assert len(proxy.requests) == 3
    assert azure_admin.get_blob_client(azure_container, "k.png").download_blob().readall() == PNG


def test_platform_az_url_reads_the_connection_string_from_the_environment(
    cloud_settings: Settings, azurite: Emulator, azure_container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = cloud_settings.model_copy(update={"storage_url": f"az://{azure_container}/platform"})
    with pytest.raises(PermanentError, match="set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_URL"):
        store_for_fields({"use_cloud": False}, settings)

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.extra["connection_string"])
    store, prefix = store_for_fields({"use_cloud": False}, settings)
    stored = store.put(object_key(prefix, "j", 0, "png"), PNG, "image/png", META)
    assert stored.uri.endswith(f"/{azure_container}/platform/j/variation-0.png")
    assert requests.get(stored.url, timeout=10).content == PNG


def test_sas_connection_string_never_leaks_its_token_and_cannot_sign(
    cloud_settings: Settings, azurite: Emulator, azure_admin: BlobServiceClient, azure_container: str, put_secret: Any
) -> None:
    token = generate_container_sas(
        azurite.extra["account"],
        azure_container,
        account_key=azurite.extra["key"],
        permission=ContainerSasPermissions(read=True, write=True, create=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    sas_only = f"BlobEndpoint={azurite.url}/{azurite.extra['account']};SharedAccessSignature={token}"
    ref = put_secret({"connection_string": sas_only})["connection_string"]
    # Refused when the store opens: before, the image was made (and paid for) and uploaded, and
    # only signing its URL failed.
    with pytest.raises(GenerationError, match="has no AccountKey, which signing the image URLs needs") as caught:
        store_for_fields(azure_node(azure_container, ref), cloud_settings)
    assert "sig=" not in str(caught.value) and token not in str(caught.value)
    assert list(azure_admin.get_container_client(azure_container).list_blobs()) == []


def test_an_account_key_that_is_not_base64_is_named_when_the_store_opens(
    cloud_settings: Settings, azurite: Emulator, azure_container: str, put_secret: Any
) -> None:
    bad = azurite_connection_string(azurite.url, azurite.extra["account"], "not-base64!")
    ref = put_secret({"connection_string": bad})["connection_string"]
    with pytest.raises(GenerationError, match="AccountKey that is not valid base64") as caught:
        store_for_fields(azure_node(azure_container, ref), cloud_settings)
    assert "not-base64!" not in str(caught.value)


def test_a_user_delegation_key_outlives_the_longest_sas_and_is_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Azurite has no Azure AD: the key request is the seam. At 7 days the key (7 days from 5
    # minutes back) expired before the SAS, and was fetched again for every URL; these URLs are
    # capped at 7 days less an hour (S3 and GCS keep the full 7 days).
    store = AzureBlobStore(
        "images",
        account_url="https://acct.blob.core.windows.net",
        options=StoreOptions(signed_url_ttl_s=Settings(signed_url_ttl_s=7 * 24 * 3600).signed_url_ttl_s),
    )
    assert store.options.signed_url_ttl_s == 7 * 24 * 3600 - 3600
    fetched: list[tuple[datetime, datetime]] = []

    def user_delegation_key(start: datetime, expiry: datetime, **kwargs: Any) -> UserDelegationKey:
        fetched.append((start, expiry))
        key = UserDelegationKey()
        key.signed_oid = key.signed_tid = "00000000-0000-0000-0000-000000000000"
        key.signed_start, key.signed_expiry = (t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in (start, expiry))
        key.signed_service, key.signed_version = "b", "2025-01-05"
        key.value = base64.b64encode(b"k" * 32).decode()
        return key

    monkeypatch.setattr(store.service, "get_user_delegation_key", user_delegation_key)
    signed = [store.url_for(f"{store.base_url}/t/acme/j/variation-{i}.png") for i in range(5)]
    assert len(fetched) == 1
    for stored in signed:
        query = parse_qs(urlsplit(stored.url or "").query)
        assert query["ske"][0] >= query["se"][0]  # the key outlives the SAS it signs
        assert (
            stored.url_expires_at is not None and stored.url_expires_at.strftime("%Y-%m-%dT%H:%M:%SZ") == query["se"][0]
        )
