"""The provider's TLS stream (worker/providers/tls_reads.py) against a real TLS peer on a local
socket: many records a read, one timeout for a whole read, a clean close, a cut connection, a
refused certificate, and bytes left after an answer."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import httpcore2
import pytest

from worker.providers.tls_reads import RAW_READ_BYTES, WAITING_READ_BYTES, coalescing_tls_stream

RECORD = 16384  # TLS's largest record: what one SSLSocket.recv returns at most


@contextmanager
def _peer(serve: Callable[[socket.socket], None]) -> Iterator[socket.socket]:
    """A client socket connected to a local listener whose one connection ``serve`` handles."""
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=lambda: serve(listener.accept()[0]), daemon=True)
    thread.start()
    client = socket.create_connection(listener.getsockname(), timeout=5)
    try:
        yield client
    finally:
        client.close()
        thread.join(timeout=15)
        listener.close()


def tls_peer(server: ssl.SSLContext, behave: Callable[[ssl.SSLSocket], None]) -> AbstractContextManager[socket.socket]:
    """The server side completes the handshake and runs ``behave``."""

    def serve(conn: socket.socket) -> None:
        try:
            tls = server.wrap_socket(conn, server_side=True)
        except OSError:
            conn.close()
            return
        behave(tls)

    return _peer(serve)


def raw_tls_peer(
    server: ssl.SSLContext, behave: Callable[[socket.socket, ssl.SSLObject, ssl.MemoryBIO], None]
) -> AbstractContextManager[socket.socket]:
    """As ``tls_peer``, but the server is TLS over memory: ``behave`` gets the raw socket, the
    TLS object and its outgoing ciphertext, to send the bytes of records as it likes."""

    def serve(conn: socket.socket) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = server.wrap_bio(incoming, outgoing, server_side=True)
        with conn:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    conn.sendall(outgoing.read())
                    incoming.write(conn.recv(65536))
            conn.sendall(outgoing.read())
            behave(conn, tls, outgoing)

    return _peer(serve)


def client_context() -> ssl.SSLContext:
    return ssl.create_default_context()  # trusts the throwaway CA through SSL_CERT_FILE (conftest.py)


def open_stream(sock: socket.socket) -> Any:
    return coalescing_tls_stream(httpcore2, sock, client_context(), "127.0.0.1", 5.0)


def read_all(read: Callable[[int], bytes], size: int) -> tuple[bytes, int]:
    """Reads of at most 64 KiB until ``size`` bytes: the bytes and how many reads it took."""
    data, reads = b"", 0
    while len(data) < size:
        chunk = read(65536)
        assert chunk, "the peer closed early"
        data += chunk
        reads += 1
    return data, reads


PAYLOAD = bytes(range(256)) * (20 * RECORD // 256)  # 20 full records


def send_then_wait(payload: bytes, hold: threading.Event) -> Callable[[ssl.SSLSocket], None]:
    def behave(tls: ssl.SSLSocket) -> None:
        tls.sendall(payload)
        hold.wait(10)
        tls.close()

    return behave


def test_one_read_returns_every_record_already_received(tls_server_context: ssl.SSLContext) -> None:
    hold = threading.Event()
    with tls_peer(tls_server_context, send_then_wait(PAYLOAD, hold)) as sock:
        stream = open_stream(sock)
        time.sleep(0.3)  # all 20 records are in this socket's buffer by now
        data, reads = read_all(lambda n: stream.read(n, timeout=5), len(PAYLOAD))
        hold.set()
    assert data == PAYLOAD
    assert reads <= 10  # up to four records a read, 5 reads at best (httpcore's own stream: 20, below)


def test_httpcores_own_tls_stream_returns_one_record_a_read(tls_server_context: ssl.SSLContext) -> None:
    """What the test above would see with httpcore's stream: the check there can fail."""
    hold = threading.Event()
    with tls_peer(tls_server_context, send_then_wait(PAYLOAD, hold)) as sock:
        stream = httpcore2._backends.sync.SyncStream(sock).start_tls(client_context(), "127.0.0.1", 5.0)
        time.sleep(0.3)
        data, reads = read_all(lambda n: stream.read(n, timeout=5), len(PAYLOAD))
        hold.set()
    assert data == PAYLOAD and reads >= 20


