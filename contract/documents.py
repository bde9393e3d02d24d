"""Bounded JSON loading for node documents written by (possibly hostile) tenants.

``load_document`` turns a node given as text, bytes or a Python mapping into
plain JSON data (dicts, lists, str, int, float, bool, None) or raises
``NodeValidationError``, never anything else. What it accepts:

* the whole document is at most ``IMAGEGEN_MAX_NODE_BYTES`` bytes (default
  65536), measured before parsing: text by its UTF-8 length, a mapping by the
  length of its compact JSON (``separators=(",", ":")``, UTF-8);
* bytes are UTF-8; strings are valid Unicode (no lone surrogates);
* objects have string keys, each at most once (a duplicate key is refused with
  its path: which of two values "wins" differs between parsers);
* nesting is at most ``MAX_DEPTH`` (32) arrays/objects deep, checked before
  ``json.loads`` runs, so a 100,000-deep document never reaches a recursion limit;
* numbers are finite (no NaN / Infinity) and below 2**63 in magnitude, checked
  on the digits before ``int()`` runs, so a 5,000-digit integer costs nothing;
* a mapping holds JSON values only (dict, list/tuple, str, int, float, bool,
  None) and no cycles; it is walked iteratively, then round-tripped through
  the same parser as text, so every input ends up as fresh plain data.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from contract.errors import MISSING, NodeValidationError, Problem, excerpt, field_part

DOCUMENT = "(document)"
MAX_DEPTH = 32
INT_BOUND = 2**63  # |n| < 2**63: what every JSON stack and Redis agrees on
_NAMED_INT_DIGITS = 64  # out of bounds but this short: parsed, so the walk can name its field
_MAX_PROBLEMS = 10  # structural problems listed before giving up

_JSON_VALUES = "only JSON values are allowed: object (str keys), array, string, number, true, false, null"
_OUTSIDE_STRING = re.compile(r'[\[\]{}"]')
_INSIDE_STRING = re.compile(r'["\\]')
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Refused(Exception):
    """Raised from json.loads hooks: the parse stops at the first bad number."""

    def __init__(self, problem: Problem):
        super().__init__(problem.message)
        self.problem = problem


class _Duplicated(dict[str, Any]):
    """An object that had repeated keys; the walk reports them with their path."""

    duplicated: list[str]


def too_large(limit: int, size: int | None = None) -> NodeValidationError:
    """The error for a document over ``limit`` bytes (``size`` None: "more than")."""
    measured = f"is {size} bytes" if size is not None else f"is more than {limit} bytes"
    return NodeValidationError(
        [Problem(DOCUMENT, MISSING, f"{measured}; at most {limit} bytes are allowed (IMAGEGEN_MAX_NODE_BYTES)")]
    )


def load_document(data: object, max_bytes: int) -> dict[str, Any]:
    """Plain JSON data for a node document, within the limits above, or NodeValidationError."""
    if isinstance(data, memoryview):
        if data.nbytes > max_bytes:
            raise too_large(max_bytes, data.nbytes)
        data = data.tobytes()
    if isinstance(data, bytes | bytearray):
        if len(data) > max_bytes:
            raise too_large(max_bytes, len(data))
        raw = bytes(data)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _invalid(f"is not UTF-8 text: byte {exc.start} cannot be decoded; node JSON must be UTF-8") from None
    elif isinstance(data, str):
        text = str.__str__(data)
        if len(text) > max_bytes:  # every character is at least one byte
            raise too_large(max_bytes)
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise _invalid(f"is not valid Unicode: a lone surrogate at character {exc.start}") from None
        if size > max_bytes:
            raise too_large(max_bytes, size)
    elif isinstance(data, Mapping):
        text = _mapping_to_text(data, max_bytes)
    else:
        raise _invalid(f"must be a JSON object (a dict, or its JSON text as str or bytes), not {_kind(data)}")
    return _parse(text)


def _parse(text: str) -> dict[str, Any]:
    if _deeper_than(text, MAX_DEPTH):
        raise _invalid(f"nests arrays/objects more than {MAX_DEPTH} deep; at most {MAX_DEPTH} levels are allowed")
    try:
        document = json.loads(
            text,
            object_pairs_hook=_object,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except _Refused as refused:
        raise NodeValidationError([refused.problem]) from None
    except json.JSONDecodeError as exc:
        raise _invalid(f"is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:  # not reachable after the depth check; kept as a second line of defence
        raise _invalid(f"nests arrays/objects too deep; at most {MAX_DEPTH} levels are allowed") from None
    except ValueError as exc:  # anything else the parser refuses
        raise _invalid(f"is not valid JSON: {excerpt(str(exc))}") from None
    problems = _walk(document, max_bytes=None)
    if problems:
        raise NodeValidationError(problems)
    if not isinstance(document, dict):
        raise _invalid(f"must be a JSON object {{...}}, not {_kind(document)}")
    return document


def _mapping_to_text(data: Mapping[Any, Any], max_bytes: int) -> str:
    try:
        problems = _walk(data, max_bytes=max_bytes)
        if problems:
            raise NodeValidationError(problems)
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_plain)
        size = len(text.encode("utf-8"))
    except NodeValidationError:
        raise
    except RecursionError:
        raise _invalid(f"nests arrays/objects too deep; at most {MAX_DEPTH} levels are allowed") from None
    except Exception as exc:  # a Mapping whose methods raise, or that changed under us
        raise _invalid(f"could not be read as JSON data ({type(exc).__name__}); {_JSON_VALUES}") from None
    if size > max_bytes:
        raise too_large(max_bytes, size)
    return text


def _walk(root: object, max_bytes: int | None) -> list[Problem]:
    """Check a value's structure without recursion: depth, key types, value types,
    bounded numbers, valid Unicode, no cycles, no duplicate keys, and (for a
    mapping, ``max_bytes`` set) a running lower bound of its JSON size."""
    problems: list[Problem] = []
    size = 0
    # (value, path parts, depth, ids of the containers above it)
    stack: list[tuple[object, tuple[str, ...], int, tuple[int, ...]]] = [(root, (), 1, ())]
    while stack and len(problems) < _MAX_PROBLEMS:
        value, path, depth, above = stack.pop()
        size += _size_at_least(value)
        if max_bytes is not None and size > max_bytes:  # before any work in proportion to the value
            return [*problems, *too_large(max_bytes).problems]
        if isinstance(value, str):
            if _SURROGATE.search(value):
                problems.append(Problem(_path(path), MISSING, "is not valid Unicode (a lone surrogate)"))
        elif value is None or isinstance(value, bool):
            pass
        elif isinstance(value, int):
            if not -INT_BOUND < value < INT_BOUND:
                problems.append(
                    Problem(_path(path), value, "is out of range; numbers must be below 2**63 in magnitude")
                )
        elif isinstance(value, float):
            if not math.isfinite(value) or not -INT_BOUND < value < INT_BOUND:
                problems.append(
                    Problem(_path(path), MISSING, "must be a finite number below 2**63 in magnitude (no NaN, Infinity)")
                )
        elif isinstance(value, Mapping | list | tuple):
            if id(value) in above:
                problems.append(Problem(_path(path), MISSING, "contains itself (a cycle); JSON is a tree"))
                continue
            if depth > MAX_DEPTH:
                problems.append(
                    Problem(
                        _path(path),
                        MISSING,
                        f"nests arrays/objects more than {MAX_DEPTH} deep; at most that is allowed",
                    )
                )
                continue
            inner = (*above, id(value))
            if isinstance(value, Mapping):
                for dup in getattr(value, "duplicated", ()) if isinstance(value, _Duplicated) else ():
                    problems.append(
                        Problem(_path((*path, dup)), MISSING, "is given more than once; each key may appear once")
                    )
                children = []
                for key, child in list(value.items()):
                    if not isinstance(key, str):
                        problems.append(
                            Problem(
                                _path((*path, f"<{type(key).__name__} key>")),
                                excerpt(key),
                                "is not a string key; object keys must be strings",
                            )
                        )
                        continue
                    size += len(str.__str__(key))
                    if _SURROGATE.search(key):
                        problems.append(Problem(_path((*path, key)), MISSING, "key is not valid Unicode"))
                    children.append((child, (*path, key), depth + 1, inner))
                if max_bytes is not None and size > max_bytes:
                    return [*problems, *too_large(max_bytes).problems]
            else:
                children = [(child, (*path, f"[{i}]"), depth + 1, inner) for i, child in enumerate(value)]
            stack.extend(reversed(children))
        else:
            problems.append(Problem(_path(path), MISSING, f"is {_kind(value)}; {_JSON_VALUES}"))
    return problems


def _size_at_least(value: object) -> int:
    """A lower bound of ``value``'s compact JSON length, its children aside (keys included)."""
    if isinstance(value, str):
        return len(str.__str__(value)) + 2  # a subclass's own __len__ plays no part
    if isinstance(value, Mapping):
        return 1 + 5 * len(value)  # "":0, per entry; the keys' lengths are added as they are read
    if isinstance(value, list | tuple):
        return 1 + 2 * len(value)
    return 1


