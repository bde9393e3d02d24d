"""Prompts that come from a language model: picked out of an upstream value, cleaned, bounded.

An upstream LLM task (a Celery chain: ``chain(llm.s(...), client.signature(node))``)
hands the image job whatever it returned: a string, a dict, JSON text, or by
mistake ``None``, a list or a novel. ``prompt_from_upstream`` turns that into
one prompt or raises ``UpstreamValueError``, whose message says what arrived
(its type and length, never its text) and what was expected.

LLM output is messy in two known ways, and only these are rewritten
(``clean_llm_text``): the whole answer wrapped in a markdown code fence
(```` ```text ... ``` ````), and a leading ``Prompt:`` label (also ``**Prompt:**``).
Surrounding whitespace is trimmed. Nothing else is changed silently: an answer
that is empty after cleaning, or longer than the prompt cap, is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from contract.errors import ImageGenError

# A dotted path into the upstream value: "output.text", "choices.0.message.content".
_PATH = re.compile(r"[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,15}")
# The whole answer in one fence: ```, ```text, ```markdown ... ```, or the ~~~ form.
_FENCE = re.compile(r"\A(?P<fence>`{3,}|~{3,})[A-Za-z0-9_+-]*[ \t]*\n(?P<body>.*?)\n?(?P=fence)[ \t]*\Z", re.DOTALL)
_LABEL = re.compile(r"\A(?:\*\*|__)?\s*(?:image\s+)?prompt\s*:\s*(?:\*\*|__)?\s*", re.IGNORECASE)


class UpstreamValueError(ImageGenError, ValueError):
    """The upstream output cannot be a prompt; the message is safe to show (no upstream text in it)."""


def check_prompt_path(path: str) -> str:
    """``prompt_from`` as given by the engine: dotted segments of letters, digits, ``_`` and ``-``."""
    if not isinstance(path, str) or not _PATH.fullmatch(path):
        raise UpstreamValueError(
            "prompt_from must be a dotted path of up to 16 names of letters, digits, '_' or '-' "
            "(e.g. 'output.text' or 'choices.0.message.content')"
        )
    return path


def describe(value: object) -> str:
    """What arrived, for an error message: the type and the size, never the content."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, str):
        return f"a str of {len(value)} characters"
    if isinstance(value, bytes | bytearray):
        return f"{type(value).__name__} of {len(value)} bytes"
    if isinstance(value, Mapping):
        return f"a dict with {len(value)} key(s)"
    if isinstance(value, list | tuple):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    return f"a value of type {type(value).__name__}"


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc
_CONTROL_BUT_TAB_NEWLINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def control_character(text: str, *, multiline: bool) -> str | None:
    """What is wrong with ``text`` if it holds a control character (tab and newline are allowed
    when ``multiline``): the first one's code point and position, never the text; else None.
    The node's fields and an upstream task's prompt follow this one rule."""
    found = (_CONTROL_BUT_TAB_NEWLINE if multiline else _CONTROL).search(text)
    if found is None:
        return None
    allowed = "; only tab and newline are allowed" if multiline else ""
    return f"contains the control character U+{ord(found.group()):04X} at position {found.start()}{allowed}"


def clean_llm_text(text: str) -> str:
    """Trim, unwrap one surrounding code fence, drop one leading ``Prompt:`` label (documented above).
    Windows line ends become newlines: a model's CRLF is a line break, not a control character."""
    text = text.replace("\r\n", "\n").strip()
    fenced = _FENCE.match(text)
    if fenced is not None:
        text = fenced["body"].strip()
    return _LABEL.sub("", text, count=1).strip()


def prompt_from_upstream(value: object, prompt_from: str | None, *, max_chars: int, max_bytes: int) -> str:
    """The prompt in an upstream task's return value.

    ``value``: a string (the prompt, or JSON text when ``prompt_from`` is set), or a
    dict from which ``prompt_from`` picks the field. Its size is checked before any
    parsing or walking (``max_bytes`` of UTF-8 for text; a dict's compact JSON).
    The picked text is cleaned (``clean_llm_text``) and must be 1 to ``max_chars`` characters.
    """
    _check_size(value, max_bytes)
    if prompt_from is not None:
        check_prompt_path(prompt_from)
        if isinstance(value, str):
            value = _parse_json_text(value)
        value = _pick(value, prompt_from)
    elif isinstance(value, Mapping):
        raise UpstreamValueError(f"the upstream task returned {describe(value)}; name the field with prompt_from")
    elif isinstance(value, str) and isinstance(parsed := _json_structure(value), Mapping | list):
        # The same dict sent as JSON text would otherwise become the prompt, braces and all.
        raise UpstreamValueError(
            f"the upstream task returned JSON text ({describe(parsed)}); name the field with prompt_from"
        )
    if not isinstance(value, str):
        where = f" at {prompt_from!r}" if prompt_from else ""
        raise UpstreamValueError(f"the upstream value{where} is {describe(value)}, not text")
    prompt = clean_llm_text(value)
    if not prompt:
        raise UpstreamValueError(f"the upstream prompt is empty ({describe(value)}, blank after trimming)")
    if len(prompt) > max_chars:
        raise UpstreamValueError(f"the upstream prompt is {describe(prompt)}; at most {max_chars} are allowed")
    control = control_character(prompt, multiline=True)
    if control is not None:
        raise UpstreamValueError(f"the upstream prompt ({describe(prompt)}) {control}")
    return prompt


def _check_size(value: object, max_bytes: int) -> None:
    if isinstance(value, str):
        # A character is at most 4 UTF-8 bytes: the length bounds the encoding's cost.
        size = len(value) if len(value) > max_bytes else len(value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, Mapping | list | tuple):
        try:
            size = len(json.dumps(value, separators=(",", ":"), default=str).encode())
        except (ValueError, TypeError, RecursionError):
            raise UpstreamValueError(f"the upstream task returned {describe(value)} that is not JSON data") from None
    else:
        return  # None, numbers, bools: small, and refused below as not text
    if size > max_bytes:
        raise UpstreamValueError(f"the upstream task returned {describe(value)} ({size}+ bytes); at most {max_bytes}")


def _json_structure(text: str) -> object:
    """What ``text`` parses to when it looks like a JSON object or array, else None."""
    if text.lstrip()[:1] not in ("{", "["):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _parse_json_text(text: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise UpstreamValueError(
            f"prompt_from is set but the upstream value is {describe(text)} that is not JSON"
        ) from None


def _pick(value: object, path: str) -> object:
    here = value
    for depth, name in enumerate(path.split(".")):
        walked = ".".join(path.split(".")[:depth]) or "the upstream value"
        if isinstance(here, Mapping):
            if name not in here:
                raise UpstreamValueError(f"prompt_from {path!r}: {walked} ({describe(here)}) has no field {name!r}")
            here = here[name]
        elif isinstance(here, list) and name.isdigit():
            if int(name) >= len(here):
                raise UpstreamValueError(f"prompt_from {path!r}: {walked} is {describe(here)}; no item {name}")
            here = here[int(name)]
        else:
            raise UpstreamValueError(f"prompt_from {path!r}: {walked} is {describe(here)}, which has no field {name!r}")
    return here


def bounded_args_repr(value: Any) -> str:
    """What a log line may say about an upstream value: its shape only."""
    return f"<upstream {describe(value)}>"
