"""GeminiProvider against an endpoint that misbehaves on the wire: the real SDK, a raw socket server.

What is checked: a whole-call deadline (httpx alone bounds each read, so a drip never timed out),
a byte cap on the answer, malformed answers as retryable outcomes, and error text bounded.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from contract.errors import MESSAGE_CHARS
from contract.settings import Settings
from worker.errors import PermanentError, TransientError
from worker.providers.gemini import GeminiProvider

from .test_gemini import KEY, request

Answer = Callable[[socket.socket], None]


class RawServer:
    """Accepts connections and hands each to ``answer`` after reading the request (over TLS
    when given a server context)."""

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None):
        self.answer = answer
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.calls = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:
                return
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                body += conn.recv(65536)
            self.calls += 1
            with contextlib.suppress(OSError):  # the client gave up: what the test wants
                self.answer(conn)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], RawServer]]:
    servers: list[RawServer] = []

    def start(answer: Answer) -> RawServer:
        servers.append(RawServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def provider_for(server: RawServer, timeout_s: float = 10.0, max_mb: int = 128) -> GeminiProvider:
    settings = Settings(
        GEMINI_API_KEY=KEY,
        GOOGLE_GEMINI_BASE_URL=f"{'https' if server.tls else 'http'}://127.0.0.1:{server.port}",
        gemini_timeout_s=timeout_s,
        gemini_max_response_mb=max_mb,
    )
    return GeminiProvider(settings)


def reply(status: str, body: bytes, content_type: str = "application/json") -> Answer:
    def answer(conn: socket.socket) -> None:
        head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        conn.sendall(head.encode() + body)

    return answer


BODY = json.dumps({"candidates": []}).encode() * 50


@pytest.mark.parametrize(
    ("at_once", "dripped"),
    [
        # The headers, then the body a byte at a time: every read well inside the read timeout.
        (f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\n\r\n".encode(), BODY),
        # The response headers themselves a byte at a time.
        (b"", b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 2000),
    ],
    ids=["body", "headers"],
)
def test_an_answer_dripped_a_byte_at_a_time_ends_at_the_deadline(
    serve: Callable[[Answer], RawServer], at_once: bytes, dripped: bytes
) -> None:
    def dripping(conn: socket.socket) -> None:
        conn.sendall(at_once)
        for byte in dripped:
            conn.sendall(bytes([byte]))
            time.sleep(0.05)

    provider = provider_for(serve(dripping), timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        provider.generate(request())
    assert caught.value.timed_out and "IMAGEGEN_GEMINI_TIMEOUT_S=1 s for the whole call" in str(caught.value)
    assert time.monotonic() - started < 5  # either drip alone would take 40 s or more


def test_a_dripped_answer_ends_at_the_deadline_over_tls_too(tls_server_context: ssl.SSLContext) -> None:
    # Over HTTPS the budget's wrapper also covers the handshake and reads through the TLS layer.
    def dripping(conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\n\r\n".encode())
        for byte in BODY:
            conn.sendall(bytes([byte]))
            time.sleep(0.05)

    server = RawServer(dripping, tls=tls_server_context)
    try:
        provider = provider_for(server, timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(TransientError) as caught:
            provider.generate(request())
        assert caught.value.timed_out and "IMAGEGEN_GEMINI_TIMEOUT_S=1 s for the whole call" in str(caught.value)
        assert time.monotonic() - started < 5 and server.calls == 1
    finally:
        server.close()


def test_the_deadline_is_per_call_on_a_kept_alive_connection(serve: Callable[[Answer], RawServer]) -> None:
    server = serve(reply("429 Too Many Requests", b'{"error": {"code": 429, "message": "slow down"}}'))
    provider = provider_for(server, timeout_s=1.0)
    for _ in range(3):  # three calls over more than one budget's time, each within its own
        with pytest.raises(TransientError, match="slow down"):
            provider.generate(request())
        time.sleep(0.4)


@pytest.mark.parametrize("over_tls", [False, True])
def test_an_answer_over_the_byte_cap_is_refused_naming_the_setting(
    over_tls: bool, tls_server_context: ssl.SSLContext
) -> None:
    """Over TLS the answer is read by the worker's own stream (worker/providers/tls_reads.py),
    several records a read: the cap counts them all the same."""
    data = base64.b64encode(b"\0" * (3 * 2**20)).decode()
    part = {"inlineData": {"mimeType": "image/png", "data": data}}
    body = json.dumps({"candidates": [{"content": {"parts": [part]}, "finishReason": "STOP"}]}).encode()
    server = RawServer(reply("200 OK", body), tls=tls_server_context if over_tls else None)
    try:
        provider = provider_for(server, max_mb=1)
        with pytest.raises(PermanentError) as caught:
            provider.generate(request())
    finally:
        server.close()
    assert "1 MiB cap" in str(caught.value) and "IMAGEGEN_GEMINI_MAX_RESPONSE_MB" in str(caught.value)


NOT_BASE64 = {"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "#!*"}}]}}]}


@pytest.mark.parametrize(
    ("what", "answer", "outcome"),
    [
        # Not JSON: worth another try.
        ("a proxy's HTML page", reply("200 OK", b"<html>Gateway says hi</html>", "text/html"), TransientError),
        ("JSON cut short", reply("200 OK", b'{"candidates": [{"content": {"parts": ['), TransientError),
        # JSON the SDK cannot take: it would come back the same, and each try may be billed.
        ("not base64", reply("200 OK", json.dumps(NOT_BASE64).encode()), PermanentError),
        ("a number where a name goes", reply("200 OK", b'{"candidates": [{"finishReason": 7}]}'), PermanentError),
    ],
)
def test_an_answer_the_sdk_cannot_read_says_so(
    serve: Callable[[Answer], RawServer], what: str, answer: Answer, outcome: type[Exception]
) -> None:
    with pytest.raises(outcome) as caught:
        provider_for(serve(answer)).generate(request())
    assert type(caught.value) is outcome, what
    assert "Gemini's answer could not be read" in str(caught.value) and "Traceback" not in str(caught.value)


def test_a_huge_error_page_is_clipped_and_keeps_the_key_out(serve: Callable[[Answer], RawServer]) -> None:
    page = b"<html>" + KEY.encode() + b" " + b"x" * 2_000_000 + b"</html>"
    with pytest.raises(PermanentError) as caught:
        provider_for(serve(reply("400 Bad Request", page, "text/html"))).generate(request())
    message = str(caught.value)
    assert len(message) < MESSAGE_CHARS + 100 and "characters in all" in message
    assert KEY not in message
