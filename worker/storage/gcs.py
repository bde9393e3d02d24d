"""Google Cloud Storage (google-cloud-storage honours ``STORAGE_EMULATOR_HOST``)."""

from __future__ import annotations

import json
import os
import threading
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
import requests
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api_core.exceptions import GoogleAPICallError
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2 import service_account

from contract.clouds import Target, TargetError, TargetPolicy
from contract.clouds.gcp import GCSSpec
from worker.errors import NotStoredHere, StorageError
from worker.storage.base import ImageStore, StoredObject
from worker.storage.common import ErrorPolicy, StoreOptions, pooled, signed_or_public, with_retries

_SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
_MEANING = {404: "the bucket does not exist", 403: "access denied", 401: "the credentials were refused"}


_NOT_A_KEY = "must be a service-account key JSON (type, client_email, private_key, ...)"


def service_account_info(text: str) -> dict[str, Any]:
    """The service-account key JSON a ``gcp_credentials`` reference points at. Everything wrong
    with it is found here, when the store opens, not at signing after the image was paid for;
    messages never quote the secret."""
    try:
        info = _json(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise ValueError(_NOT_A_KEY) from None
    # Every field of a key file is a string; google-auth takes others and fails only when signing.
    if not all(isinstance(value, str) for value in info.values()):
        raise ValueError(_NOT_A_KEY)
    _check_private_key(info.get("private_key"))
    try:
        service_account.Credentials.from_service_account_info(info)  # type: ignore[no-untyped-call]  # validates the fields and the key
    except ValueError:
        raise ValueError(_NOT_A_KEY) from None
    return info


def _check_private_key(pem: object) -> None:
    """ValueError unless ``pem`` is an unencrypted RSA private key: google-auth loads an encrypted
    one with a TypeError, and loads an EC or Ed25519 key that then fails when signing a URL."""
    if not isinstance(pem, str):
        raise ValueError(_NOT_A_KEY)
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        raise ValueError("has an encrypted private_key; an unencrypted RSA service-account key is required") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(_NOT_A_KEY) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("has a private_key that is not RSA; an RSA service-account key is required")


def _json(text: str) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not an object")
    return data


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, GoogleAPICallError):
        code = int(exc.code or 0)
        return code in (408, 429) or code >= 500
    return isinstance(
        exc,
        requests.ConnectionError
        | requests.Timeout
        | requests.exceptions.ChunkedEncodingError
        | google.auth.exceptions.TransportError,
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, GoogleAPICallError):
        code = int(exc.code or 0)
        return f"{_MEANING.get(code, 'request failed')} ({type(exc).__name__}, HTTP {code})"
    if isinstance(exc, google.auth.exceptions.RefreshError):
        return "the service-account credentials were refused (RefreshError)"
    if isinstance(exc, google.auth.exceptions.DefaultCredentialsError):
        return "no GCP credentials: give gcp_credentials or configure Application Default Credentials"
    return type(exc).__name__  # no str(exc): it can quote request details


_POLICY = ErrorPolicy(
    (GoogleAPICallError, google.auth.exceptions.GoogleAuthError, requests.RequestException), _is_transient, _describe
)


