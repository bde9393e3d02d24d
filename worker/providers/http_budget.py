"""A whole-call deadline and a byte cap for the provider SDK's HTTP calls.

httpx's timeouts bound each socket operation, not the call: a server that
sends a byte every few seconds is never timed out, and nothing bounds how much
it sends. Celery's time limits do not apply to the threads pool, so a dripping
answer would hold a worker slot until the broker redelivers the variation,
which then pays for the image again.

``call_budget`` sets both bounds for the calls made inside it, on this thread
(or greenlet). They are enforced by a wrapper around the network backend of
the SDK's HTTP client, on every connect, TLS handshake, read and write, so the
response headers are bounded as well as the body, and a connection kept alive
from an earlier call obeys the current call's budget. A read may end up to a
small slack after the deadline (1 % of the budget, at most 1 s): the price of
setting the socket's timeout once per answer rather than once per TLS record.

The stream also tells the answer gate (answer_gate.py) when an answer's first bytes arrive, and
gives the call back the time it waited there.
"""

from __future__ import annotations

import importlib
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from worker.providers.answer_gate import answer_arriving, request_sent
from worker.providers.tls_reads import coalescing_tls_stream, is_coalescing, slack_for


class ResponseTooLarge(Exception):
    """The answer went over the call's byte cap (raised from a read; httpx passes it on unchanged)."""


@dataclass
class _Budget:
    deadline: float  # time.monotonic()
    bytes_left: int
    timeout_s: float
    max_bytes: int


_current: ContextVar[_Budget | None] = ContextVar("imagegen_http_budget", default=None)


@contextmanager
def call_budget(timeout_s: float, max_bytes: int) -> Iterator[None]:
    """HTTP calls made inside take at most ``timeout_s`` in all and read at most ``max_bytes``."""
    token = _current.set(_Budget(time.monotonic() + timeout_s, max_bytes, timeout_s, max_bytes))
    try:
        yield
    finally:
        _current.reset(token)


def install_budget(client: Any) -> Any:
    """Put the budget into every connection pool of an httpx or httpx2 ``Client`` (its own
    transport and any proxy mounts); returns the client.

    httpx offers no public way to give its default transport a network backend, so this sets
    the pools' ``_network_backend`` before any connection exists. It checks the shape it
    expects and refuses loudly otherwise, so an httpx release that changes it fails the tests
    rather than silently dropping the bound."""
    package = type(client).__module__.split(".")[0]
    core = importlib.import_module({"httpx": "httpcore", "httpx2": "httpcore2"}[package])
    transports = [client._transport, *(t for t in client._mounts.values() if t is not None)]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if not isinstance(pool, core.ConnectionPool) or backend is None:
            raise RuntimeError(f"cannot bound the calls of {type(transport).__name__}: unexpected {package} internals")
        if getattr(pool, "_connections", None):
            raise RuntimeError("install the HTTP budget before the client makes its first connection")
        if not isinstance(backend, _BudgetedBackend):
            pool._network_backend = _BudgetedBackend(backend, core, coalesce_tls=_direct_http11(pool, core))
    return client


def _direct_http11(pool: Any, core: ModuleType) -> bool:
    """Whether ``pool``'s TLS may be our stream (tls_reads.py): not a proxy's pool (a tunnel's TLS
    runs inside the proxy's), nor an HTTP/2 one (it reads and writes from two threads at once)."""
    return type(pool) is core.ConnectionPool and not pool._http2


def _remaining(core: ModuleType, error: type[Exception], timeout: float | None) -> float | None:
    """The socket timeout for the next operation: the caller's, cut to what is left of the call."""
    budget = _current.get()
    if budget is None:
        return timeout
    left = budget.deadline - time.monotonic()
    if left <= 0:
        raise error(f"the call took longer than its {budget.timeout_s:g} s budget")
    return left if timeout is None else min(timeout, left)


def _timeout_slack(budget: _Budget | None) -> float:
    """How far a socket's timeout may run past what is left of the call before it is set again."""
    return 0.0 if budget is None else slack_for(budget.timeout_s)


