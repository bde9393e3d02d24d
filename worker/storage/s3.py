"""AWS S3, or any S3-compatible endpoint (boto3 reads ``AWS_ENDPOINT_URL_S3``)."""

from __future__ import annotations

import functools
import json
import re
import threading
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from contract.clouds import Target, TargetPolicy
from worker.errors import NotStoredHere
from worker.storage.base import ImageStore, StoredObject
from worker.storage.common import ErrorPolicy, StoreOptions, signed_or_public, with_retries

_TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError", "ServiceUnavailable"}
)
_MEANING = {
    "NoSuchBucket": "the bucket does not exist",
    "AccessDenied": "access denied",
    "AllAccessDisabled": "access denied",
    "InvalidAccessKeyId": "the access key id is not known",
    "SignatureDoesNotMatch": "the secret key does not match the access key id",
    "ExpiredToken": "the session token has expired",
    "InvalidToken": "the session token is not valid",
    "403": "access denied",
    "404": "not found",
}


def aws_keys(text: str) -> dict[str, str]:
    """``{"aws_access_key_id", "aws_secret_access_key", "aws_session_token"?}`` from the secret's JSON."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        data = None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in _REQUIRED_KEYS):
        raise ValueError('must be JSON {"aws_access_key_id": ..., "aws_secret_access_key": ..., "aws_session_token"?}')
    keys = {k: data[k] for k in _REQUIRED_KEYS}
    if data.get("aws_session_token") not in (None, ""):
        keys["aws_session_token"] = data["aws_session_token"]
    for name, value in keys.items():
        # Found when the store opens, before the image is paid for (an empty key id failed at
        # signing, a newline in one after every retry); the value is never quoted.
        if not isinstance(value, str) or not _KEY_TEXT.fullmatch(value):
            raise ValueError(f"{name} must be a non-empty string of printable ASCII characters without spaces")
    return keys


_REQUIRED_KEYS = ("aws_access_key_id", "aws_secret_access_key")
_KEY_TEXT = re.compile(r"[\x21-\x7e]{1,4096}")


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return True  # refused, reset, closed mid-response, read timeout
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return status in (408, 429) or status >= 500 or exc.response.get("Error", {}).get("Code") in _TRANSIENT_CODES
    return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code") or "?")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        return f"{_MEANING.get(code, 'request failed')} ({code}, HTTP {status})"
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials: give aws_credentials or configure the worker's default AWS credential chain"
    if isinstance(exc, ParamValidationError):
        return f"invalid request ({exc})"  # names the parameter (e.g. a bad bucket name), no credentials
    return type(exc).__name__


_session_lock = threading.Lock()


@functools.cache
def _session() -> boto3.session.Session:
    """One boto3 session per process: a session loads its own copy of the service models
    (~12 MB), a client made from a shared one ~0.7 MB, and a store is built per bucket and key."""
    return boto3.session.Session()


_POLICY = ErrorPolicy((ClientError, BotoCoreError), _is_transient, _describe)


class S3Store(ImageStore):
    @classmethod
    def open(cls, target: Target, secret: str | None, options: StoreOptions, policy: TargetPolicy) -> S3Store:
        """The store for ``target``: its keys from the resolved secret (JSON), else the default chain.
        The endpoint is the region's or the operator's AWS_ENDPOINT_URL_S3; the secret cannot name one."""
        return cls(target.bucket, region=target.region, keys=aws_keys(secret) if secret else None, options=options)

    def __init__(
        self,
        bucket: str,
        *,
        region: str | None = None,
        keys: dict[str, str] | None = None,
        options: StoreOptions | None = None,
    ):
        self.bucket = bucket
        self.options = options or StoreOptions()
        self.where = f"S3 bucket {bucket!r}"
        config = Config(
            signature_version="s3v4",
            retries={"total_max_attempts": 1},  # tenacity is the one retry policy
            connect_timeout=self.options.timeout_s,
            read_timeout=self.options.timeout_s,
            max_pool_connections=self.options.pool_size,  # botocore keeps 10
        )
        # No keys: boto3's default chain (env, profile, IRSA / instance role). Clients are thread-safe
        # and shared by the threads; the session is not, so clients are made under a lock.
        with _session_lock:
            self.client: Any = _session().client("s3", region_name=region, config=config, **(keys or {}))

    def _put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> StoredObject:
        with_retries(
            self.options,
            _POLICY,
            self.where,
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, Metadata=metadata
            ),
        )
        return self._object(key)

    def key_of(self, uri: str) -> str:
        parts = urlsplit(uri)
        if parts.scheme != "s3" or parts.netloc != self.bucket or parts.query or parts.fragment:
            raise NotStoredHere(f"{uri} is not an object in {self.where}")
        return parts.path.removeprefix("/")

    def _object(self, key: str) -> StoredObject:
        return signed_or_public(
            self.options,
            _POLICY,
            self.where,
            f"s3://{self.bucket}/{key}",
            key,
            lambda _expires_at: str(
                self.client.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.options.signed_url_ttl_s
                )
            ),
        )
