"""``user_query`` templates: ``"a poster of {{ llm_1.text }}"`` filled from the engine's context.

The workflow engine passes a ``context`` mapping at submit (upstream nodes'
outputs); the template is rendered with jinja2's ``SandboxedEnvironment`` and
``StrictUndefined``, so a placeholder the context lacks is an error naming it,
not an empty string. Templates are written by tenants: the sandbox blocks
attribute tricks, the globals are emptied (no ``range``, ``lipsum``, ...), only
text filters are kept, ``*``, ``+``, ``~`` and ``join`` cannot build big values (a
value's weight counts its items' lengths, each item at least 1), and output stops at
the prompt cap. A template nesting more than ``MAX_NESTING`` levels (brackets, unary
operators, chained operators, filters or attributes, ``{% if %}`` blocks) is refused
before jinja's recursive parser and compiler meet it, and whatever else jinja raises
on a tenant's template is a ``TemplateProblem``, never an unexpected exception.
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

from jinja2 import (
    Environment,
    StrictUndefined,
    TemplateError,
    TemplateSyntaxError,
    Undefined,
    meta,
    nodes,
    pass_environment,
)
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.filters import do_truncate, make_attrgetter
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
_MAX_BUILT_CHARS = 10_000  # "ab" * n, [x] * n, a + b, a ~ b, xs | join: refused past this
# Brackets, unary operators, inline ifs and {% if %} blocks inside one another (counted on the
# tokens, before parsing), and chained operators, filters and attributes (counted on the parsed
# tree, before compiling): jinja's parser and code generator recurse about 11 Python frames a level,
# and Python's compiler has its own limits, so 90 brackets or 400 "-" had raised RecursionError.
MAX_NESTING = 20

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
    weights added up (``["a" * 10000] * 10000`` weighs 10**8, not 10,000), each item at least 1
    (``[""] * 10**8`` is a list of 10**8 items, not nothing), anything else 1.
    Counting stops once past ``budget``, so weighing costs no more than the cap."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, list | tuple):
        return 1
    total = 0
    for item in value:
        total += max(_weight(item, budget - total), 1)
        if total > budget:
            break
    return total


def _too_big() -> SecurityError:
    return SecurityError(f"building a value past {_MAX_BUILT_CHARS} characters is not allowed")


class _CodeGenerator(CodeGenerator):
    """jinja's code generator, but ``a ~ b ~ …`` (a Concat node) calls ``_Sandbox.bounded_concat``
    instead of joining unchecked: ``{{ a ~ a ~ … }}`` had built 120 MB from an 8,000-character
    template before the prompt cap was checked. Constant folding is kept (``optimizeconst``): a
    concatenation of the template's own literals is no longer than the template."""

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Sandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "+"})
    code_generator_class = _CodeGenerator

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "+":
            if isinstance(left, str | list | tuple) and _weight(left) + _weight(right) > _MAX_BUILT_CHARS:
                raise _too_big()
            return operator.add(left, right)
        for sequence, count in ((left, right), (right, left)):
            repeats = isinstance(sequence, str | list | tuple) and isinstance(count, int)
            if repeats and _weight(sequence) * max(count, 0) > _MAX_BUILT_CHARS:
                raise _too_big()
        return operator.mul(left, right)

    def bounded_concat(self, values: tuple[Any, ...]) -> str:
        """``a ~ b ~ …``: each operand must be text (as ``string``: ``~`` is no way to print a
        null or a structure), and the result at most ``_MAX_BUILT_CHARS``, refused before it is
        joined. Every Concat, nested, in a filter's argument or an ``{% if %}`` test, comes here."""
        texts = [str(_as_text(value)) for value in values]  # a str is not copied; a number is short
        if sum(map(len, texts)) > _MAX_BUILT_CHARS:
            raise _too_big()
        return "".join(texts)


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
        raise _too_big()
    return str(d).join(texts)


@pass_environment
def _checked_truncate(
    environment: Environment,
    s: Any,
    length: Any = 255,
    killwords: Any = False,
    end: Any = "...",
    leeway: Any = None,
) -> str:
    """jinja's ``truncate``, whose own checks are ``assert`` statements (an AssertionError, or
    nothing under ``python -O``): the arguments are checked here, saying what is allowed, without
    echoing them (they may come from the context)."""
    if not isinstance(end, str):
        raise TemplateProblem("calls truncate with an end that is not text; end is the text appended, e.g. '...'")
    if isinstance(length, bool) or not isinstance(length, int) or length < len(end):
        raise TemplateProblem(
            f"calls truncate with a length that is not a whole number at least as long as its end "
            f"({len(end)} character(s)); e.g. truncate(200)"
        )
    if leeway is not None and (isinstance(leeway, bool) or not isinstance(leeway, int) or leeway < 0):
        raise TemplateProblem("calls truncate with a leeway that is not a whole number of 0 or more")
    return do_truncate(environment, s, length, killwords, end, leeway)


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
    if not isinstance(value, str | int | float | Undefined):  # bool is an int; JSON has no other value
        # ``{{ a.upper }}`` is the str's method: its repr would print a memory address into the prompt.
        raise TemplateProblem(
            f"has a placeholder whose value is a {type(value).__name__}, not text (a method of the value, not a "
            "field of it?); name the field that holds the text, e.g. {{ llm_1.text }}"
        )
    return value


