"""A small Gemini-compatible server for tests and benchmarks (stdlib + Pillow).

It speaks the REST wire format the real google-genai SDK uses
(``POST /{version}/models/{model}:generateContent``), so tests exercise the
SDK's own request building, response parsing and error raising instead of
mocking it. Pixel sizes come from the model catalog, as on the real API.

Text models (the catalog's ``text_models``) answer in words: a detailed
rewrite of the user's text, or, when the request asks for JSON with a
``responseSchema`` (structured output), ``{"prompts": [...]}`` with as many
distinct prompts as the schema's ``maxItems`` asks for. ``Behaviour("ok",
message=...)`` makes a text model answer exactly that text; the error, block
and ``wrong_count`` / ``fenced`` behaviours apply to text requests too.

In-process::

    with FakeGemini(api_key="k", latency_s=0.1) as fake:
        fake.script(Behaviour("error", code=429, retry_delay_s=1), Behaviour("ok"))
        ... point GOOGLE_GEMINI_BASE_URL at fake.base_url ...
        fake.requests  # what the server saw

From another process: ``python -m devtools.fake_gemini --port N --api-key K``,
driven with ``FakeGeminiControl(base_url)`` (``POST /_fake/script``,
``GET /_fake/requests``, ``GET /_fake/stats``, ``POST /_fake/reset``,
``POST /_fake/config``); ``FakeGeminiProcess`` starts one and offers
FakeGemini's attributes (the benchmarks use it).

It keeps hundreds of slow requests in flight at once (a thread per connection,
HTTP/1.1 keep-alive as on the real API, a listen backlog of ``BACKLOG``) and
counts them (``in_flight``, ``max_in_flight``). Images are a solid colour (tiny
PNGs) unless ``image_kind="photo"``: noise that compresses like a photograph,
about 1.6 MB of PNG at 1024x1024, for measuring what decoding costs a worker.
Given a server ``ssl.SSLContext`` it speaks HTTPS, as the real API does (each
connection's handshake runs on its own thread).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import hashlib
import io
import json
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

from contract.catalog import ModelCatalog, load_catalog

KINDS = (
    "ok",
    "error",
    "safety_block",
    "prompt_block",
    "thoughts",  # a thought text and two thought draft images before the final image
    "two_images",  # an unflagged draft, then the final image: the last one is the answer
    "mislabelled_mime",
    "text_only",
    "wrong_size",
    "cut_short",  # the image's bytes end half way: billed, and refused by the worker's check
    "wrong_count",  # text models: a structured answer with one prompt fewer than asked
    "fenced",  # text models: the answer in a markdown code fence, after a "Prompt:" label
)

# google.rpc status names the real API pairs with each HTTP code.
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
DEFAULT_MESSAGES = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
}
IMAGE_KINDS = ("solid", "photo")
BACKLOG = 1024  # listen queue: a burst of hundreds of new connections is not refused or delayed
_PATH = re.compile(r"^/(?P<version>[^/]+)/(?:.*/)?models/(?P<model>[^/:]+):generateContent$")
DRAFT_SIZE = (64, 64)  # thought drafts are small so tests can tell them from the final image


@dataclass(frozen=True)
class Behaviour:
    """What the server does with one request (see ``KINDS``)."""

    kind: str = "ok"
    code: int = 0  # HTTP status for kind="error"
    message: str | None = None  # error message, or the model's words for text_only
    reason: str | None = None  # finishReason (safety_block) or blockReason (prompt_block)
    retry_delay_s: float | None = None  # google.rpc.RetryInfo detail on an error
    retry_after_header_s: int | None = None  # Retry-After header on an error
    latency_s: float | None = None  # overrides the server's default latency for this request

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown behaviour {self.kind!r}; known: {KINDS}")
        if self.kind == "error" and not 400 <= self.code < 600:
            raise ValueError("an error behaviour needs an HTTP code from 400 to 599")

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> Behaviour:
        return cls(kind=data) if isinstance(data, str) else cls(**data)


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    api_version: str
    model: str
    headers: dict[str, str]  # lower-case names; the API key header is left out
    api_key_ok: bool
    body: Any
    timestamp: float  # time.time() on arrival, before any latency
    behaviour: str


@dataclass
class _State:
    """Everything handler threads share, behind one lock."""

    api_key: str | None
    latency_s: float
    sizes: dict[tuple[str, str, str], tuple[int, int]]
    text_models: frozenset[str] = frozenset()
    lock: threading.Lock = field(default_factory=threading.Lock)
    script: deque[Behaviour] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    image_kind: str = "solid"
    in_flight: int = 0  # generateContent requests arrived and not yet answered
    max_in_flight: int = 0

    def next_behaviour(self) -> Behaviour:
        with self.lock:
            return self.script.popleft() if self.script else Behaviour()

    def reset(self) -> None:
        """Forget the script and the recorded requests; count the most in flight from now."""
        with self.lock:
            self.script.clear()
            self.requests.clear()
            self.max_in_flight = self.in_flight


def pixel_sizes(catalog: ModelCatalog) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(model id, aspect ratio, tier) -> pixels, from the catalog's size keys."""
    table: dict[tuple[str, str, str], tuple[int, int]] = {}
    for entry in catalog.models.values():
        for size, option in entry.sizes.items():
            width, height = (int(n) for n in size.split("x"))
            table[(entry.model_id, option.aspect_ratio, option.tier)] = (width, height)
    return table


