"""The service's error root and the one way a rejected value is reported.

Node JSON comes from many tenants, some hostile: an error names the field, the
bad value and what is allowed, but the *value* is only ever a short excerpt
(``excerpt``), so a rejected 200 MB prompt is never echoed back whole into a
log line, an HTTP response or a terminal.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ImageGenError(Exception):
    """The root of this service's own errors."""


class _Missing:
    """No value to show: the field is absent, or its value is never echoed."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

EXCERPT_CHARS = 64  # a quoted value is at most about this long
_HEAD_CHARS = 48  # what is kept of a longer string
_MAX_PROBLEMS_SHOWN = 20
MESSAGE_CHARS = 1000  # an error message in a result, an event or a log line


def clipped(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was: an SDK's or a provider's
    error text can be a whole HTML page, copied into every result, event and log line."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters in all)"


def excerpt(value: Any) -> Any:
    """``value`` itself when it is short, else a short stand-in that says what it was.

    Strings longer than 64 characters keep their first 48 and their length;
    arrays and objects whose JSON is longer than 64 characters become "a list
    of N items" / "an object with N keys"; integers longer than 64 digits are
    summarised by their digit count. Work is bounded by the excerpt, not by the
    size of the value (no full ``json.dumps`` of a huge or deeply nested one).
    """
    try:
        return _excerpt(value)
    except Exception:  # a hostile object (its len, str or int raise): say only what it is
        return f"a value of type {type(value).__name__}"


class _Excerpt(str):
    """A string excerpt() made: excerpting it again changes nothing."""


def _excerpt(value: Any) -> Any:
    if value is MISSING or value is None or isinstance(value, bool | float | _Excerpt):
        return value
    if isinstance(value, str):
        value = str.__str__(value)  # a plain str, whatever subclass came in
        if len(value) <= EXCERPT_CHARS:
            return value
        return _Excerpt(f"{value[:_HEAD_CHARS]}… ({len(value)} characters)")
    if isinstance(value, int):
        value = int.__index__(value)  # a plain int, whatever subclass came in
        if -(10**EXCERPT_CHARS) < value < 10**EXCERPT_CHARS:
            return value
        return f"{'a negative' if value < 0 else 'an'} integer of {_digits(value)} digits"
    if isinstance(value, bytes | bytearray | memoryview):
        size = value.nbytes if isinstance(value, memoryview) else len(value)
        shown = repr(bytes(value[:EXCERPT_CHARS]))
        return shown if size <= EXCERPT_CHARS // 2 and len(shown) <= EXCERPT_CHARS else f"{size} bytes"
    if isinstance(value, list | tuple | Mapping):
        if _json_fits(value):
            return value
        try:
            count = len(value)
        except Exception:
            count = -1
        if isinstance(value, Mapping):
            return f"an object with {_count(count, 'key')}" if count >= 0 else "an object"
        return f"a list of {_count(count, 'item')}" if count >= 0 else "a list"
    return f"a value of type {type(value).__name__}"


def field_part(key: Any) -> str:
    """One part of a field path (an object key or list index) made safe to print:
    at most an excerpt, control and invisible characters escaped."""
    text = key if isinstance(key, str) else str(key) if isinstance(key, int) else f"<{type(key).__name__}>"
    text = excerpt(str.__str__(text))
    if not text:
        return '""'  # an empty key is still a key
    if not text.isprintable():
        text = json.dumps(text)[1:-1]  # \n, \u0000, \u202e...: shown, never acted on
    return str(text)


def shown(value: Any) -> str:
    """An excerpt as JSON for a message: readable in any script, but control and
    invisible characters (newlines, ANSI/C1 escapes, bidi overrides) escaped, so
    a quoted value can neither forge a log line nor drive a terminal."""
    return printable(json.dumps(excerpt(value), ensure_ascii=False, default=str))


def printable(text: str) -> str:
    """``text`` with control and invisible characters escaped as in JSON (``\\n``, ``\\u001b``):
    text from outside (a provider's error, a quoted value) can neither forge a log line nor
    drive a terminal."""
    return text if text.isprintable() else "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


@dataclass(frozen=True)
class UrlText:
    """A URL cut into its parts by hand, for a message that must not quote all of it. Never
    parsed: a URL a parser refuses (a port that is not a number, a list of hosts) or reads
    unlike its client would is quoted too."""

    scheme: str  # with its "://"; "" when there is none
    user_info: str | None  # before the last "@" of the authority; None without an "@"
    hosts: str
    path: str  # from the "/" that ends the authority
    cut: bool  # a query or fragment (where a token or ?password= rides) was left out


def url_text(url: str) -> UrlText:
    head = re.split(r"[?#]", url, maxsplit=1)[0]
    scheme, sep, rest = head.partition("://")
    if not sep:  # "javascript:alert(1)", "user:pw@host/": what precedes the path is all authority
        scheme, rest = "", head
    authority, slash, path = rest.partition("/")
    user_info, at, hosts = authority.rpartition("@")
    return UrlText(scheme + sep, user_info if at else None, hosts, slash + path, head != url)


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _digits(value: int) -> int:
    magnitude = abs(value)
    digits = int(math.log10(magnitude)) + 1  # exact up to float rounding near powers of ten
    if 10 ** (digits - 1) > magnitude:
        digits -= 1
    elif 10**digits <= magnitude:
        digits += 1
    return digits


def _json_fits(value: Any) -> bool:
    """Whether ``value``'s JSON is at most EXCERPT_CHARS long, encoding no more than that."""
    try:
        if len(value) > EXCERPT_CHARS // 2:  # n items need at least 2n-1 characters
            return False
        encoder = json.JSONEncoder(ensure_ascii=False, default=lambda item: f"<{type(item).__name__}>")
        length = 0
        for chunk in encoder.iterencode(value):  # lazily: stops at the limit, however big or deep
            length += len(chunk)
            if length > EXCERPT_CHARS:
                return False
        return True
    except Exception:  # cycles, odd keys, hostile objects: summarise instead
        return False


@dataclass(frozen=True)
class Problem:
    """One problem: the field (a dotted path), the value as an excerpt (or MISSING), what is allowed."""

    field: str
    value: Any
    message: str

    def __post_init__(self) -> None:
        # Whoever builds a Problem, its value is never more than an excerpt.
        object.__setattr__(self, "value", excerpt(self.value))

    def __str__(self) -> str:
        if self.value is MISSING:
            return f"{self.field}: {self.message}"
        return f"{self.field} = {shown(self.value)}: {self.message}"


class NodeValidationError(ImageGenError, ValueError):
    """Every problem with a node (or a job id), each naming field, value and what is allowed."""

    def __init__(self, problems: list[Problem], subject: str = "image_generation node"):
        if len(problems) > _MAX_PROBLEMS_SHOWN:
            hidden = len(problems) - _MAX_PROBLEMS_SHOWN + 1
            problems = [
                *problems[: _MAX_PROBLEMS_SHOWN - 1],
                Problem("(document)", MISSING, f"and {hidden} more problems, not listed; fix the ones above first"),
            ]
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid {subject} ({len(problems)} problem(s)):\n{lines}")

    def as_dicts(self) -> list[dict[str, Any]]:
        return [
            {"field": p.field, "value": None if p.value is MISSING else p.value, "message": p.message}
            for p in self.problems
        ]
