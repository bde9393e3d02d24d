"""Azure Blob Storage: a connection string, or an account URL with the default
Azure credential chain (managed identity, workload identity, az login)."""

from __future__ import annotations

import base64
import logging
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, ContentSettings, generate_blob_sas

from contract.clouds import Target, TargetError, TargetPolicy
from contract.clouds.azure import AzureBlobSpec
from worker.errors import NotStoredHere, StorageError
from worker.storage.base import ImageStore, StoredObject
from worker.storage.common import ErrorPolicy, StoreOptions, pooled, signed_or_public, with_retries

# It logs every request and response at INFO; ours say what matters.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

_MEANING = {
    "ContainerNotFound": "the container does not exist",
    "AuthenticationFailed": "the account key or token was refused",
    "AuthorizationFailure": "access denied",
    "AuthorizationPermissionMismatch": "access denied",
    "InvalidAuthenticationInfo": "the credential is not valid",
}
MAX_DELEGATED_TTL_S = 7 * 24 * 3600 - 3600  # 7 days less an hour
_CLOCK_SKEW = timedelta(minutes=5)  # SAS start time slightly in the past: clocks differ


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return True  # refused, reset, timed out
    if isinstance(exc, HttpResponseError) and not isinstance(exc, ClientAuthenticationError):
        status = exc.status_code or 0
        return status in (408, 429) or status >= 500
    return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, HttpResponseError) and exc.status_code:
        raw = getattr(exc, "error_code", None)  # set by the storage SDK from the x-ms-error-code header
        code = getattr(raw, "value", raw) or exc.reason or "?"
        default = "access denied" if exc.status_code == 403 else "request failed"
        return f"{_MEANING.get(str(code), default)} ({code}, HTTP {exc.status_code})"
    if isinstance(exc, ClientAuthenticationError):
        return "no Azure credential could be obtained from the default chain (managed/workload identity, env, az login)"
    return type(exc).__name__  # no str(exc): it can quote request details


_POLICY = ErrorPolicy((AzureError,), _is_transient, _describe)


def _default_credential() -> Any:
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise StorageError(
            "azure_account_url without a connection string uses the default Azure credential chain, "
            "which needs the azure-identity package in the worker image"
        ) from None
    return DefaultAzureCredential()