class _BudgetedStream:
    """httpcore's stream, bounded by the call's budget.

    Reads of a plain socket and of our TLS stream (tls_reads.py, which TLS over a direct
    connection starts) skip httpcore's ``settimeout`` before every read while the socket's
    timeout is still right to within a small slack: CPython's ``settimeout`` always makes an
    ``ioctl`` with the GIL released, and each release lets another thread take the GIL. Other
    streams (httpcore's TLS, which a proxy's pool keeps) are read through httpcore as they are."""

    def __init__(self, stream: Any, core: ModuleType, coalesce_tls: bool = False):
        self._stream = stream
        self._core = core
        self._coalesce_tls = coalesce_tls
        self._plain = type(stream).__name__ == "SyncStream"
        # A plain socket, or our TLS stream over one: read here, with the socket's timeout as set.
        self._socket: socket.socket | None = None
        self._read_now: Callable[[int], bytes] | None = None
        if self._plain or is_coalescing(stream):
            sock: socket.socket = stream.get_extra_info("socket")
            self._socket, self._read_now = sock, sock.recv if self._plain else stream.read_now
        self._timeout_known = False  # whether _timeout_set is the socket's timeout now
        self._timeout_set: float | None = None

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        wanted = _remaining(self._core, self._core.ReadTimeout, timeout)
        if self._socket is None:
            data: bytes = self._stream.read(max_bytes, wanted)
        else:
            data = self._recv(self._socket, max_bytes, wanted)
        budget = _current.get()
        if data:  # an answer's first bytes wait here for the memory they will take (answer_gate.py)
            waited = answer_arriving()
            if waited and budget is not None:
                budget.deadline += waited  # the budget bounds the server, and its answer is here
        if budget is not None:
            budget.bytes_left -= len(data)
            if budget.bytes_left < 0:
                raise ResponseTooLarge(f"the answer is larger than its {budget.max_bytes // 2**20} MiB cap")
        return data

    def _recv(self, sock: socket.socket, max_bytes: int, wanted: float | None) -> bytes:
        """httpcore's ``SyncStream.read``, with the timeout set only when it has to change."""
        assert self._read_now is not None
        if not self._timeout_close_enough(wanted):
            sock.settimeout(wanted)
            self._timeout_known, self._timeout_set = True, wanted
        try:
            return self._read_now(max_bytes)
        except TimeoutError as exc:  # socket.timeout; the same mapping as httpcore's
            raise self._core.ReadTimeout(exc) from exc
        except OSError as exc:
            raise self._core.ReadError(exc) from exc

    def _timeout_close_enough(self, wanted: float | None) -> bool:
        """True if the socket's timeout, for a read starting now, runs past ``wanted`` by no more
        than the slack, and is no shorter (that could time out a read the call still allows)."""
        if not self._timeout_known:
            return False
        if self._timeout_set is None or wanted is None:
            return self._timeout_set is wanted  # both None: the socket blocks, as wanted
        return 0.0 <= self._timeout_set - wanted <= _timeout_slack(_current.get())

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # httpcore sets the socket's timeout for each write (a call makes only one or two).
        self._timeout_known = False
        request_sent()
        self._stream.write(buffer, _remaining(self._core, self._core.WriteTimeout, timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> _BudgetedStream:
        timeout = _remaining(self._core, self._core.ConnectTimeout, timeout)
        if self._plain and self._coalesce_tls and self._socket is not None:  # TLS straight over TCP
            tls = coalescing_tls_stream(self._core, self._socket, ssl_context, server_hostname, timeout)
        else:
            tls = self._stream.start_tls(ssl_context, server_hostname, timeout)
        return _BudgetedStream(tls, self._core)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _BudgetedBackend:
    def __init__(self, backend: Any, core: ModuleType, coalesce_tls: bool):
        self._backend = backend
        self._core = core
        self._coalesce_tls = coalesce_tls

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> _BudgetedStream:
        timeout = _remaining(self._core, self._core.ConnectTimeout, timeout)
        stream = self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _BudgetedStream(stream, self._core, self._coalesce_tls)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> _BudgetedStream:
        timeout = _remaining(self._core, self._core.ConnectTimeout, timeout)
        return _BudgetedStream(self._backend.connect_unix_socket(path, timeout, socket_options), self._core)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)
