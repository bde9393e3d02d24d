"""TLS for the provider SDK's connections, read many records at a time.

httpcore's own TLS stream is an ``ssl.SSLSocket``, whose ``recv`` returns at most one TLS record
(16 KiB) and makes two socket reads for it (the record's header, then its body), releasing the
GIL around each. A 1.65 MB image arrives as about 140 records, so every answer cost ~140 turns
of httpcore's and h11's read loop and ~280 system calls (benchmarks/figures.py, "over HTTPS").

This stream is httpcore's own ``TLSinTLSStream`` (TLS over ``ssl.MemoryBIO``: the same
handshake, certificate and hostname checks, from the same ``SSLContext``), changed so that:

* the socket is read ``RAW_READ_BYTES`` at a time while an answer streams in, so one system call
  brings many records (``WAITING_READ_BYTES`` for the read that waits for it), and nothing is
  sent when TLS has nothing to send (the base class made an empty send each turn);
* a read returns every whole record already received, up to ``max_bytes``, not just the first
  (at most one socket read per record, and many per read when they wait in the socket: the
  SDK call's CPU fell by about a quarter; docs/pools.md);
* one operation (a handshake, a read, a write) takes at most the socket's timeout in all (plus a
  small slack), as on an ``SSLSocket``, however many socket reads it needs (the base class gives
  each read the whole timeout again: a server dripping a record's bytes would never time out);
* a close_notify, or bytes that are not a whole data record, received with an answer make the
  connection readable, so httpcore does not reuse it as idle (an ``SSLSocket`` leaves them in
  the socket, which says so; its FIN may come later).

Only for HTTP/1.1 (the SDK's client does not ask for HTTP/2): an HTTP/2 connection reads and
writes from two threads at once, which this stream's shared buffers do not allow.

A clean close (close_notify) reads as ``b""``, as on an ``SSLSocket``; a connection cut without
one is a ``ReadError`` (a network failure, retried as any other; worker/providers/gemini.py).
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

RAW_READ_BYTES = 256 * 1024  # what one socket read may bring while an answer streams in: ~16 records
# The read that waits for an answer (after a request, up to the whole generation) asks for less:
# CPython allocates a read's whole buffer before it waits, so each of 256 calls in flight would
# hold 256 KiB for nothing. 64 KiB is what httpcore's own TLS read allocated.
WAITING_READ_BYTES = 64 * 1024


def coalescing_tls_stream(
    core: ModuleType,
    sock: socket.socket,
    ssl_context: ssl.SSLContext,
    server_hostname: str | None,
    timeout: float | None,
) -> Any:
    """A TLS stream over ``sock`` for ``core`` (httpcore or httpcore2), its handshake done;
    failures mapped, and the socket closed, as httpcore's own ``start_tls`` does."""
    try:
        return _stream_class(core)(sock, ssl_context, server_hostname, timeout)
    except Exception as exc:
        sock.close()
        if isinstance(exc, TimeoutError):  # socket.timeout
            raise core.ConnectTimeout(exc) from exc
        if isinstance(exc, OSError):  # ssl.SSLError, a refused certificate included
            raise core.ConnectError(exc) from exc
        raise


SLACK_SHARE = 0.01  # of a timeout: a 120 s one may end at most 1 s late, a 1 s one 10 ms
MAX_SLACK_S = 1.0


def slack_for(timeout_s: float) -> float:
    """How far past ``timeout_s`` a wait may end, so that a socket's timeout need not be set again
    (``settimeout`` releases the GIL) for every small step: here, a second socket read for the rest
    of a record; in http_budget.py, a read against what is left of the whole call."""
    return min(MAX_SLACK_S, timeout_s * SLACK_SHARE)


def is_coalescing(stream: object) -> bool:
    """Whether ``stream`` is one of these streams."""
    return isinstance(stream, _Coalescing)


_classes: dict[str, type] = {}