def test_a_read_never_returns_more_than_asked(tls_server_context: ssl.SSLContext) -> None:
    hold = threading.Event()
    with tls_peer(tls_server_context, send_then_wait(PAYLOAD, hold)) as sock:
        stream = open_stream(sock)
        time.sleep(0.3)
        sizes = [len(stream.read(n, timeout=5)) for n in (100, RECORD + 1, 3 * RECORD, 3 * RECORD)]
        hold.set()
    # The first socket read was a small one (it could have waited); later ones bring more.
    assert sizes[:2] == [100, RECORD + 1] and all(0 < size <= 3 * RECORD for size in sizes[2:])
    assert max(sizes[2:]) > RECORD + 1  # several records at once


def test_a_record_dripped_byte_by_byte_times_out_within_the_reads_timeout(tls_server_context: ssl.SSLContext) -> None:
    """Each byte comes well within the timeout, so a loop giving every socket read the whole
    timeout again (httpcore's TLSinTLSStream) would wait for the whole record: ~5 min here."""
    stop = threading.Event()

    def drip(conn: socket.socket, tls: ssl.SSLObject, outgoing: ssl.MemoryBIO) -> None:
        tls.write(b"x" * RECORD)
        for byte in outgoing.read():
            if stop.wait(0.02):
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return

    with raw_tls_peer(tls_server_context, drip) as sock:
        stream = open_stream(sock)
        started = time.monotonic()
        with pytest.raises(httpcore2.ReadTimeout):
            stream.read(65536, timeout=0.5)
        elapsed = time.monotonic() - started
        stop.set()
    assert 0.4 < elapsed < 1.5


def test_a_clean_close_reads_as_the_end(tls_server_context: ssl.SSLContext) -> None:
    def answer_and_close(tls: ssl.SSLSocket) -> None:
        tls.sendall(b"hello")
        with contextlib.suppress(OSError):  # sends close_notify; then waits for ours, which never comes
            tls.unwrap()

    with tls_peer(tls_server_context, answer_and_close) as sock:
        stream = open_stream(sock)
        assert stream.read(65536, timeout=5) == b"hello"
        assert stream.read(65536, timeout=5) == b""


def test_a_connection_cut_without_a_close_is_a_read_error(tls_server_context: ssl.SSLContext) -> None:
    def answer_and_cut(tls: ssl.SSLSocket) -> None:
        tls.sendall(b"hello")
        time.sleep(0.2)
        tls.close()  # the socket goes without a close_notify

    with tls_peer(tls_server_context, answer_and_cut) as sock:
        stream = open_stream(sock)
        assert stream.read(65536, timeout=5) == b"hello"
        with pytest.raises(httpcore2.ReadError):
            stream.read(65536, timeout=5)


