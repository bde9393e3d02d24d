"""``user_query`` templates: ``"a poster of {{ llm_1.text }}"`` filled from the engine's context.

The workflow engine passes a ``context`` mapping at submit (upstream nodes'
outputs); the template is rendered with jinja2's ``SandboxedEnvironment`` and
``StrictUndefined``, so a placeholder the context lacks is an error naming it,
not an empty string. Templates are written by tenants: the sandbox blocks
attribute tricks, the globals are emptied (no ``range``, ``lipsum``, ...), only
text filters are kept, ``*``, ``+`` and ``join`` cannot build big values (a
value's weight counts its items' lengths), and output stops at the prompt cap.
A template is expressions and ``{% if %}`` only (``_ALLOWED_NODES``): no loops,
``{% set %}``, macros, calls, ``**`` or ``%``, so rendering costs no more than
the template's and the context's length (a few nested loops that print nothing
would otherwise hold a thread for hours). Context values are data, never
templates: a ``{{`` inside an upstream answer is printed as it is.

Rendering happens once, in the producer; the worker receives the rendered prompt.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

from jinja2 import Environment, StrictUndefined, TemplateError, TemplateSyntaxError, meta, nodes, pass_environment
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.filters import make_attrgetter
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import missing

from contract.errors import excerpt
from contract.prompt_text import describe

# Filters that only reshape text: none can grow a value much beyond its input.
SAFE_FILTERS = (
    "capitalize",
    "default",
    "d",
    "first",
    "join",
    "last",
    "length",
    "lower",
    "string",
    "title",
    "trim",
    "truncate",
    "upper",
)
_MAX_BUILT_CHARS = 10_000  # "ab" * n, [x] * n, a + b, xs | join: refused past this

# What a prompt template may contain: each node is evaluated once, at bounded cost.
_ALLOWED_NODES: tuple[type[nodes.Node], ...] = (
    nodes.Template, nodes.Output, nodes.TemplateData, nodes.If,
    nodes.Name, nodes.Const, nodes.Getattr, nodes.Getitem, nodes.Slice,
    nodes.Filter, nodes.Test, nodes.Keyword, nodes.Concat, nodes.CondExpr,
    nodes.Compare, nodes.Operand, nodes.And, nodes.Or, nodes.Not, nodes.Neg, nodes.Pos,
    nodes.Add, nodes.Sub, nodes.Mul, nodes.Div, nodes.FloorDiv,
    nodes.List, nodes.Tuple, nodes.Dict, nodes.Pair,
)  # fmt: skip
_REFUSED_NAMES = {
    "For": "a {% for %} loop",
    "Assign": "{% set %}",
    "AssignBlock": "{% set %}",
    "Macro": "{% macro %}",
    "CallBlock": "{% call %}",
    "Call": "a function or method call",
    "Pow": "the ** operator",
    "Mod": "the % operator",
    "FilterBlock": "{% filter %}",
    "With": "{% with %}",
}


class TemplateProblem(ValueError):
    """Why a template cannot be rendered; the message names the placeholder, never the context's values."""


class _Undefined(StrictUndefined):
    """StrictUndefined whose message names the missing placeholder in the template's own terms."""

    @property
    def _undefined_message(self) -> str:
        name = self._undefined_name
        if self._undefined_obj is missing:
            return f"uses the placeholder {name!r}, which the context does not provide"
        owner = type(self._undefined_obj).__name__
        return f"uses the placeholder field {name!r}, which the context's {owner} does not have"