class GCSStore(ImageStore):
    @classmethod
    def open(cls, target: Target, secret: str | None, options: StoreOptions, policy: TargetPolicy) -> GCSStore:
        """The store for ``target``: the service-account key from the resolved secret, else ADC.
        A node's key may only send the worker to Google's token endpoints (or allow-listed hosts)."""
        info = service_account_info(secret) if secret else None
        if info is not None and not target.platform:
            try:
                policy.check_endpoint(str(info.get("token_uri")), GCSSpec.public_suffixes, "token_uri", any_path=True)
            except TargetError as exc:
                raise ValueError(f"its {exc}") from None
        return cls(target.bucket, project=target.project, info=info, options=options)

    def __init__(
        self,
        bucket: str,
        *,
        project: str | None = None,
        info: dict[str, Any] | None = None,
        options: StoreOptions | None = None,
    ):
        self.bucket_name = bucket
        self.options = options or StoreOptions()
        self.where = f"GCS bucket {bucket!r}"
        emulator = bool(os.environ.get("STORAGE_EMULATOR_HOST"))
        # Credentials that can sign URLs (and, outside the emulator, authorize uploads).
        self.signer: google.auth.credentials.Credentials | None
        if info:
            self.signer = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=_SCOPES
            )
            project = project or info.get("project_id")
        else:
            self.signer = self._default_credentials(required=not emulator)
        # The emulator takes no auth (and no token endpoint is reachable): the key only signs there.
        anonymous = emulator or self.signer is None
        client_credentials = AnonymousCredentials() if anonymous else self.signer  # type: ignore[no-untyped-call]
        # The library's own session, with a connection per worker slot (requests keeps 10).
        # Token requests (to the key's checked token_uri) get a session of their own that refuses redirects too.
        self._token_requests = google.auth.transport.requests.Request(pooled(requests.Session(), 2))
        authorized = google.auth.transport.requests.AuthorizedSession(  # type: ignore[no-untyped-call]
            client_credentials, auth_request=self._token_requests
        )
        session = pooled(authorized, self.options.pool_size)
        self.client = storage.Client(project=project, credentials=client_credentials, _http=session)
        self.bucket = self.client.bucket(bucket)
        self._lock = threading.Lock()
        if self.signer is None and not self.options.public_base_url:
            # Found now, not after the image was made, paid for and uploaded (an orphan object).
            raise StorageError(self._cannot_sign)

    @property
    def _cannot_sign(self) -> str:
        return (
            f"{self.where}: cannot sign a URL without service-account credentials "
            "(give gcp_credentials, or set IMAGEGEN_STORAGE_PUBLIC_BASE_URL)"
        )

    def _default_credentials(self, *, required: bool) -> google.auth.credentials.Credentials | None:
        try:
            credentials, _ = google.auth.default(scopes=_SCOPES)
        except google.auth.exceptions.DefaultCredentialsError:
            if required:
                raise StorageError(
                    f"{self.where}: no GCP credentials: give gcp_credentials or configure "
                    "Application Default Credentials"
                ) from None
            return None
        return credentials

    def _put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> StoredObject:
        def upload() -> None:
            blob = self.bucket.blob(key)  # a fresh Blob per attempt: Blob objects carry request state
            blob.metadata = metadata
            # retry=None: the library's default retries for up to 120 s; tenacity is the one policy.
            blob.upload_from_string(data, content_type=content_type, retry=None, timeout=self.options.timeout_s)

        with_retries(self.options, _POLICY, self.where, upload)
        return self._object(key)

    def key_of(self, uri: str) -> str:
        parts = urlsplit(uri)
        if parts.scheme != "gs" or parts.netloc != self.bucket_name or parts.query or parts.fragment:
            raise NotStoredHere(f"{uri} is not an object in {self.where}")
        return parts.path.removeprefix("/")

    def _object(self, key: str) -> StoredObject:
        uri = f"gs://{self.bucket_name}/{key}"
        return signed_or_public(self.options, _POLICY, self.where, uri, key, lambda _expires_at: self._sign(key))

    def _sign(self, key: str) -> str:
        if self.signer is None:
            raise StorageError(self._cannot_sign)
        extra: dict[str, Any] = {}
        if not isinstance(self.signer, google.auth.credentials.Signing):
            # Compute Engine / workload identity hold no key: sign through the IAM signBlob API.
            with self._lock:
                if not self.signer.valid:
                    self.signer.refresh(self._token_requests)  # type: ignore[no-untyped-call]
                extra = {"service_account_email": getattr(self.signer, "service_account_email", None)}
                extra["access_token"] = self.signer.token
        blob = self.bucket.blob(key)
        return str(
            blob.generate_signed_url(
                version="v4",
                expiration=timedelta(seconds=self.options.signed_url_ttl_s),
                method="GET",
                credentials=self.signer,
                **extra,
            )
        )
