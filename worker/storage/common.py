"""What the cloud backends share: their options, bounded upload retries and
the mapping of SDK errors to a ``StorageError`` that is safe to show users."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from urllib.parse import quote

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from contract.settings import Settings
from worker.errors import StorageError, StorageUnavailable
from worker.storage.base import StoredObject

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class StoreOptions:
    """Per-store knobs from Settings (hashable: part of the store cache key)."""

    signed_url_ttl_s: int = 3600
    public_base_url: str | None = None  # a CDN in front of the bucket: url = base + key, unsigned
    retry_attempts: int = 4
    retry_max_delay_s: float = 2.0
    timeout_s: float = 30.0
    # Connections kept per storage host: one per worker slot (the SDKs keep 10; past that
    # botocore and requests open and drop a connection, a TCP and TLS handshake, per upload).
    pool_size: int = 10

    @classmethod
    def from_settings(cls, settings: Settings, *, platform: bool) -> StoreOptions:
        return cls(
            signed_url_ttl_s=settings.signed_url_ttl_s,
            # The operator's CDN fronts the platform bucket only, never a node's own bucket.
            public_base_url=settings.storage_public_base_url if platform else None,
            retry_attempts=settings.storage_retry_attempts,
            retry_max_delay_s=settings.storage_retry_max_delay_s,
            timeout_s=settings.storage_timeout_s,
            pool_size=settings.pool_size,
        )

    def expiry(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.signed_url_ttl_s)

    def public_url(self, key: str) -> str | None:
        return f"{self.public_base_url.rstrip('/')}/{quote(key)}" if self.public_base_url else None


def pooled(session: requests.Session, pool_size: int) -> requests.Session:
    """``session`` keeping up to ``pool_size`` connections per host, with no retries of its own
    (``with_retries`` is the one policy), refusing redirects: the endpoint's host was checked
    (contract/clouds), the one a redirect points to was not (``requests.TooManyRedirects``)."""
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=pool_size, max_retries=0)
    for prefix in ("https://", "http://"):
        session.mount(prefix, adapter)
    session.max_redirects = 0
    return session


REDIRECT_REFUSED = "the endpoint answered with a redirect, which is not followed"


def is_refused_redirect(exc: BaseException) -> bool:
    """A redirect ``pooled`` refused, also when an SDK wrapped it in its own error."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.TooManyRedirects):
            return True
        # azure-core keeps the transport's error as ``inner_exception``
        seen = getattr(seen, "inner_exception", None) or seen.__cause__ or seen.__context__
    return False


@dataclass(frozen=True)
class ErrorPolicy:
    """How one SDK's exceptions read: which are worth a retry, and a safe cause text."""

    sdk_errors: tuple[type[BaseException], ...]  # anything else is a bug and propagates as is
    is_transient: Callable[[BaseException], bool]
    describe: Callable[[BaseException], str]  # never the request headers or credentials

    # A redirect ``pooled`` refused reads the same in every SDK that wraps it: permanent.
    def transient(self, exc: BaseException) -> bool:
        return not is_refused_redirect(exc) and self.is_transient(exc)

    def cause(self, exc: BaseException) -> str:
        return REDIRECT_REFUSED if is_refused_redirect(exc) else self.describe(exc)


def with_retries(options: StoreOptions, policy: ErrorPolicy, where: str, call: Callable[[], T]) -> T:
    """Run ``call``; retry transient failures briefly; raise StorageError naming ``where``
    (StorageUnavailable when the last failure was still a transient one)."""

    def note(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        cause = policy.cause(exc) if exc else "?"
        log.info(
            "%s: transient error (%s) on attempt %d; retrying in %.2f s", where, cause, state.attempt_number, delay
        )

    retrying = Retrying(
        stop=stop_after_attempt(options.retry_attempts),
        wait=wait_exponential_jitter(initial=0.2, max=options.retry_max_delay_s),
        retry=retry_if_exception(lambda exc: isinstance(exc, policy.sdk_errors) and policy.transient(exc)),
        before_sleep=note,
        reraise=True,
    )
    try:
        return retrying(call)
    except policy.sdk_errors as exc:
        if policy.transient(exc):
            attempts = options.retry_attempts
            raise StorageUnavailable(f"{where}: gave up after {attempts} attempt(s): {policy.cause(exc)}") from None
        raise StorageError(f"{where}: {policy.cause(exc)}") from None


def signed_or_public(
    options: StoreOptions, policy: ErrorPolicy, where: str, uri: str, key: str, sign: Callable[[datetime], str]
) -> StoredObject:
    """The operator's public (CDN) URL when configured, else ``sign(expires_at)``'s URL with its expiry."""
    public = options.public_url(key)
    if public:
        return StoredObject(uri=uri, url=public)
    expires_at = options.expiry()
    url = with_retries(options, policy, where, lambda: sign(expires_at))
    return StoredObject(uri=uri, url=url, url_expires_at=expires_at)