def _weight(value: Any, budget: int = _MAX_BUILT_CHARS + 1) -> int:
    """What a value weighs when printed or joined: a string's length, a list's or tuple's items'
    weights added up (``["a" * 10000] * 10000`` weighs 10**8, not 10,000), anything else 1.
    Counting stops once past ``budget``, so weighing costs no more than the cap."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, list | tuple):
        return 1
    total = 0
    for item in value:
        total += _weight(item, budget - total)
        if total > budget:
            break
    return total


class _Sandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "+"})

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "+":
            if isinstance(left, str | list | tuple) and _weight(left) + _weight(right) > _MAX_BUILT_CHARS:
                raise SecurityError(f"building a value past {_MAX_BUILT_CHARS} characters is not allowed")
            return operator.add(left, right)
        for sequence, count in ((left, right), (right, left)):
            repeats = isinstance(sequence, str | list | tuple) and isinstance(count, int)
            if repeats and _weight(sequence) * max(count, 0) > _MAX_BUILT_CHARS:
                raise SecurityError(f"building a value past {_MAX_BUILT_CHARS} characters is not allowed")
        return operator.mul(left, right)


@pass_environment
def _bounded_join(environment: Environment, value: Any, d: str = "", attribute: str | int | None = None) -> str:
    """jinja's ``join``, but each item must be text (as every placeholder: no ``None`` or dict
    printed into a prompt) and the result at most ``_MAX_BUILT_CHARS``: joining a list of big
    strings had built gigabytes before the prompt cap was ever checked."""
    items = list(value)
    if attribute is not None:
        get = make_attrgetter(environment, attribute)
        items = [get(item) for item in items]
    texts = [str(_as_text(item)) for item in items]
    if sum(map(len, texts)) + len(d) * max(len(texts) - 1, 0) > _MAX_BUILT_CHARS:
        raise SecurityError(f"building a value past {_MAX_BUILT_CHARS} characters is not allowed")
    return str(d).join(texts)


def _as_text(value: Any) -> Any:
    """Each ``{{ … }}`` output: text, a number or a boolean. A null or a structure would print as
    Python's ``None`` or ``{'choices': …}`` inside a paid prompt: refused, saying what came."""
    if value is None:
        raise TemplateProblem(
            "has a placeholder whose value is null, not text; give an optional one a default: "
            '{{ name | default("…", true) }}'
        )
    if isinstance(value, Mapping | list | tuple | set):
        raise TemplateProblem(
            f"has a placeholder whose value is {describe(value)}, not text; name the field that holds "
            "the text, e.g. {{ llm_1.text }}"
        )
    return value


def _environment() -> SandboxedEnvironment:
    env = _Sandbox(undefined=_Undefined, autoescape=False, keep_trailing_newline=True, finalize=_as_text)
    env.globals.clear()
    env.filters = {name: env.filters[name] for name in SAFE_FILTERS}
    env.filters["string"] = lambda value: str(_as_text(value))  # not a way round the check
    env.filters["join"] = _bounded_join
    return env


_ENV = _environment()


def placeholders(template: str) -> set[str]:
    """The top-level names a template uses (``llm_1`` for ``{{ llm_1.text }}``); TemplateProblem
    when it is not a template or uses more than expressions and ``{% if %}``."""
    try:
        tree = _ENV.parse(template)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"is not a valid template (line {exc.lineno}: {exc.message})") from None
    for node in (tree, *tree.find_all(nodes.Node)):
        if not isinstance(node, _ALLOWED_NODES):
            what = _REFUSED_NAMES.get(type(node).__name__, f"a {type(node).__name__} construct")
            raise TemplateProblem(
                f"uses {what} (line {node.lineno}); a prompt template may hold placeholders, filters and "
                "{% if %} only"
            )
    try:
        return set(meta.find_undeclared_variables(tree))  # compiles it: an unknown filter fails here
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"is not a valid template (line {exc.lineno}: {exc.message})") from None


def render_prompt(template: str, context: Mapping[str, Any], max_chars: int) -> str:
    """The rendered prompt, at most ``max_chars`` characters; ``TemplateProblem`` says why not."""
    if not isinstance(context, Mapping) or not all(isinstance(key, str) for key in context):
        raise TemplateProblem("needs a context that is a JSON object (string keys)")
    missing = sorted(placeholders(template) - set(context))
    if missing:
        known = ", ".join(sorted(context)[:20]) or "none"
        names = ", ".join(repr(name) for name in missing[:10])
        raise TemplateProblem(f"uses placeholder(s) {names} that the context does not provide; context keys: {known}")
    try:
        compiled = _ENV.from_string(template)
        pieces: list[str] = []
        length = 0
        for piece in compiled.generate(**context):  # streamed: rendering stops at the cap
            pieces.append(piece)
            length += len(piece)
            if length > max_chars:
                raise TemplateProblem(f"renders to more than {max_chars} characters (the prompt cap)")
    except TemplateProblem:
        raise
    except UndefinedError as exc:
        raise TemplateProblem(str(exc)) from None
    except SecurityError as exc:
        raise TemplateProblem(f"is refused by the template sandbox: {exc}") from None
    except TemplateError as exc:
        raise TemplateProblem(f"cannot be rendered: {excerpt(str(exc))}") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise TemplateProblem(f"cannot be rendered: {type(exc).__name__}: {excerpt(str(exc))}") from None
    return "".join(pieces)
