"""Reading a request body as a hostile tenant may send it.

In this order, before anything is enqueued: the content type must be JSON
(415), the body at most ``IMAGEGEN_API_MAX_BODY_BYTES`` (413: a declared
``Content-Length`` above it is refused without reading a byte, a streamed body
as soon as it passes the limit) and all there within ``IMAGEGEN_API_BODY_TIMEOUT_S`` (408),
the bytes well-formed JSON (400), then the
document's bounds and fields (422, contract/documents.py and contract/node.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import Request

from api.problems import ApiProblem
from contract.documents import load_document

JSON_MEDIA_TYPE = "application/json"


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON_MEDIA_TYPE or (media.startswith("application/") and media.endswith("+json"))


async def read_json(request: Request, limit: int, timeout_s: float) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its top-level object (bounded plain JSON data)."""
    content_type = request.headers.get("content-type", "")
    if not _is_json(content_type):
        shown = content_type[:80] or "none"
        raise ApiProblem(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            f"Content-Type is {shown!r}; send {JSON_MEDIA_TYPE}",
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit, f"Content-Length is {int(declared)} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):  # a body sent a byte at a time holds a connection
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit, "the body is longer")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiProblem(
            408,
            "body-too-slow",
            "Request body too slow",
            f"the body did not arrive within {timeout_s:g} s ({size} bytes came; IMAGEGEN_API_BODY_TIMEOUT_S)",
            headers={"Connection": "close"},
        ) from None
    raw = b"".join(chunks)
    try:
        # Syntax only; the bounded parse below makes the data used. Numbers are not converted
        # here: Python refuses an int of more than 4,300 digits with a bare ValueError, which
        # load_document reports as a 422 naming the field and the limit.
        json.loads(raw, parse_int=len, parse_float=len)
    except (ValueError, RecursionError) as exc:
        raise ApiProblem(400, "malformed-json", "Malformed JSON", f"the body is not JSON: {_where(exc)}") from None
    data = load_document(raw, limit)  # UTF-8, depth, duplicate keys, number sizes: 422 naming the problem
    return raw, data


def _where(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return type(exc).__name__ if not isinstance(exc, UnicodeDecodeError) else "it is not UTF-8 text"


def _too_large(limit: int, why: str) -> ApiProblem:
    return ApiProblem(
        413,
        "body-too-large",
        "Request body too large",
        f"{why}; at most {limit} bytes are allowed (IMAGEGEN_API_MAX_BODY_BYTES)",
        headers={"Connection": "close"},
    )