def test_an_untrusted_certificate_is_a_connect_error_and_the_socket_is_closed(
    tls_server_context: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE")  # the throwaway CA is trusted no more

    def nothing(tls: ssl.SSLSocket) -> None:
        tls.close()

    with tls_peer(tls_server_context, nothing) as sock:
        with pytest.raises(httpcore2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            coalescing_tls_stream(httpcore2, sock, ssl.create_default_context(), "127.0.0.1", 5.0)
        assert sock.fileno() == -1


def test_a_wrong_host_name_is_a_connect_error(tls_server_context: ssl.SSLContext) -> None:
    def nothing(tls: ssl.SSLSocket) -> None:
        tls.close()

    with tls_peer(tls_server_context, nothing) as sock, pytest.raises(httpcore2.ConnectError, match=r"mismatch"):
        coalescing_tls_stream(httpcore2, sock, client_context(), "imagegen.example.com", 5.0)


def test_bytes_left_after_an_answer_make_the_connection_not_idle(tls_server_context: ssl.SSLContext) -> None:
    """httpcore reuses an idle kept-alive connection unless it is readable. Half a record
    received with the answer is in the stream's buffer, not the socket's: it must count."""
    done = threading.Event()

    def answer_and_half_more(conn: socket.socket, tls: ssl.SSLObject, outgoing: ssl.MemoryBIO) -> None:
        tls.write(b"answer")
        answer = outgoing.read()
        tls.write(b"unexpected")
        extra = outgoing.read()
        conn.sendall(answer + extra[: len(extra) // 2])
        done.wait(10)

    with raw_tls_peer(tls_server_context, answer_and_half_more) as sock:
        stream = open_stream(sock)
        time.sleep(0.2)
        assert stream.read(65536, timeout=5) == b"answer"
        assert not httpcore2._utils.is_socket_readable(sock)  # the socket has nothing more
        assert stream.get_extra_info("is_readable") is True
        done.set()


def test_a_read_that_waits_for_the_rest_of_a_record_leaves_the_sockets_timeout_as_it_was(
    tls_server_context: ssl.SSLContext,
) -> None:
    """Within one read the wait for the rest is cut to what is left of the read's timeout; the
    next read must start from the timeout the budget set (worker/providers/http_budget.py)."""

    def split_record(conn: socket.socket, tls: ssl.SSLObject, outgoing: ssl.MemoryBIO) -> None:
        tls.write(b"y" * RECORD)
        record = outgoing.read()
        conn.sendall(record[:100])
        time.sleep(0.3)
        conn.sendall(record[100:])
        time.sleep(1)

    with raw_tls_peer(tls_server_context, split_record) as sock:
        stream = open_stream(sock)
        assert stream.read(65536, timeout=5.0) == b"y" * RECORD
        assert sock.gettimeout() == 5.0


def test_a_close_read_with_the_answer_makes_the_connection_not_idle(tls_server_context: ssl.SSLContext) -> None:
    """The server closes (close_notify) in the same segment as its answer and its FIN comes
    later: httpcore must not reuse the connection for the next request."""
    done = threading.Event()

    def answer_then_close(conn: socket.socket, tls: ssl.SSLObject, outgoing: ssl.MemoryBIO) -> None:
        tls.write(b"answer")
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.unwrap()  # writes close_notify, then would wait for ours
        conn.sendall(outgoing.read())  # the answer and the close, together
        done.wait(10)  # the TCP connection stays open meanwhile

    with raw_tls_peer(tls_server_context, answer_then_close) as sock:
        stream = open_stream(sock)
        time.sleep(0.2)
        assert stream.read(65536, timeout=5) == b"answer"
        assert not httpcore2._utils.is_socket_readable(sock)
        assert stream.get_extra_info("is_readable") is True
        done.set()


class RecordingSocket(socket.socket):
    """Records the size each ``recv`` asks for (CPython allocates it before the call waits)."""

    asked: list[int]

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        self.asked.append(buflen)
        return super().recv(buflen, flags)


def test_the_read_that_waits_for_an_answer_holds_a_small_buffer(tls_server_context: ssl.SSLContext) -> None:
    """A call in flight waits in a socket read for the whole generation: that read asks for
    64 KiB, as httpcore's own TLS did; the answer then streams in 256 KiB at a time."""
    done = threading.Event()

    def answer_after_the_request(tls: ssl.SSLSocket) -> None:
        tls.recv(100)
        time.sleep(0.2)  # the generation
        tls.sendall(PAYLOAD)
        done.wait(10)
        tls.close()

    with tls_peer(tls_server_context, answer_after_the_request) as plain:
        sock = RecordingSocket(plain.family, plain.type, fileno=plain.detach())
        sock.settimeout(5)
        sock.asked = []
        stream = open_stream(sock)
        sock.asked = []  # the handshake's left out
        stream.write(b"request", timeout=5)
        data, _ = read_all(lambda n: stream.read(n, timeout=5), len(PAYLOAD))
        done.set()
        sock.close()
    assert data == PAYLOAD
    assert sock.asked[0] == WAITING_READ_BYTES == 64 * 1024
    assert set(sock.asked[1:]) == {RAW_READ_BYTES}, sock.asked