class AzureBlobStore(ImageStore):
    @classmethod
    def open(cls, target: Target, secret: str | None, options: StoreOptions, policy: TargetPolicy) -> AzureBlobStore:
        """The store for ``target``: the resolved connection string, else the account URL with the
        worker's Azure identity. Every endpoint (the account URL, the connection string's blob
        endpoint) obeys the endpoint rules before any request, so no token or key leaves for
        another host."""
        if target.account_url and not target.platform:
            policy.check_endpoint(target.account_url, AzureBlobSpec.public_suffixes, "the account URL")
        store = cls(target.bucket, connection_string=secret, account_url=target.account_url, options=options)
        if secret and not target.platform:
            try:
                policy.check_endpoint(_without_query(store.service.url), AzureBlobSpec.public_suffixes, "blob endpoint")
            except TargetError as exc:
                raise ValueError(f"its {exc}") from None
        return store

    def __init__(
        self,
        container: str,
        *,
        connection_string: str | None = None,
        account_url: str | None = None,
        options: StoreOptions | None = None,
    ):
        self.options = options or StoreOptions()
        self.container_name = container
        self.where = f"Azure container {container!r}"
        # The SDK's own retries are off: tenacity is the one retry policy.
        kwargs: dict[str, Any] = {
            "retry_total": 0,
            "connection_timeout": self.options.timeout_s,
            "read_timeout": self.options.timeout_s,
            # The SDK's requests session, with a connection per worker slot (requests keeps 10).
            "session": pooled(requests.Session(), self.options.pool_size),
            # azure-core follows redirects itself: the endpoint's host was checked, its target's was not.
            "permit_redirects": False,
        }
        if connection_string:
            try:
                service = BlobServiceClient.from_connection_string(connection_string, **kwargs)
            except ValueError:
                raise ValueError("is not a valid Azure Storage connection string") from None
        elif account_url:
            service = BlobServiceClient(account_url, credential=_default_credential(), **kwargs)
        else:
            raise ValueError("needs a connection string or an account URL")
        self.service = service
        self.container = service.get_container_client(container)
        # Account-key credentials sign SAS locally; otherwise a user-delegation key is fetched.
        self.account_key: str | None = getattr(service.credential, "account_key", None)
        if not self.account_key and self.options.signed_url_ttl_s > MAX_DELEGATED_TTL_S:
            # The key lives at most 7 days from its start (5 minutes back) and must outlive the SAS.
            self.options = replace(self.options, signed_url_ttl_s=MAX_DELEGATED_TTL_S)
        if connection_string:  # found now, not after the image was made and paid for
            if self.account_key:
                try:
                    base64.b64decode(self.account_key, validate=True)
                except ValueError:
                    raise ValueError("has an AccountKey that is not valid base64") from None
            elif not self.options.public_base_url:
                raise ValueError(
                    "has no AccountKey, which signing the image URLs needs (a SAS-only connection string cannot sign)"
                )
        self._delegation: tuple[datetime, Any] | None = None
        self._lock = threading.Lock()
        # The blob URL without a query: a SAS connection string would otherwise put its token in it.
        self.base_url = _without_query(self.container.url).rstrip("/")

    def _put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> StoredObject:
        blob = self.container.get_blob_client(key)
        with_retries(
            self.options,
            _POLICY,
            self.where,
            lambda: blob.upload_blob(
                data, overwrite=True, content_settings=ContentSettings(content_type=content_type), metadata=metadata
            ),
        )
        return self._object(key)

    def key_of(self, uri: str) -> str:
        plain = _without_query(uri)
        if not plain.startswith(self.base_url + "/"):
            raise NotStoredHere(f"{plain} is not a blob in {self.where} ({self.base_url})")
        return unquote(plain[len(self.base_url) + 1 :])

    def _object(self, name: str) -> StoredObject:
        uri = _without_query(self.container.get_blob_client(name).url)
        return signed_or_public(
            self.options, _POLICY, self.where, uri, name, lambda expires_at: f"{uri}?{self._sas(name, expires_at)}"
        )

    def _sas(self, name: str, expires_at: datetime) -> str:
        start = datetime.now(UTC) - _CLOCK_SKEW
        common: dict[str, Any] = {
            "account_name": self.service.account_name,
            "container_name": self.container_name,
            "blob_name": name,
            "permission": BlobSasPermissions(read=True),
            "expiry": expires_at,
            "start": start,
        }
        if self.account_key:
            return str(generate_blob_sas(account_key=self.account_key, **common))
        if self.service.credential is None or not hasattr(self.service.credential, "get_token"):
            raise StorageError(
                f"{self.where}: cannot sign a URL: the connection string has no AccountKey and there is no "
                "Azure AD credential for a user-delegation SAS"
            )
        return str(generate_blob_sas(user_delegation_key=self._delegation_key(start, expires_at), **common))

    def _delegation_key(self, start: datetime, expires_at: datetime) -> Any:
        """A user-delegation key (Azure AD credentials), reused while it outlives the URL. Azure
        allows 7 days from ``start``, so the key outlives a URL of up to 7 days less the skew
        (these URLs live at most ``MAX_DELEGATED_TTL_S``)."""
        with self._lock:
            if self._delegation is None or self._delegation[0] < expires_at:
                until = min(start + timedelta(days=7), expires_at + timedelta(days=1))  # Azure allows 7 days
                self._delegation = (until, self.service.get_user_delegation_key(start, until))
            return self._delegation[1]


def _without_query(url: str) -> str:
    return urlsplit(url)._replace(query="", fragment="").geturl()