def _deeper_than(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit``: one pass,
    jumping between the characters that matter, no recursion, no regex backtracking."""
    depth = 0
    position = 0
    while True:
        found = _OUTSIDE_STRING.search(text, position)
        if found is None:
            return False
        position = found.end()
        char = found.group()
        if char == '"':
            while True:  # to the closing quote, skipping escapes
                inside = _INSIDE_STRING.search(text, position)
                if inside is None:
                    return False  # unterminated: json.loads reports it
                position = inside.end()
                if inside.group() == '"':
                    break
                position += 1
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) == len(pairs):
        return document
    seen: set[str] = set()
    duplicated = []
    for key, _ in pairs:
        if key in seen and key not in duplicated:
            duplicated.append(key)
        seen.add(key)
    marked = _Duplicated(document)
    marked.duplicated = duplicated
    return marked


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > _NAMED_INT_DIGITS:  # before int(): 5,000 digits never reach the int-str limit
        raise _Refused(Problem(DOCUMENT, digits, "has an integer out of range; numbers must be below 2**63"))
    return int(digits)  # out of range but short: the walk names its field (inputs.seed, ...)


def _parse_float(text: str) -> float:
    return float(text)  # 1e999 is inf: the walk names its field


def _parse_constant(name: str) -> float:
    raise _Refused(Problem(DOCUMENT, MISSING, f"has {name}, which is not JSON; numbers must be finite"))


def _plain(value: object) -> object:
    """json.dumps fallback for the Mapping and tuple kinds the walk accepted."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _path(parts: tuple[str, ...]) -> str:
    if not parts:
        return DOCUMENT
    shown = [field_part(part) for part in parts]
    text = "".join(part if part.startswith("[") else f".{part}" for part in shown).lstrip(".")
    return text if len(text) <= 200 else f"…{text[-199:]}"


def _invalid(message: str) -> NodeValidationError:
    return NodeValidationError([Problem(DOCUMENT, MISSING, message)])


def _kind(value: object) -> str:
    """What ``value`` is, with its article: "an array", "a number", "a Python set"."""
    names = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return names.get(type(value), f"a Python {type(value).__name__}")