def _stream_class(core: ModuleType) -> type:
    """The stream class built on ``core``'s ``TLSinTLSStream``, one per module."""
    if core.__name__ not in _classes:
        _classes[core.__name__] = type(
            "CoalescingTLSStream", (_Coalescing, core._backends.sync.TLSinTLSStream), {"_core": core}
        )
    return _classes[core.__name__]


class _Coalescing:
    """The changes, mixed into httpcore's ``TLSinTLSStream`` (which owns the attributes below)."""

    _core: ModuleType
    _sock: socket.socket
    _incoming: ssl.MemoryBIO
    _outgoing: ssl.MemoryBIO
    ssl_obj: ssl.SSLObject
    _left_over = False  # the last read stopped at bytes that were not a whole data record
    _waiting = True  # nothing received since the last request: the next socket read may wait long
    _closed = False  # the server's close_notify was read (the socket may not say so yet)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """httpcore's read: ``timeout`` for this read, then ``read_now``."""
        try:
            self._sock.settimeout(timeout)
        except OSError as exc:
            raise self._core.ReadError(exc) from exc
        return self.read_now(max_bytes)

    def read_now(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of the answer: one record, waited for within the socket's timeout
        as it is now, and every other whole record already received."""
        try:
            data: bytes = self._perform_io(functools.partial(self.ssl_obj.read, max_bytes))
            self._left_over = False
            if not data:
                self._closed = True  # close_notify: b"", as an SSLSocket reads it
                return data
            chunks, size = [data], len(data)
            while size < max_bytes and self._incoming.pending:
                try:
                    more = self.ssl_obj.read(max_bytes - size)
                except ssl.SSLWantReadError:
                    # Part of a record (TLS keeps it, the memory is empty), or a record that was
                    # not data: the next read says which; meanwhile the connection is not idle.
                    self._left_over = True
                    break
                if not more:  # the server closed (close_notify) right after these bytes
                    self._closed = True
                    break
                chunks.append(more)
                size += len(more)
            return b"".join(chunks)
        except TimeoutError as exc:  # socket.timeout; the same mapping as httpcore's
            raise self._core.ReadTimeout(exc) from exc
        except OSError as exc:  # ssl.SSLError included
            raise self._core.ReadError(exc) from exc

    def _perform_io(self, func: Callable[[], Any]) -> Any:
        """Run ``func``, send what TLS wrote, read more when it asks, until it is done; all
        within the socket's timeout as it is on entry, which it has again on return."""
        timeout = self._sock.gettimeout()
        started = time.monotonic()
        first_read, shortened = True, False
        try:
            while True:
                wants_read = False
                try:
                    result = func()
                except ssl.SSLWantReadError:
                    wants_read = True
                outgoing = self._outgoing.read()
                if outgoing:  # no send call for nothing (the base class made one on every turn)
                    self._sock.sendall(outgoing)
                if not wants_read:
                    return result
                if timeout is not None and not first_read:
                    elapsed = time.monotonic() - started
                    if elapsed >= timeout:
                        raise TimeoutError("the TLS operation timed out")
                    if elapsed > slack_for(timeout):  # the rest of a record is late: cut
                        self._sock.settimeout(timeout - elapsed)
                        shortened = True
                first_read = False
                data = self._sock.recv(WAITING_READ_BYTES if self._waiting else RAW_READ_BYTES)
                if data:
                    self._waiting = False  # bytes are coming: the next read need not wait
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
        finally:
            if shortened:  # the caller (the budget) knows the socket's timeout as it set it
                with contextlib.suppress(OSError):  # closed meanwhile: the error raised says why
                    self._sock.settimeout(timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._waiting = True  # a request: its answer's first read waits for the server
        super().write(buffer, timeout)  # type: ignore[misc]

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and (self._closed or self._left_over or self._incoming.pending):
            return True  # closed, or bytes after an answer: the connection is not idle
        return super().get_extra_info(info)  # type: ignore[misc]
