"""Picks the store for a node: the node's own cloud when ``use_cloud`` is
true, otherwise the operator's platform storage (``IMAGEGEN_STORAGE_URL``:
``s3://bucket/prefix``, ``az://container/prefix``, ``gs://bucket/prefix`` or a
local directory).

Cloud stores are cached per worker process, keyed by their target (bucket and
credential *reference*), for ``IMAGEGEN_SECRET_CACHE_TTL_S`` so that rotated
credentials are picked up; SDK clients are thread-safe and shared by threads.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import urlsplit

from contract.node import NodeInputs
from contract.settings import Settings
from worker.errors import PermanentError, StorageError
from worker.secrets import SecretError, resolve_secret
from worker.storage.base import ImageStore, StoredObject
from worker.storage.common import StoreOptions
from worker.storage.keys import object_key
from worker.storage.local import LocalStore

__all__ = ["ImageStore", "StoredObject", "Target", "clear_store_cache", "object_key", "platform_store", "store_for"]

Provider = Literal["aws", "azure", "gcp"]

_LABEL = {"aws": "S3 bucket", "azure": "Azure container", "gcp": "GCS bucket"}
_CREDENTIAL_FIELD = {"aws": "aws_credentials", "azure": "azure_connection_string", "gcp": "gcp_credentials"}
_SCHEMES: dict[str, Provider] = {"s3": "aws", "az": "azure", "gs": "gcp"}
# Platform az:// reads the account's connection string through the same resolver.
_PLATFORM_AZURE_SECRET = "env:AZURE_STORAGE_CONNECTION_STRING"


@dataclass(frozen=True)
class Target:
    """Where a store writes; hashable, so it keys the cache. Holds references, never secrets."""

    provider: Provider
    bucket: str  # the Azure container for azure
    region: str | None = None
    account_url: str | None = None
    project: str | None = None
    credentials: str | None = None  # a secret reference; None: the SDK's default credential chain

    @property
    def where(self) -> str:
        return f"{_LABEL[self.provider]} {self.bucket!r}"


def store_for(inputs: NodeInputs, settings: Settings) -> tuple[ImageStore, str | None]:
    """The store for a node and the key prefix inside it."""
    return store_for_fields(inputs.model_dump(), settings)


def store_for_fields(fields: Mapping[str, Any], settings: Settings) -> tuple[ImageStore, str | None]:
    """As ``store_for``, from the node's storage fields alone (the sign task gets only these)."""
    if not fields.get("use_cloud"):
        return platform_store(settings)
    target, prefix = node_target(fields)
    return cloud_store(target, StoreOptions.from_settings(settings, platform=False), settings), prefix


def platform_store(settings: Settings) -> tuple[ImageStore, str | None]:
    """The platform store and the key prefix inside it."""
    url = settings.storage_url
    if url.startswith("file://"):
        url = url.removeprefix("file://")
    if "://" not in url:
        return LocalStore(url, settings.storage_public_base_url), None
    target, prefix = platform_target(url, settings)
    return cloud_store(target, StoreOptions.from_settings(settings, platform=True), settings), prefix


def node_target(fields: Mapping[str, Any]) -> tuple[Target, str | None]:
    provider = fields.get("cloud_provider")

    def need(name: str) -> str:
        value = fields.get(name)
        if not value:
            raise PermanentError(f"{name} is required when use_cloud is true and cloud_provider is {provider}")
        return str(value)

    if provider == "aws":
        target = Target("aws", need("aws_bucket"), region=fields.get("aws_region"))
    elif provider == "azure":
        target = Target("azure", need("azure_container"), account_url=fields.get("azure_account_url"))
        if not target.account_url and not fields.get("azure_connection_string"):
            need("azure_connection_string")
    elif provider == "gcp":
        target = Target("gcp", need("gcp_bucket"), project=fields.get("gcp_project"))
    else:
        raise PermanentError(f"cloud_provider {provider!r} is not supported; allowed: aws, azure, gcp")
    credentials = fields.get(_CREDENTIAL_FIELD[provider])
    prefix = fields.get(f"{provider}_prefix")
    return replace(target, credentials=credentials), prefix


def platform_target(url: str, settings: Settings) -> tuple[Target, str | None]:
    parts = urlsplit(url)
    provider = _SCHEMES.get(parts.scheme)
    if provider is None or len(parts.netloc) < 3:
        raise PermanentError(
            f"IMAGEGEN_STORAGE_URL {url!r} is not supported; use s3://bucket/prefix, az://container/prefix, "
            "gs://bucket/prefix or a local directory"
        )
    prefix = parts.path.strip("/") or None
    if provider == "aws":
        return Target("aws", parts.netloc), prefix
    if provider == "gcp":
        return Target("gcp", parts.netloc, project=settings.google_cloud_project), prefix
    if os.environ.get("AZURE_STORAGE_CONNECTION_STRING"):
        return Target("azure", parts.netloc, credentials=_PLATFORM_AZURE_SECRET), prefix
    if settings.azure_storage_account_url:
        return Target("azure", parts.netloc, account_url=settings.azure_storage_account_url), prefix
    raise PermanentError(
        "IMAGEGEN_STORAGE_URL is az://: set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_URL "
        "with an Azure identity for the worker"
    )


_lock = threading.Lock()
_stores: dict[tuple[Target, StoreOptions], tuple[float, ImageStore]] = {}


def cloud_store(target: Target, options: StoreOptions, settings: Settings) -> ImageStore:
    key = (target, options)
    # Built under the lock: at a cold start many threads want the same store; one builds it.
    with _lock:
        cached = _stores.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        store = _build(target, options, settings)
        if settings.secret_cache_ttl_s > 0:
            _stores[key] = (time.monotonic() + settings.secret_cache_ttl_s, store)
        return store


def clear_store_cache() -> None:
    with _lock:
        _stores.clear()


def _build(target: Target, options: StoreOptions, settings: Settings) -> ImageStore:
    secret = None
    if target.credentials:
        try:
            secret = resolve_secret(target.credentials, settings)
        except SecretError as exc:
            raise StorageError(f"{target.where}: {exc}") from None
    try:
        return _construct(target, secret, options)
    except ValueError as exc:
        # Raised by our credential parsers with a message that never quotes the secret.
        field = "AZURE_STORAGE_CONNECTION_STRING" if target.credentials == _PLATFORM_AZURE_SECRET else None
        field = field or f"{_CREDENTIAL_FIELD[target.provider]} {target.credentials}"
        raise StorageError(f"{target.where}: {field}: {exc}") from None


def _construct(target: Target, secret: str | None, options: StoreOptions) -> ImageStore:
    # Imported here: each SDK is heavy and a worker may use only one of them.
    if target.provider == "aws":
        from worker.storage.s3 import S3Store, aws_keys

        keys = aws_keys(secret) if secret else None
        return S3Store(target.bucket, region=target.region, keys=keys, options=options)
    if target.provider == "azure":
        from worker.storage.azure_blob import AzureBlobStore

        return AzureBlobStore(target.bucket, connection_string=secret, account_url=target.account_url, options=options)
    from worker.storage.gcs import GCSStore, service_account_info

    info = service_account_info(secret) if secret else None
    return GCSStore(target.bucket, project=target.project, info=info, options=options)
