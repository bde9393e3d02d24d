"""Real emulators the cloud tests start themselves (once per session, each on a
free loopback port): moto (S3), Azurite (Azure Blob), gcp-storage-emulator
(GCS) and an OpenBao dev server (Vault API). A missing tool fails loudly."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import hvac
import pytest
from azure.storage.blob import BlobServiceClient
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from contract.settings import Settings
from devtools.emulators import Emulator, service_account_json, start_azurite, start_gcs, start_moto, start_openbao
from worker.secrets import clear_cache
from worker.storage import clear_store_cache

PutSecret = Callable[[dict[str, Any]], dict[str, str]]


def _serve(start: Callable[[], Emulator]) -> Iterator[Emulator]:
    emulator = start()  # raises (test error, not a skip) when the tool is missing
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def moto() -> Iterator[Emulator]:
    yield from _serve(start_moto)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Emulator]:
    yield from _serve(start_azurite)


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[Emulator]:
    yield from _serve(start_gcs)


@pytest.fixture(scope="session")
def openbao() -> Iterator[Emulator]:
    yield from _serve(start_openbao)


@pytest.fixture(scope="session")
def vault(openbao: Emulator) -> hvac.Client:
    """The OpenBao root client (tests write secrets with it)."""
    return hvac.Client(url=openbao.url, token=openbao.extra["token"])


@pytest.fixture
def put_secret(vault: hvac.Client) -> PutSecret:
    """Store ``{key: value}`` at a fresh KV v2 path; returns ``{key: "vault:secret/<path>#<key>"}``."""

    def put(data: dict[str, Any]) -> dict[str, str]:
        path = f"imagegen/test-{uuid.uuid4().hex[:10]}"
        vault.secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point="secret")
        return {key: f"vault:secret/{path}#{key}" for key in data}

    return put


@pytest.fixture(scope="session")
def s3_admin(moto: Emulator) -> Any:
    return boto3.client(
        "s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="admin", aws_secret_access_key="admin"
    )


@pytest.fixture(scope="session")
def azure_admin(azurite: Emulator) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(azurite.extra["connection_string"])


@pytest.fixture(scope="session")
def gcs_admin(gcs_emulator: Emulator) -> storage.Client:
    return storage.Client(
        project="imagegen-test",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": gcs_emulator.url},
    )


def _name(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def s3_bucket(s3_admin: Any) -> str:
    name = _name("imagegen")
    s3_admin.create_bucket(Bucket=name)
    return name


@pytest.fixture
def azure_container(azure_admin: BlobServiceClient) -> str:
    name = _name("imagegen")
    azure_admin.create_container(name)
    return name


@pytest.fixture
def gcs_bucket(gcs_admin: storage.Client) -> str:
    name = _name("imagegen")
    gcs_admin.create_bucket(name)
    return name


@pytest.fixture(scope="session")
def sa_json() -> str:
    return service_account_json()


@pytest.fixture
def aws_keys_json() -> str:
    """moto accepts any keys; the secret key is a unique canary."""
    return json.dumps(
        {"aws_access_key_id": "AKIAIMAGEGENTEST", "aws_secret_access_key": f"canary-aws-{uuid.uuid4().hex}"}
    )


@pytest.fixture
def cloud_env(moto: Emulator, gcs_emulator: Emulator, openbao: Emulator, azurite: Emulator) -> dict[str, str]:
    """What a worker needs to reach the emulators and the vault."""
    return {
        "AWS_ENDPOINT_URL_S3": moto.url,
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probing for credentials
        "STORAGE_EMULATOR_HOST": gcs_emulator.url,
        "NO_GCE_CHECK": "True",  # google-auth: do not probe for a GCE metadata server
        "VAULT_ADDR": openbao.url,
        "VAULT_TOKEN": openbao.extra["token"],
        "IMAGEGEN_STORAGE_RETRY_MAX_DELAY_S": "0.2",
    }


# Credentials a developer's shell may carry: the tests must not pick them up.
_AMBIENT_CREDENTIALS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_URL",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "VAULT_K8S_ROLE",
)


@pytest.fixture
def cloud_settings(cloud_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """In-process settings with ``cloud_env``; the per-process caches start empty."""
    for name, value in cloud_env.items():
        monkeypatch.setenv(name, value)
    for name in _AMBIENT_CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    clear_cache()
    clear_store_cache()
    yield Settings()
    clear_cache()
    clear_store_cache()
