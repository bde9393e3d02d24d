"""One webhook POST, connected to the address that was checked (no DNS rebinding).

The URL's host is resolved once and every address checked
(``contract.webhooks.public_addresses``); the connection then goes to that
address, not to the name: TLS still sends the name (SNI) and checks the
certificate against it, and the ``Host`` header carries it, so a name that
resolves to a public address at the check and to 127.0.0.1 a moment later
cannot steer the POST inside. Redirects are not followed (a 3xx could point
anywhere) and at most a few KB of the answer are read.

The timeout is the whole POST's (``_Deadline``): urllib3's bound each connect
and each read, so a receiver sending one byte just inside each read's timeout
would otherwise hold a worker slot for as long as it likes.
"""

from __future__ import annotations

import contextlib
import email.utils
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar
from urllib.parse import urlsplit

import certifi
import urllib3
import urllib3.connection
from urllib3.exceptions import HTTPError, NewConnectionError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

MAX_ANSWER_BYTES = 4096
_Connection = TypeVar("_Connection", bound=urllib3.connection.HTTPConnection)


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
    deadline = _Deadline(timeout_s)
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
        pool.ConnectionCls = deadline.watching(urllib3.connection.HTTPSConnection)
    else:
        pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False)
        pool.ConnectionCls = deadline.watching(urllib3.connection.HTTPConnection)
    timed_out = PostOutcome(None, f"timeout: no answer within {timeout_s:g} s")
    try:
        with pool, deadline:
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
            if deadline.expired:  # the answer was cut short: its status line is not an answer
                return timed_out
            return PostOutcome(response.status, retry_after_s=_retry_after(response.headers.get("Retry-After")))
    except SSLError as exc:
        return timed_out if deadline.expired else PostOutcome(None, f"tls: {type(exc).__name__}")
    except NewConnectionError as exc:  # a subclass of the connect timeout in urllib3: refused, unreachable
        return timed_out if deadline.expired else PostOutcome(None, f"connection: {_connect_failure(exc)}")
    except Urllib3Timeout:
        return timed_out
    except (HTTPError, OSError) as exc:
        return timed_out if deadline.expired else PostOutcome(None, f"connection: {type(exc).__name__}")


class _Deadline:
    """Ends a POST that overruns ``seconds`` in all, from connect to the last byte read.

    Each connection made under it keeps a duplicate of its socket's descriptor; when the time is
    up a timer shuts that socket down, and whatever read or handshake was blocked on it fails at
    once. The duplicate is ours until the POST ends, so the timer never touches a descriptor
    that urllib3 closed and the process reused."""

    def __init__(self, seconds: float):
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def watching(self, base: type[_Connection]) -> type[_Connection]:
        """``base`` whose every new socket this deadline watches (a pool's ``ConnectionCls``)."""
        deadline = self

        class Watched(base):  # type: ignore[valid-type,misc]
            def _new_conn(self) -> socket.socket:
                sock: socket.socket = super()._new_conn()
                deadline._watch(sock)
                return sock

        return Watched

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()

    def _watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock.dup())
            if self.expired:  # connected after the deadline: end it now
                _shut(self._sockets[-1])

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # the peer or urllib3 ended it first
        sock.shutdown(socket.SHUT_RDWR)


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit() and len(text) <= 10:  # isdigit() alone: also "²" (a latin-1 header)
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _connect_failure(exc: NewConnectionError) -> str:
    """ "refused" for a refused connection (the usual case: nothing listens), else the error's name."""
    cause = exc.__cause__ or exc.__context__
    return "refused" if isinstance(cause, ConnectionRefusedError) else type(cause or exc).__name__