def _environment() -> SandboxedEnvironment:
    env = _Sandbox(undefined=_Undefined, autoescape=False, keep_trailing_newline=True, finalize=_as_text)
    env.globals.clear()
    env.filters = {name: env.filters[name] for name in SAFE_FILTERS}
    env.filters["string"] = lambda value: str(_as_text(value))  # not a way round the check
    env.filters["join"] = _bounded_join
    env.filters["truncate"] = _checked_truncate
    return env


_ENV = _environment()


# Tokens after which "-" or "+" is binary (a value ends there); after anything else they are unary.
_VALUE_ENDS = frozenset({"name", "string", "integer", "float", "rparen", "rbracket", "rbrace"})
_WORD_OPERATORS = frozenset({"not", "and", "or", "in", "is", "if", "else"})  # names that end no value
_BLOCK_TAGS = frozenset({"if", "for", "macro", "call", "filter", "with", "block", "autoescape"})  # have an end tag
# Nodes that only wrap another (an {{ }} output, a comparison's operand, a keyword argument, a dict
# entry) do not count as a level of the parsed tree.
_WRAPPERS = (nodes.Template, nodes.Output, nodes.Operand, nodes.Keyword, nodes.Pair)


def _too_deep() -> TemplateProblem:
    return TemplateProblem(
        f"nests more than {MAX_NESTING} levels deep (brackets, unary operators, chained operators, filters "
        f"or attributes, {{% if %}} blocks inside one another); a prompt template may nest at most {MAX_NESTING}"
    )


def _check_nesting(template: str) -> None:
    """Refuse, before jinja parses it, a template whose parser would recurse past ``MAX_NESTING``
    levels: one pass over the lexer's tokens (the lexer does not recurse), counting open brackets,
    open block tags, and the unary operators (``-``, ``+``, ``not``) and inline ``if`` of each tag,
    the constructs jinja's parser descends into. A tag's unary operators are all counted, nested or
    not: an over-count, for which a real template has no use anyway."""
    brackets = blocks = prefixes = 0
    tag: str | None = None  # the block tag's name, "" until it is read
    assigns = False
    previous = ""
    for token in _ENV.lexer.tokenize(template):
        kind = token.type
        if kind in ("variable_begin", "block_begin"):
            prefixes, assigns = 0, False
            tag = "" if kind == "block_begin" else None
        elif kind == "block_end":
            if tag in _BLOCK_TAGS or (tag == "set" and not assigns):  # {% set x %}…{% endset %}
                blocks += 1
            elif tag is not None and tag.startswith("end"):
                blocks = max(blocks - 1, 0)
            tag = None
        elif kind == "name" and tag == "":
            tag = token.value
        elif kind in ("lparen", "lbracket", "lbrace"):
            brackets += 1
        elif kind in ("rparen", "rbracket", "rbrace"):
            brackets = max(brackets - 1, 0)
        elif (kind == "name" and token.value in ("not", "if")) or (
            kind in ("sub", "add") and previous not in _VALUE_ENDS
        ):
            prefixes += 1  # "not", an inline "if", a unary "-" or "+" (after a word operator, stored as itself)
        elif kind == "assign":
            assigns = True
        previous = token.value if kind == "name" and token.value in _WORD_OPERATORS else kind
        if brackets + blocks + prefixes > MAX_NESTING:
            raise _too_deep()


def _check_depth(tree: nodes.Template) -> None:
    """Refuse a parsed template whose tree is more than ``MAX_NESTING`` levels deep (``a + a + …``,
    ``a|upper|upper…``, ``a.b.b…`` parse in a loop into one deep tree, which jinja's code generator
    and Python's compiler walk recursively). Walked with a stack, not recursion."""
    stack: list[tuple[nodes.Node, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, _WRAPPERS):
            depth += 1
            if depth > MAX_NESTING:
                raise _too_deep()
        stack.extend((child, depth) for child in node.iter_child_nodes())


def _unexpected(exc: Exception, doing: str) -> TemplateProblem:
    """Anything jinja (or Python compiling jinja's code) raised that the module does not expect: a
    problem naming what failed, never the exception's text (it can quote jinja's internals)."""
    if isinstance(exc, RecursionError):
        return _too_deep()
    return TemplateProblem(
        f"cannot be {doing}: jinja failed on it ({type(exc).__name__}); check the filters' arguments and "
        "the types of the values they are given"
    )


def placeholders(template: str) -> set[str]:
    """The top-level names a template uses (``llm_1`` for ``{{ llm_1.text }}``); TemplateProblem
    when it is not a template, nests too deeply or uses more than expressions and ``{% if %}``."""
    try:
        return _placeholders(template)
    except TemplateProblem:
        raise
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"is not a valid template (line {exc.lineno}: {exc.message})") from None
    except MemoryError:
        raise  # the process's state, not this template's fault alone
    except Exception as exc:
        raise _unexpected(exc, "compiled") from None


def _placeholders(template: str) -> set[str]:
    _check_nesting(template)
    tree = _ENV.parse(template)
    _check_depth(tree)
    for node in (tree, *tree.find_all(nodes.Node)):
        if not isinstance(node, _ALLOWED_NODES):
            what = _REFUSED_NAMES.get(type(node).__name__, f"a {type(node).__name__} construct")
            raise TemplateProblem(
                f"uses {what} (line {node.lineno}); a prompt template may hold placeholders, filters and "
                "{% if %} only"
            )
    return set(meta.find_undeclared_variables(tree))  # compiles it: an unknown filter fails here


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
    except MemoryError:
        raise
    except Exception as exc:
        raise _unexpected(exc, "rendered") from None
    return "".join(pieces)