class _Server(ThreadingHTTPServer):
    """A thread per connection, a deep backlog, and every open connection known so stop() can close it."""

    daemon_threads = True  # a request sleeping in its latency must not block stop()
    request_queue_size = BACKLOG

    def __init__(self, address: tuple[str, int], state: _State, tls: ssl.SSLContext | None = None):
        self.fake_state = state
        self.tls = tls
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # The handshake on the connection's own thread, so a slow one holds up no other.
        with self._open_lock:
            self._open.discard(request)
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)  # takes over the descriptor
        except OSError:  # ssl.SSLError included: a client that gave up or does not trust us
            return
        with self._open_lock:
            self._open.add(wrapped)
        try:
            super().finish_request(wrapped, client_address)
        finally:
            with self._open_lock:
                self._open.discard(wrapped)
            wrapped.close()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        """Kept-alive connections end too: their handler threads see EOF and exit."""
        with self._open_lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class FakeGemini:
    """The server, run on a background thread; a context manager."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        catalog: ModelCatalog | None = None,
        image_kind: str = "solid",
        tls: ssl.SSLContext | None = None,
    ):
        if image_kind not in IMAGE_KINDS:
            raise ValueError(f"image_kind must be one of {IMAGE_KINDS}")
        catalog = catalog or load_catalog()
        text_models = frozenset(entry.model_id for entry in catalog.text_models.values())
        self._state = _State(api_key, latency_s, pixel_sizes(catalog), text_models, image_kind=image_kind)
        self._server = _Server((host, port), self._state, tls)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{'https' if self._server.tls else 'http'}://{host!s}:{port}"

    @property
    def latency_s(self) -> float:
        return self._state.latency_s

    @latency_s.setter
    def latency_s(self, value: float) -> None:
        with self._state.lock:
            self._state.latency_s = value

    @property
    def image_kind(self) -> str:
        return self._state.image_kind

    @image_kind.setter
    def image_kind(self, value: str) -> None:
        if value not in IMAGE_KINDS:
            raise ValueError(f"image_kind must be one of {IMAGE_KINDS}")
        with self._state.lock:
            self._state.image_kind = value

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def in_flight(self) -> int:
        with self._state.lock:
            return self._state.in_flight

    @property
    def max_in_flight(self) -> int:
        """The most generateContent requests in flight at once since the start or the last reset."""
        with self._state.lock:
            return self._state.max_in_flight

    def script(self, *behaviours: Behaviour | str) -> None:
        """Queue behaviours for the next requests, in arrival order."""
        items = [Behaviour(b) if isinstance(b, str) else b for b in behaviours]
        with self._state.lock:
            self._state.script.extend(items)

    def reset(self) -> None:
        self._state.reset()

    def start(self) -> FakeGemini:
        self._state.stopping.clear()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-gemini", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._state.stopping.set()  # wakes requests sleeping in their latency
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
        self._server.close_open_connections()

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeGemini/1"
    # HTTP/1.1 keep-alive, as the real API: a client's connection pool is exercised
    # as in production; stop() closes the connections still open.
    protocol_version = "HTTP/1.1"
    timeout = 120  # an idle kept-alive connection is closed after this
    # Headers and body leave in separate writes: with Nagle's algorithm the body would wait
    # for the client's delayed ACK of the headers (40 ms on Linux), which no real server adds.
    disable_nagle_algorithm = True

    @property
    def state(self) -> _State:
        return self.server.fake_state  # type: ignore[attr-defined, no-any-return]

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests and benchmarks read the recorded requests instead."""

    def handle_one_request(self) -> None:
        # The client gave up (its read timeout): normal in timeout tests.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            super().handle_one_request()

    def do_GET(self) -> None:
        if self.path == "/_fake/requests":
            self._send_json(200, [asdict(r) for r in _copy(self.state)])
        elif self.path == "/_fake/stats":
            with self.state.lock:
                self._send_json(200, {"in_flight": self.state.in_flight, "max_in_flight": self.state.max_in_flight})
        else:
            self._send_error(404, f"no route for GET {self.path}")

    def do_POST(self) -> None:
        body = self._read_json()
        if self.path.startswith("/_fake/"):
            self._control(body)
            return
        match = _PATH.match(self.path.split("?")[0])
        if match is None:
            self._send_error(404, f"no route for POST {self.path}")
            return
        self._generate(match["version"], match["model"], body)

    def _control(self, body: Any) -> None:
        state = self.state
        if self.path == "/_fake/script":
            items = [Behaviour.from_json(b) for b in body.get("behaviours", [])]
            with state.lock:
                state.script.extend(items)
        elif self.path == "/_fake/reset":
            state.reset()
        elif self.path == "/_fake/config":
            kind = body.get("image_kind", state.image_kind)
            if kind not in IMAGE_KINDS:
                self._send_error(400, f"image_kind must be one of {IMAGE_KINDS}")
                return
            with state.lock:
                state.latency_s = float(body.get("latency_s", state.latency_s))
                state.image_kind = kind
        else:
            self._send_error(404, f"no control endpoint {self.path}")
            return
        self._send_json(200, {"ok": True})

    def _generate(self, version: str, model: str, body: Any) -> None:
        state = self.state
        arrived = time.time()
        sent_key = self.headers.get("x-goog-api-key")
        key_ok = state.api_key is None or sent_key == state.api_key
        behaviour = state.next_behaviour()
        headers = {
            k.lower(): v for k, v in self.headers.items() if k.lower() not in ("x-goog-api-key", "authorization")
        }
        with state.lock:
            state.requests.append(
                RecordedRequest(self.path, version, model, headers, key_ok, body, arrived, behaviour.kind)
            )
            latency = state.latency_s if behaviour.latency_s is None else behaviour.latency_s
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            self._answer_after(latency, version, model, body, behaviour, sent_key, key_ok)
        finally:
            with state.lock:
                state.in_flight -= 1

    def _answer_after(
        self, latency: float, version: str, model: str, body: Any, behaviour: Behaviour, sent_key: Any, key_ok: bool
    ) -> None:
        state = self.state
        if latency and state.stopping.wait(latency):
            self.close_connection = True
            return  # shutting down: drop the request as a dying server would
        if state.api_key is not None and not sent_key:
            self._send_error(401, "Method doesn't allow unregistered callers. Please use an API key.")
        elif not key_ok:
            self._send_error(403, "API key not valid. Please pass a valid API key.")
        elif behaviour.kind == "error":
            self._send_error(
                behaviour.code,
                behaviour.message or DEFAULT_MESSAGES.get(behaviour.code, f"fake error {behaviour.code}"),
                behaviour.retry_delay_s,
                behaviour.retry_after_header_s,
            )
        elif model in state.text_models:
            self._send_json(200, _text_response(model, body if isinstance(body, dict) else {}, behaviour))
        elif not any(m == model for m, _, _ in state.sizes):
            self._send_error(404, f"models/{model} is not found for API version {version}, or is not supported.")
        else:
            self._answer(model, body if isinstance(body, dict) else {}, behaviour)

    def _answer(self, model: str, body: dict[str, Any], behaviour: Behaviour) -> None:
        config = _get(body, "generationConfig") or {}
        image_config = _get(config, "imageConfig") or {}
        ratio = _get(image_config, "aspectRatio") or "1:1"
        tier = _get(image_config, "imageSize") or "1K"
        size = self.state.sizes.get((model, ratio, tier))
        if size is None:
            self._send_error(400, f"aspect ratio {ratio!r} with image size {tier!r} is not supported by {model}.")
            return
        modalities = [str(m).upper() for m in (_get(config, "responseModalities") or ["TEXT", "IMAGE"])]
        kind = "text_only" if "IMAGE" not in modalities else behaviour.kind
        seed = _get(config, "seed")
        self._send_json(200, _response(model, kind, behaviour, size, seed, self.state.image_kind))

    def _read_json(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return {"_unparsed": raw.decode(errors="replace")}

    def _send_json(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(
        self, code: int, message: str, retry_delay_s: float | None = None, retry_after_s: int | None = None
    ) -> None:
        """The Google error shape: {"error": {"code", "message", "status", "details"}}."""
        details: list[dict[str, Any]] = []
        if code == 429:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_requests_per_model"}],
                }
            )
        if retry_delay_s is not None:
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_delay_s:g}s"})
        status = STATUS_NAMES.get(code, HTTPStatus(code).phrase.upper().replace(" ", "_"))
        error = {"error": {"code": code, "message": message, "status": status, "details": details}}
        extra = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
        self._send_json(code, error, extra)


