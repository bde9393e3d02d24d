"""The budget's socket reads (worker/providers/http_budget.py): a timeout set once per answer,
not once per TLS record, and set again whenever the call's deadline needs it.

Sockets here count their ``settimeout`` and ``recv`` calls (a subclass: the TCP socket under
the budget's TLS stream, worker/providers/tls_reads.py, and for httpcore's own TLS the context's
``sslsocket_class``), through a real httpx client and FakeGemini over HTTPS."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpcore2
import httpx2
import pytest

from devtools.fake_gemini import FakeGemini
from worker.providers.http_budget import _BudgetedStream, _direct_http11, call_budget, install_budget

KEY = "AIzaBUDGET-canary-0d15ea5e"
BODY = {
    "contents": [{"role": "user", "parts": [{"text": "a lighthouse"}]}],
    "generationConfig": {
        "responseModalities": ["TEXT", "IMAGE"],
        "imageConfig": {"aspectRatio": "1:1", "imageSize": "1K"},
    },
}


class Counts:
    settimeout = 0
    recv = 0


class Counting:
    """Counts a socket's ``settimeout`` and ``recv`` calls in its class's ``counts``."""

    counts = Counts()

    def settimeout(self, value: float | None) -> None:
        self.counts.settimeout += 1
        super().settimeout(value)  # type: ignore[misc]

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        self.counts.recv += 1
        return super().recv(buflen, flags)  # type: ignore[misc,no-any-return]


class CountingSSLSocket(Counting, ssl.SSLSocket):
    """httpcore's own TLS (the context's ``sslsocket_class``)."""

    counts = Counts()


@pytest.fixture
def tls(tls_server_context: ssl.SSLContext) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The server context of conftest.py and a client context that trusts it and counts."""
    client = ssl.create_default_context()  # trusts the throwaway CA through SSL_CERT_FILE
    client.sslsocket_class = CountingSSLSocket
    CountingSSLSocket.counts = Counts()
    return tls_server_context, client


def post(client: httpx2.Client, fake: FakeGemini) -> bytes:
    url = f"{fake.base_url}/v1beta/models/gemini-3-pro-image:generateContent"
    answer = client.post(url, json=BODY, headers={"x-goog-api-key": KEY})
    assert answer.status_code == 200, answer.text[:300]
    return answer.content


class CountingTCPSocket(Counting, socket.socket):
    """The TCP socket under the budget's own TLS stream (worker/providers/tls_reads.py)."""

    counts = Counts()


def counting_connection(address: Any, timeout: Any = None, source_address: Any = None) -> socket.socket:
    plain = socket_create_connection(address, timeout, source_address=source_address)
    sock = CountingTCPSocket(plain.family, plain.type, fileno=plain.detach())
    sock.settimeout(timeout)
    return sock


socket_create_connection = socket.create_connection


