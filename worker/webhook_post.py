"""One webhook POST, connected to the address that was checked (no DNS rebinding).

The URL's host is resolved once and every address checked
(``contract.webhooks.public_addresses``); the connection then goes to that
address, not to the name: TLS still sends the name (SNI) and checks the
certificate against it, and the ``Host`` header carries it, so a name that
resolves to a public address at the check and to 127.0.0.1 a moment later
cannot steer the POST inside. Redirects are not followed (a 3xx could point
anywhere) and at most a few KB of the answer are read.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import certifi
import urllib3
from urllib3.exceptions import HTTPError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

MAX_ANSWER_BYTES = 4096


@dataclass(frozen=True)
class PostOutcome:
    status: int | None  # the HTTP status; None when no answer came
    error: str | None = None  # why there was no answer (never the body, never a secret)
    retry_after_s: float | None = None  # the receiver's Retry-After, in seconds

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """5xx, 408, 429, timeouts and dropped connections; not other 4xx, 3xx or TLS failures."""
        if self.status is None:
            return self.error is not None and not self.error.startswith("tls")
        return self.status >= 500 or self.status in (408, 429)


def post_pinned(url: str, address: str, body: bytes, headers: dict[str, str], timeout_s: float) -> PostOutcome:
    """POST ``body`` to ``url`` over a connection to ``address`` (an IP the caller checked)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s, total=timeout_s)
    pool: urllib3.HTTPConnectionPool
    if https:
        pool = urllib3.HTTPSConnectionPool(
            address,
            port,
            timeout=timeout,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            assert_hostname=host,
            server_hostname=host,
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False)
    try:
        with pool:
            response = pool.urlopen(
                "POST",
                target,
                body=body,
                headers={**headers, "Host": parts.netloc},
                redirect=False,
                retries=False,
                preload_content=False,
                assert_same_host=False,
            )
            try:
                response.read(MAX_ANSWER_BYTES)
            except HTTPError:
                pass  # the status is what counts
            finally:
                response.release_conn()
            return PostOutcome(response.status, retry_after_s=_retry_after(response.headers.get("Retry-After")))
    except SSLError as exc:
        return PostOutcome(None, f"tls: {type(exc).__name__}")
    except Urllib3Timeout:
        return PostOutcome(None, f"timeout: no answer within {timeout_s:g} s")
    except (HTTPError, OSError) as exc:
        return PostOutcome(None, f"connection: {type(exc).__name__}")


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