def _copy(state: _State) -> list[RecordedRequest]:
    with state.lock:
        return list(state.requests)


def _get(mapping: Any, camel: str) -> Any:
    """A config value under its camelCase or snake_case name (the SDK sends both)."""
    if not isinstance(mapping, dict):
        return None
    if camel in mapping:
        return mapping[camel]
    return mapping.get(re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower())


def _response(
    model: str, kind: str, behaviour: Behaviour, size: tuple[int, int], seed: object, image_kind: str = "solid"
) -> dict[str, Any] | bytes:
    """A generateContent response body for one behaviour (photo images: the encoded JSON)."""
    usage = {"promptTokenCount": 12, "candidatesTokenCount": 1300, "totalTokenCount": 1312}
    base: dict[str, Any] = {"modelVersion": model, "responseId": uuid.uuid4().hex[:22], "usageMetadata": usage}
    if kind == "prompt_block":
        usage.update(candidatesTokenCount=0, totalTokenCount=12)
        return {**base, "promptFeedback": {"blockReason": behaviour.reason or "SAFETY"}}
    if kind == "safety_block":
        usage.update(candidatesTokenCount=0, totalTokenCount=12)
        candidate = {"finishReason": behaviour.reason or "IMAGE_SAFETY", "index": 0}
        return {**base, "candidates": [candidate]}
    parts: list[dict[str, Any]] = []
    if kind == "text_only":
        parts.append({"text": behaviour.message or "I can describe it in words, but I did not draw it."})
    else:
        if kind == "thoughts":
            parts.append({"text": "Planning the composition first.", "thought": True})
            parts.append({**_image_part(DRAFT_SIZE, seed, "PNG"), "thought": True})
            parts.append({**_image_part(DRAFT_SIZE, seed, "PNG"), "thought": True})
            usage.update(thoughtsTokenCount=300, totalTokenCount=1612)
        if kind == "two_images":
            parts.append(_image_part(DRAFT_SIZE, seed, "PNG"))
        if kind == "wrong_size":
            size = (size[0] // 2, size[1] // 2)
        fmt = "JPEG" if kind == "mislabelled_mime" else "PNG"
        parts.append({"text": "Here is your image."})
        if image_kind == "photo" and kind == "ok":
            # The megabytes of base64 go in as they are: json.dumps would scan and copy them per answer.
            parts.append({"inlineData": {"mimeType": "image/png", "data": _PHOTO_MARK}})
            content = {"role": "model", "parts": parts}
            body = json.dumps({**base, "candidates": [{"content": content, "finishReason": "STOP", "index": 0}]})
            head, tail = body.encode().split(_PHOTO_MARK.encode())
            return b"".join((head, _photo_base64(size), tail))
        image = _image_part(size, seed, fmt)
        if kind == "cut_short":
            whole = base64.b64decode(image["inlineData"]["data"])
            image["inlineData"]["data"] = base64.b64encode(whole[: len(whole) // 2]).decode()
        parts.append(image)
    content = {"role": "model", "parts": parts}
    return {**base, "candidates": [{"content": content, "finishReason": "STOP", "index": 0}]}


_PHOTO_MARK = "@@photo@@"
# What the fake's text model adds to a prompt: distinct takes for structured answers.
TAKES = (
    "at golden hour, wide shot",
    "in soft studio light, close-up",
    "as a watercolour illustration",
    "at night under neon signs",
    "from a low angle, dramatic sky",
    "in flat vector style, pastel colours",
    "as a black-and-white photograph",
    "in isometric 3D, toy-like",
)


def request_text(body: Any) -> str:
    """The user's text in a generateContent request body (what an image or text model was asked)."""
    contents = _get(body, "contents") if isinstance(body, dict) else None
    texts = [
        str(part.get("text", ""))
        for content in (contents if isinstance(contents, list) else [])
        if isinstance(content, dict)
        for part in (content.get("parts") or [])
        if isinstance(part, dict)
    ]
    return "\n".join(texts)


def _text_response(model: str, body: dict[str, Any], behaviour: Behaviour) -> dict[str, Any]:
    """A text model's answer: plain text, or structured JSON when a response schema asks for it."""
    config = _get(body, "generationConfig") or {}
    asked = request_text(body)
    system = request_text({"contents": [_get(body, "systemInstruction")]})
    base: dict[str, Any] = {"modelVersion": model, "responseId": uuid.uuid4().hex[:22]}
    usage = {"promptTokenCount": max(1, (len(asked) + len(system)) // 4)}  # about 4 characters a token
    if behaviour.kind == "prompt_block":
        usage["totalTokenCount"] = usage["promptTokenCount"]
        return {**base, "usageMetadata": usage, "promptFeedback": {"blockReason": behaviour.reason or "SAFETY"}}
    if behaviour.kind == "safety_block":
        usage["totalTokenCount"] = usage["promptTokenCount"]
        return {**base, "usageMetadata": usage, "candidates": [{"finishReason": behaviour.reason or "SAFETY"}]}
    schema = _get(config, "responseSchema") or _get(config, "responseJsonSchema")
    structured = str(_get(config, "responseMimeType") or "").lower() == "application/json" or schema is not None
    if behaviour.message is not None:
        text = behaviour.message
    elif structured:
        count = _item_count(schema)
        if behaviour.kind == "wrong_count":
            count = max(0, count - 1)
        text = json.dumps({"prompts": [f"{asked.strip()}, {TAKES[n % len(TAKES)]}" for n in range(count)]})
    else:
        text = f"A detailed image of {asked.strip()}, rich textures, balanced composition, soft natural light."
        if behaviour.kind == "fenced":
            text = f"```text\nPrompt: {text}\n```"
    usage["candidatesTokenCount"] = max(1, len(text) // 4)
    usage["totalTokenCount"] = usage["promptTokenCount"] + usage["candidatesTokenCount"]
    content = {"role": "model", "parts": [{"text": text}]}
    return {**base, "usageMetadata": usage, "candidates": [{"content": content, "finishReason": "STOP", "index": 0}]}


def _item_count(schema: Any) -> int:
    """How many prompts a ``{"prompts": array}`` schema asks for (its maxItems, else minItems, else 1)."""
    properties = _get(schema, "properties") or {}
    array = properties.get("prompts") if isinstance(properties, dict) else None
    for name in ("maxItems", "minItems"):
        value = _get(array, name)
        if value is not None:
            return max(0, min(int(value), 64))
    return 1


@functools.lru_cache(maxsize=4)
def _photo_base64(size: tuple[int, int]) -> bytes:
    return base64.b64encode(render_photo(size))


def render_photo(size: tuple[int, int]) -> bytes:
    """A PNG that compresses like a photograph (1.65 MB at 1024x1024): a gradient plus three
    bits of noise per channel, the same bytes every time."""
    width, height = size
    noise = random.Random(f"{width}x{height}").randbytes(width * height * 3)
    ramp = bytes(range(0, 256, 16)) * 16
    pixels = bytes(a & 0x0B | b for a, b in zip(noise, ramp * (len(noise) // len(ramp) + 1), strict=False))
    out = io.BytesIO()
    Image.frombytes("RGB", size, pixels).save(out, format="PNG", compress_level=6)
    return out.getvalue()


def _image_part(size: tuple[int, int], seed: object, fmt: str) -> dict[str, Any]:
    # Always labelled PNG: for JPEG bytes that is the reported mislabelling.
    return {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(render(size, seed, fmt)).decode()}}


def render(size: tuple[int, int], seed: object, fmt: str = "PNG") -> bytes:
    """A solid image (cheap to encode even at 4K) whose colour follows the seed."""
    return _solid(size, hashlib.sha256(repr(seed).encode()).digest()[:3], fmt)


@functools.lru_cache(maxsize=256)
def _solid(size: tuple[int, int], colour: bytes, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, tuple(colour)).save(out, format=fmt)
    return out.getvalue()


class FakeGeminiControl:
    """Drive a FakeGemini running in another process over HTTP."""

    def __init__(self, base_url: str, timeout_s: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def script(self, *behaviours: Behaviour | str) -> None:
        items = [asdict(Behaviour(b) if isinstance(b, str) else b) for b in behaviours]
        self._call("POST", "/_fake/script", {"behaviours": items})

    def set_latency(self, latency_s: float) -> None:
        self._call("POST", "/_fake/config", {"latency_s": latency_s})

    def set_image_kind(self, image_kind: str) -> None:
        self._call("POST", "/_fake/config", {"image_kind": image_kind})

    def reset(self) -> None:
        self._call("POST", "/_fake/reset", {})

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_fake/requests", None)
        return result

    def stats(self) -> dict[str, int]:
        """``in_flight`` and ``max_in_flight`` (since the start or the last reset)."""
        result: dict[str, int] = self._call("GET", "/_fake/stats", None)
        return result

    def _call(self, method: str, path: str, payload: Any) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return json.loads(response.read())


class FakeGeminiProcess:
    """The server in a process of its own, with FakeGemini's attributes (driven over HTTP by
    ``FakeGeminiControl``); a context manager. For benchmarks: the real API is remote, so its
    stand-in must not share a GIL with the process that submits jobs and times them."""

    def __init__(self, api_key: str | None = None, *, latency_s: float = 0.0, image_kind: str = "solid"):
        self._command = [sys.executable, "-m", "devtools.fake_gemini", "--port", "0", "--image-kind", image_kind]
        self._command += ["--latency", str(latency_s)] + (["--api-key", api_key] if api_key else [])
        self._latency_s, self._image_kind = latency_s, image_kind
        self._process: subprocess.Popen[str] | None = None
        self.base_url = ""

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    @property
    def control(self) -> FakeGeminiControl:
        return FakeGeminiControl(self.base_url)

    @property
    def latency_s(self) -> float:
        return self._latency_s

    @latency_s.setter
    def latency_s(self, value: float) -> None:
        self.control.set_latency(value)
        self._latency_s = value

    @property
    def image_kind(self) -> str:
        return self._image_kind

    @image_kind.setter
    def image_kind(self, value: str) -> None:
        self.control.set_image_kind(value)
        self._image_kind = value

    @property
    def requests(self) -> list[RecordedRequest]:
        return [RecordedRequest(**item) for item in self.control.requests()]

    @property
    def max_in_flight(self) -> int:
        return self.control.stats()["max_in_flight"]

    def reset(self) -> None:
        self.control.reset()

    def start(self) -> FakeGeminiProcess:
        root = Path(__file__).resolve().parent.parent
        self._process = subprocess.Popen(self._command, cwd=root, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        first = self._process.stdout.readline()  # "fake Gemini listening on URL", or EOF if it died
        if "listening on" not in first:
            self.stop()
            raise RuntimeError(f"fake Gemini did not start (exit code {self._process.returncode})")
        self.base_url = first.split("listening on", 1)[1].strip()
        return self

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> FakeGeminiProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None, help="required x-goog-api-key (default: accept any key)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--image-kind", choices=IMAGE_KINDS, default="solid", help="photo: ~1.6 MB PNGs at 1K")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeGemini(
        args.api_key, host=args.host, port=args.port, latency_s=args.latency, image_kind=args.image_kind
    ) as fake:
        print(f"fake Gemini listening on {fake.base_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