def test_a_large_answer_over_tls_is_read_by_the_budgets_stream_setting_the_timeout_once(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, client_context = tls
    monkeypatch.setattr(socket, "create_connection", counting_connection)  # httpcore's connect_tcp
    CountingTCPSocket.counts = Counts()
    with FakeGemini(api_key=KEY, image_kind="photo", tls=server) as fake:
        client = install_budget(httpx2.Client(verify=client_context))
        with client, call_budget(30.0, 64 * 2**20):
            body = post(client, fake)
    counts = CountingTCPSocket.counts
    assert len(body) > 2_000_000  # a 1.65 MB PNG as base64 in JSON: well over a hundred TLS records
    # At most one socket read a record, and many records a read when they wait in the socket: how
    # many depends on how fast this in-process server writes (13 to 68 seen); test_tls_reads.py
    # counts it where it does not. The timeout: a handful (the connect, the handshake, the
    # request's write, the first read), not one per record as httpcore's (below).
    assert 0 < counts.recv <= 150
    assert counts.settimeout <= 8
    assert CountingSSLSocket.counts.recv == 0  # no SSLSocket at all: the budget's own TLS stream


def test_without_the_budget_httpcore_sets_it_before_every_read(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """What the test above would see without the budget's reads: the check can fail."""
    server, client_context = tls
    with (
        FakeGemini(api_key=KEY, image_kind="photo", tls=server) as fake,
        httpx2.Client(verify=client_context) as client,
    ):
        post(client, fake)
    counts = CountingSSLSocket.counts
    assert counts.settimeout >= counts.recv > 100


# --- the rule, on a socket pair --------------------------------------------------------------


class CountingSocket(socket.socket):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.timeouts: list[float | None] = []

    def settimeout(self, value: float | None) -> None:
        self.timeouts.append(value)
        super().settimeout(value)


@pytest.fixture
def pair() -> Iterator[tuple[_BudgetedStream, CountingSocket, socket.socket]]:
    left, right = socket.socketpair()
    ours = CountingSocket(left.family, left.type, fileno=left.detach())
    stream = _BudgetedStream(httpcore2._backends.sync.SyncStream(ours), httpcore2)
    yield stream, ours, right
    ours.close()
    right.close()


def read_one(stream: _BudgetedStream, peer: socket.socket, timeout: float | None = None) -> bytes:
    """The peer sends one byte and the stream reads it."""
    peer.sendall(b"x")
    return stream.read(1, timeout=timeout)


def test_reads_within_one_call_keep_the_timeout_set_by_the_first(
    pair: tuple[_BudgetedStream, CountingSocket, socket.socket],
) -> None:
    stream, ours, peer = pair
    with call_budget(30.0, 2**20):
        for _ in range(20):
            peer.sendall(b"x" * 100)
            assert stream.read(100, timeout=60.0) == b"x" * 100
    assert len(ours.timeouts) == 1
    assert ours.timeouts[0] is not None and 29.0 < ours.timeouts[0] <= 30.0  # the call's, not httpx's 60 s


def test_the_timeout_is_set_again_once_the_deadline_has_moved_past_the_slack(
    pair: tuple[_BudgetedStream, CountingSocket, socket.socket],
) -> None:
    stream, ours, peer = pair
    with call_budget(1.0, 2**20):  # slack: 10 ms
        read_one(stream, peer, timeout=60.0)
        time.sleep(0.05)
        read_one(stream, peer, timeout=60.0)
    assert len(ours.timeouts) == 2
    first, second = ours.timeouts
    assert first is not None and second is not None and second <= first - 0.04


def test_a_new_call_on_a_kept_alive_connection_gets_its_own_longer_timeout(
    pair: tuple[_BudgetedStream, CountingSocket, socket.socket],
) -> None:
    stream, ours, peer = pair
    for budget_s in (0.5, 30.0):  # two calls, one after the other, on the same connection
        with call_budget(budget_s, 2**20):
            read_one(stream, peer)
    first, second = ours.timeouts
    assert first is not None and first <= 0.5 and second is not None and second > 29.0


def test_a_write_between_reads_makes_the_next_read_set_its_timeout(
    pair: tuple[_BudgetedStream, CountingSocket, socket.socket],
) -> None:
    stream, ours, peer = pair
    with call_budget(30.0, 2**20):
        read_one(stream, peer)
        stream.write(b"request", timeout=5.0)  # httpcore sets the write's own timeout
        read_one(stream, peer)
    assert ours.timeouts[-2] == 5.0 and ours.timeouts[-1] is not None and ours.timeouts[-1] > 29.0


def test_no_budget_and_no_timeout_sets_blocking_once(
    pair: tuple[_BudgetedStream, CountingSocket, socket.socket],
) -> None:
    stream, ours, peer = pair
    for _ in range(5):
        read_one(stream, peer)
    assert ours.timeouts == [None]


def test_a_read_past_the_timeout_is_httpcores_read_timeout(
    pair: tuple[_BudgetedStream, CountingSocket, socket.socket],
) -> None:
    stream, _, _ = pair
    with call_budget(0.2, 2**20), pytest.raises(httpcore2.ReadTimeout):
        stream.read(1)


def test_a_reset_connection_is_httpcores_read_error() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    ours = CountingSocket(socket.AF_INET, socket.SOCK_STREAM)
    ours.connect(listener.getsockname())
    peer, _ = listener.accept()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # linger 0: the close sends a reset
    stream = _BudgetedStream(httpcore2._backends.sync.SyncStream(ours), httpcore2)
    try:
        with pytest.raises(httpcore2.ReadError):
            stream.read(1, timeout=5.0)
    finally:
        ours.close()
        listener.close()


def test_the_deadline_still_ends_a_read_that_waits(pair: tuple[_BudgetedStream, CountingSocket, socket.socket]) -> None:
    stream, _, peer = pair
    started = time.monotonic()
    with call_budget(0.5, 2**20), pytest.raises(httpcore2.ReadTimeout):
        read_one(stream, peer)
        stream.read(1)  # nothing more comes: ends at the call's deadline, within the slack
    assert 0.4 < time.monotonic() - started < 3  # not early; and without the deadline it would wait forever


def test_a_proxys_pool_and_an_http2_pool_keep_httpcores_tls() -> None:
    """The budget's TLS stream cannot carry TLS inside it (an https:// proxy's tunnel) nor serve
    two threads at once (HTTP/2), so only direct HTTP/1.1 connections get it; the others keep
    httpcore's own TLS, still under the budget."""
    client = install_budget(httpx2.Client(proxy="https://127.0.0.1:9"))
    with client:
        direct = client._transport._pool._network_backend
        [proxied] = [t._pool._network_backend for t in client._mounts.values() if t is not None]
    assert type(direct).__name__ == type(proxied).__name__ == "_BudgetedBackend"
    assert direct._coalesce_tls and not proxied._coalesce_tls
    # HTTP/2 (two threads on one connection) needs the h2 package, which the worker does not install.
    assert _direct_http11(httpcore2.ConnectionPool(), httpcore2)
    assert not _direct_http11(httpcore2.ConnectionPool(http2=True), httpcore2)
