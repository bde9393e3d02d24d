"""Prompts from LLMs: user_query templates (a jinja2 sandbox), upstream values picked and
cleaned, and the prompt step's node inputs and text models."""

from __future__ import annotations

import inspect
import json
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from contract import templates
from contract.catalog import load_catalog
from contract.errors import NodeValidationError
from contract.node import validate_node
from contract.prompt_text import (
    UpstreamValueError,
    check_prompt_path,
    clean_llm_text,
    describe,
    prompt_from_upstream,
)
from contract.settings import Settings
from contract.templates import MAX_NESTING, TemplateProblem, placeholders, render_prompt

CTX = {"llm_1": {"text": "a red fox in the snow"}, "topic": "winter"}


def render(template: str, context: dict[str, Any] | None = None, cap: int = 500) -> str:
    return render_prompt(template, CTX if context is None else context, cap)


# --- templates ---------------------------------------------------------------


def test_placeholders_are_filled_from_the_context() -> None:
    assert render("poster of {{ llm_1.text }}, {{ topic | upper }}") == "poster of a red fox in the snow, WINTER"
    assert placeholders("{{ llm_1.text }} and {{ topic }}") == {"llm_1", "topic"}


def test_a_missing_placeholder_is_named() -> None:
    with pytest.raises(TemplateProblem, match="'llm_2'") as caught:
        render("poster of {{ llm_2.text }}")
    assert "context keys: llm_1, topic" in str(caught.value)
    with pytest.raises(TemplateProblem, match="'summary'"):
        render("poster of {{ llm_1.summary }}")


def test_context_values_are_data_never_templates() -> None:
    sneaky = {"llm_1": {"text": "{{ 7 * 7 }} {% for x in y %}"}}
    assert render("{{ llm_1.text }}", sneaky) == "{{ 7 * 7 }} {% for x in y %}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "value is null, not text"),
        ({"choices": [{"message": "a lighthouse"}]}, "value is a dict with 1 key(s), not text"),
        (["a", "b"], "value is a list of 2 item(s), not text"),
    ],
)
def test_a_null_or_a_structure_is_not_printed_into_the_prompt(value: Any, message: str) -> None:
    """Printed, they would become "A poster of None" or a Python dict in a paid prompt."""
    for template in (
        "A poster of {{ llm_1.text }}",
        "A poster of {{ llm_1.text | string }}",
        "A poster of {{ llm_1.text ~ '' }}",  # ~ had printed None or the dict
    ):
        with pytest.raises(TemplateProblem, match=message.replace("(", r"\(").replace(")", r"\)")):
            render_prompt(template, {"llm_1": {"text": value}}, 1000)
    # Tested, defaulted or picked, they are fine.
    template = "{% if llm_1.text %}{{ llm_1.text }}{% else %}a lighthouse{% endif %}, {{ n | default('x') }}"
    assert render_prompt(template, {"llm_1": {"text": None}, "n": 3}, 1000) == "a lighthouse, 3"
    # The advice the error gives works for a null.
    assert render_prompt('{{ t | default("a fox", true) }}', {"t": None}, 1000) == "a fox"


@pytest.mark.parametrize(
    ("template", "kind"),
    [
        ("{{ a.upper }}", "builtin_function_or_method"),
        ("{{ a.format }}", "function"),
        ("A poster of {{ llm_1.items }}", "builtin_function_or_method"),  # the dict's method, not a field
        ("{{ a.upper ~ '' }}", "builtin_function_or_method"),
        ("{{ a.upper | string }}", "builtin_function_or_method"),
    ],
)
def test_a_method_is_not_printed_into_the_prompt(template: str, kind: str) -> None:
    """Printed, a method's repr put a memory address of the process into a paid prompt."""
    with pytest.raises(TemplateProblem, match=f"value is a {kind}, not text") as refused:
        render_prompt(template, {"a": "hi", "llm_1": {"text": "x"}}, 1000)
    assert "0x" not in str(refused.value)
    assert render_prompt("{{ a }} {{ n }} {{ f }} {{ b }}", {"a": "hi", "n": 3, "f": 1.5, "b": True}, 100) == (
        "hi 3 1.5 True"
    )


def test_plain_text_is_left_as_written() -> None:
    assert render("a girl driving a red car\n", {}) == "a girl driving a red car\n"


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{{ llm_1.__class__.__mro__ }}", "sandbox"),
        ("{{ topic.__class__ }}", "sandbox"),
        ("{{ 'x' * 100000000 }}", "building a value past 10000 characters"),
        ("{{ [1] * 100000000 }}", "building a value past 10000 characters"),
        # A 45-character template that had built 2 GB before the prompt cap was checked: a list is
        # weighed by its items' lengths, and join, + and * are all bounded.
        ('{{ ([(["a"*10000]*10000)|join]*20) | join }}', "building a value past 10000 characters"),
        ('{{ (["a"*9000] + ["b"*9000]) | join }}', "building a value past 10000 characters"),
        ('{{ "a"*6000 + "b"*6000 }}', "building a value past 10000 characters"),
        ("{{ 9 ** 99999999 }}", "the ** operator"),
        ("{{ '%0999999999d' % 1 }}", "the % operator"),  # a 1 GB string from a 20-character template
        ("{{ range(10) }}", "a function or method call"),
        ("{{ lipsum(1000) }}", "a function or method call"),
        ("{{ topic.center(1000000000) }}", "a function or method call"),
        ("{{ topic | center(100000000) }}", "No filter named 'center'"),
        ("{{ topic | replace('', topic) }}", "No filter named 'replace'"),
        ("{{ topic.upper.__globals__ }}", "'__globals__'"),
        ("{% for a in 'abcdefghij' %}{{ llm_1.text }}{% endfor %}", "a {% for %} loop (line 1)"),
        # Loops that print nothing never reach the output cap: ~10^12 steps from 108 characters.
        (
            '{% set s = "x" * 9999 %}{% for a in s %}{% for b in s %}{% for c in s %}'
            "{% endfor %}{% endfor %}{% endfor %}x",
            "{% set %}",
        ),
        ("{% macro m() %}{{ caller() }}{% endmacro %}", "{% macro %}"),
        ("{% with x = topic %}{{ x }}{% endwith %}", "{% with %}"),
        ("{% filter upper %}{{ topic }}{% endfilter %}", "{% filter %}"),
        ("{% include 'x' %}", "a Include construct"),
        ("{{ topic", "not a valid template"),
    ],
)
def test_hostile_templates_are_refused(template: str, why: str) -> None:
    with pytest.raises(TemplateProblem) as caught:
        render(template)
    assert why in str(caught.value)


def test_join_prints_only_text_and_keeps_its_attribute_form() -> None:
    assert render("{{ xs | join(', ') }}", {"xs": ["red", "blue", 3]}) == "red, blue, 3"
    assert render("{{ xs | join(', ', attribute='name') }}", {"xs": [{"name": "a"}, {"name": "b"}]}) == "a, b"
    assert render('{{ "ab" * 3 }} {{ 2 + 3 }} {{ ([1] + [2]) | length }}', {}) == "ababab 5 2"
    for items in ([None, "x"], [{"a": 1}], [[1, 2]]):  # printed as None / a dict before
        with pytest.raises(TemplateProblem, match="not text"):
            render("{{ xs | join(', ') }}", {"xs": items})


def test_expressions_and_if_are_what_a_template_may_hold() -> None:
    template = (
        "{% if topic == 'winter' and llm_1.text %}{{ llm_1.text | title }}{% else %}none{% endif %}, "
        "{{ topic ~ '!' if topic is defined else '' }} {{ (llm_1.text * 2)[:5] }} {{ [topic, 'x'] | join('+') }}"
    )
    assert render(template) == "A Red Fox In The Snow, winter! a red winter+x"


def test_a_long_prompt_renders_at_the_cap_and_no_further() -> None:
    with pytest.raises(TemplateProblem, match="more than 500 characters"):
        render("{{ llm_1.text * 30 }}")


def peak_bytes(work: Callable[[], object]) -> tuple[int, object]:
    """The most memory ``work`` held at once (tracemalloc), and what it returned or raised."""
    tracemalloc.start()
    try:
        try:
            outcome: object = work()
        except Exception as exc:
            outcome = exc
        return tracemalloc.get_traced_memory()[1], outcome
    finally:
        tracemalloc.stop()


MB = 1_000_000
BIG = {"a": "x" * 60_000, "b": "hi"}  # about what a 65,536-byte context allows


def test_a_chain_of_tildes_is_refused_before_it_is_built() -> None:
    """The review's repro: 1,991 operands of 60,000 characters had built a 120 MB string before
    the prompt cap refused it (the API process grew 100 -> 218 MB for one request)."""
    template = "{{ a" + " ~ a" * 1990 + " }}"
    assert len(template) <= 8000  # within the default prompt cap: nothing refuses it earlier
    peak, outcome = peak_bytes(lambda: render_prompt(template, BIG, 8000))
    assert isinstance(outcome, TemplateProblem)
    assert "building a value past 10000 characters is not allowed" in str(outcome)
    # Parsing and compiling an 8,000-character template costs ~15 MB under tracemalloc; joining cost 120.
    assert peak < 40 * MB, peak
    assert render_prompt("{{ b" + " ~ b" * 1990 + " }}", BIG, 8000) == "hi" * 1991  # short operands are fine


A100 = "a" + " ~ a" * 99  # 100 operands: 6 MB if joined unchecked


@pytest.mark.parametrize(
    ("template", "why", "unbounded"),
    [
        # Nested: every inner concatenation is bounded too, not only the outermost.
        ("{{ " + " ~ ".join([f"({A100})"] * 4) + " }}", "building a value past 10000", 400 * 60_000),
        ("{{ " + "(" * 15 + "a" + (" ~ a" * 10 + ")") * 15 + " }}", "building a value past 10000", 151 * 60_000),
        # Through filters, as a filter's argument, in an {% if %} test, in an inline if.
        ("{{ a|string" + " ~ a|string" * 99 + " }}", "building a value past 10000", 100 * 60_000),
        (f"{{{{ ({A100})|length }}}}", "building a value past 10000", 100 * 60_000),
        (f"{{{{ b|default({A100}, true) }}}}", "building a value past 10000", 100 * 60_000),
        (f"{{% if ({A100}) == b %}}x{{% endif %}}", "building a value past 10000", 100 * 60_000),
        (f"{{{{ ({A100}) if b else '' }}}}", "building a value past 10000", 100 * 60_000),
        (f"{{{{ [{A100}] | join }}}}", "building a value past 10000", 100 * 60_000),
        # A structure printed through ~ is refused as with {{ }} and string: not weighed as its repr.
        ("{{ [" + ", ".join(["a"] * 100) + "] ~ '' }}", "a list of 100 item(s), not text", 100 * 60_000),
        # A list of empty strings weighs its items: [""] * 10**8 had built 800 MB of pointers.
        ("{{ ([''] * 100000000) | length }}", "building a value past 10000", 800 * MB),
        ("{{ ([[]] * 100000000) | length }}", "building a value past 10000", 800 * MB),
        # What would keep values or accumulate output is refused before anything runs.
        (f"{{% set s = {A100} %}}{{{{ s ~ s }}}}", "{% set %}", 200 * 60_000),
        ("{% for i in range(2000) %}{{ a }}{% endfor %}", "a {% for %} loop", 2000 * 60_000),
        (f"{{% for i in [1, 2, 3] %}}{{{{ {A100} }}}}{{% endfor %}}", "a {% for %} loop", 300 * 60_000),
        (f"{{% macro m() %}}{{{{ {A100} }}}}{{% endmacro %}}{{{{ m() ~ m() }}}}", "{% macro %}", 200 * 60_000),
        (f"{{% filter upper %}}{{{{ {A100} }}}}{{% endfilter %}}", "{% filter %}", 100 * 60_000),
        # Output itself is streamed: 1,000 placeholders stop at the cap, not after 60 MB of pieces.
        ("{{ a }}" * 1000, "renders to more than 8000 characters", 1000 * 60_000),
        ("{% if b %}" + "{{ a }}" * 1000 + "{% endif %}", "renders to more than 8000 characters", 1000 * 60_000),
    ],
)
def test_values_and_output_cannot_grow_past_their_bounds(template: str, why: str, unbounded: int) -> None:
    peak, outcome = peak_bytes(lambda: render_prompt(template, BIG, 8000))
    assert isinstance(outcome, TemplateProblem), outcome
    assert why in str(outcome)
    # What rendering adds over parsing and compiling the same template with a 1-character ``a``: at
    # most a piece or two of output, far below what building the value or the output would hold.
    baseline, _ = peak_bytes(lambda: render_prompt(template, {"a": "x", "b": "hi"}, 8000))
    assert peak - baseline < 250_000, (peak, baseline)
    assert peak < unbounded // 4, (peak, unbounded)
    assert "xxxxxxxxxx" not in str(outcome)  # never the context's values


@pytest.mark.parametrize(
    ("template", "why"),
    [
        # jinja's truncate checks its arguments with assert: an AssertionError had become a 500.
        ("{{ topic|truncate(-1) }}", "calls truncate with a length that is not a whole number at least"),
        ("{{ topic|truncate(2) }}", "at least as long as its end (3 character(s))"),
        ("{{ topic|truncate(3, false, '...', -5) }}", "calls truncate with a leeway that is not a whole number"),
        ("{{ topic|truncate(10, end=5) }}", "calls truncate with an end that is not text"),
        # jinja's parser and code generator recurse ~11 Python frames a level: RecursionError before.
        ("{{ " + "(" * 90 + "topic" + ")" * 90 + " }}", "nests more than 20 levels deep"),
        ("{{ " + "-" * 400 + "1 }}", "nests more than 20 levels deep"),
        ("{{ " + "not " * 400 + "topic }}", "nests more than 20 levels deep"),
        ("{{ " + "topic if topic else " * 200 + "topic }}", "nests more than 20 levels deep"),  # SyntaxError
        ("{{ " + "[" * 90 + "topic" + "]" * 90 + " }}", "nests more than 20 levels deep"),
        ("{% if topic %}" * 150 + "x" + "{% endif %}" * 150, "nests more than 20 levels deep"),  # IndentationError
        # Chains parse in a loop but into one deep tree, which the code generator walks recursively.
        ("{{ " + "1 + " * 400 + "1 }}", "nests more than 20 levels deep"),
        ("{{ " + "topic and " * 400 + "topic }}", "nests more than 20 levels deep"),
        ("{{ topic" + "|upper" * 400 + " }}", "nests more than 20 levels deep"),
        ("{{ llm_1" + ".text" * 400 + " }}", "nests more than 20 levels deep"),
        ("{{ topic" + "[0]" * 400 + " }}", "nests more than 20 levels deep"),
        # Refused constructs nested deeply are refused the same way, not by a RecursionError.
        ("{% for x in y %}" * 200 + "{% endfor %}" * 200, "nests more than 20 levels deep"),
    ],
)
def test_templates_jinja_chokes_on_are_problems_on_the_field(
    seed_node: dict[str, Any], template: str, why: str
) -> None:
    with pytest.raises(TemplateProblem) as caught:
        render(template)
    assert why in str(caught.value)
    seed_node["inputs"]["user_query"] = template
    with pytest.raises(NodeValidationError) as node_error:
        validate_node(seed_node, Settings(), context=CTX)
    [problem] = node_error.value.problems
    assert problem.field == "inputs.user_query" and why in problem.message
    assert problem.value == (template if len(template) <= 64 else f"{template[:48]}… ({len(template)} characters)")
    assert "Error" not in problem.message and "Traceback" not in problem.message


def nested(kind: str, levels: int) -> str:
    """A template nesting ``levels`` levels of one construct."""
    return {
        "brackets": "{{ " + "(" * levels + "topic" + ")" * levels + " }}",
        "minus": "{{ " + "-" * levels + "1 }}",
        "not": "{{ " + "not " * levels + "topic }}",
        "inline if": "{{ " + "topic if topic else " * levels + "topic }}",
        "lists": "{{ " + "[" * (levels - 1) + "topic" + "]" * (levels - 1) + " }}",
        "ifs": "{% if topic %}" * levels + "x" + "{% endif %}" * levels,
        "plus chain": "{{ " + "1 + " * (levels - 1) + "1 }}",
        "filter chain": "{{ topic" + "|upper" * (levels - 1) + " }}",
        "attribute chain": "{{ topic" + ".x" * (levels - 1) + " }}",
    }[kind]


KINDS = ["brackets", "minus", "not", "inline if", "lists", "ifs", "plus chain", "filter chain", "attribute chain"]


def too_deep(template: str) -> bool:
    try:
        placeholders(template)
    except TemplateProblem as exc:
        return "nests more than" in str(exc)
    return False


@pytest.mark.parametrize("kind", KINDS)
def test_nesting_is_refused_past_the_limit_and_is_cheap_up_to_it(kind: str) -> None:
    """Well below what recursion allows: the deepest template allowed of each kind renders (or fails
    for its own reason) within 500 frames of the caller's stack; one level more is refused."""
    assert too_deep(nested(kind, MAX_NESTING + 1))
    deepest = max(n for n in range(1, MAX_NESTING + 1) if not too_deep(nested(kind, n)))
    assert deepest >= MAX_NESTING - 2  # a wrapper (a literal, a filter) may take a level or two
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 500)
    try:
        _, outcome = peak_bytes(lambda: render(nested(kind, deepest), {"topic": "a fox"}))
    finally:
        sys.setrecursionlimit(limit)
    # A RecursionError would have become "nests more than …" (or escaped as itself).
    assert isinstance(outcome, str) or (isinstance(outcome, TemplateProblem) and "nests" not in str(outcome)), outcome


def test_a_normal_template_is_well_inside_the_nesting_limit() -> None:
    template = (
        "{% if topic %}{% if llm_1.text %}{% if topic == 'winter' and not (llm_1.text | length) < 3 %}"
        "{{ ((llm_1.text | trim | truncate(12, true, '…', 0)) ~ ', ' ~ (topic | upper)) | title }} "
        "{{ -(2 + (3 * 4)) }} {{ [topic, 'x'] | join('+') }}"
        "{% endif %}{% endif %}{% endif %}"
    )
    assert render(template) == "A Red Fox I…, Winter -14 winter+x"


def test_an_unexpected_jinja_error_is_a_problem_without_its_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever else jinja raises is a TemplateProblem naming what failed, never the exception's
    text, which can quote internals."""

    def broken(value: Any) -> str:
        raise LookupError("/srv/app/secret.py internals")

    monkeypatch.setitem(templates._ENV.filters, "upper", broken)
    with pytest.raises(TemplateProblem) as caught:
        render("{{ topic | upper }}")
    assert str(caught.value) == (
        "cannot be rendered: jinja failed on it (LookupError); check the filters' arguments and the types "
        "of the values they are given"
    )

    def broken_parse(source: str) -> Any:
        raise AssertionError("/srv/app/secret.py internals")

    monkeypatch.setattr(templates._ENV, "parse", broken_parse)
    with pytest.raises(TemplateProblem, match=r"cannot be compiled: jinja failed on it \(AssertionError\)") as caught:
        placeholders("{{ topic }}")
    assert "secret" not in str(caught.value)


def test_the_rendered_prompt_is_what_the_node_validates_and_returns(seed_node: dict[str, Any]) -> None:
    seed_node["inputs"]["user_query"] = "poster of {{ llm_1.text }}"
    node = validate_node(seed_node, Settings(), context=CTX)
    assert node.inputs.user_query == "poster of a red fox in the snow"
    assert node.to_task_payload()["inputs"]["user_query"] == "poster of a red fox in the snow"


def test_a_template_error_is_a_node_problem_on_user_query(seed_node: dict[str, Any]) -> None:
    seed_node["inputs"]["user_query"] = "poster of {{ llm_2.text }}"
    with pytest.raises(NodeValidationError) as caught:
        validate_node(seed_node, Settings(), context=CTX)
    [problem] = caught.value.problems
    assert problem.field == "inputs.user_query" and "'llm_2'" in problem.message
    assert problem.value == "poster of {{ llm_2.text }}"


def test_the_rendered_prompt_obeys_the_prompt_cap(seed_node: dict[str, Any]) -> None:
    seed_node["inputs"]["user_query"] = "{{llm_1.text}}{{llm_1.text}}"
    with pytest.raises(NodeValidationError, match="more than 30 characters"):
        validate_node(seed_node, Settings(max_prompt_chars=30), context=CTX)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ("[1, 2]", "must be a JSON object"),
        ({"a": "x" * 70_000}, "65536 bytes"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_a_bad_context_is_refused_as_the_context(seed_node: dict[str, Any], context: Any, message: str) -> None:
    with pytest.raises(NodeValidationError) as caught:
        validate_node(seed_node, Settings(), context=context)
    assert all(p.field.startswith("context") for p in caught.value.problems)
    assert message in str(caught.value)


def test_without_a_context_braces_are_kept_as_written(seed_node: dict[str, Any]) -> None:
    seed_node["inputs"]["user_query"] = "a sign that reads {{ hello }}"
    assert validate_node(seed_node, Settings()).inputs.user_query == "a sign that reads {{ hello }}"


# --- upstream values -------------------------------------------------------------


def pick(value: object, prompt_from: str | None = None, max_chars: int = 100, max_bytes: int = 1000) -> str:
    return prompt_from_upstream(value, prompt_from, max_chars=max_chars, max_bytes=max_bytes)


def test_a_string_is_the_prompt_and_a_dict_field_is_picked_by_path() -> None:
    assert pick("  a red fox  ") == "a red fox"
    assert pick({"output": {"text": "a red fox"}}, "output.text") == "a red fox"
    assert pick(json.dumps({"output": {"text": "a red fox"}}), "output.text") == "a red fox"
    assert pick({"choices": [{"message": {"content": "a fox"}}]}, "choices.0.message.content") == "a fox"


@pytest.mark.parametrize(
    ("value", "prompt_from", "said"),
    [
        ("", None, "empty (a str of 0 characters"),
        ("  \n\t ", None, "a str of 5 characters, blank"),
        (None, None, "is None, not text"),
        (["a", "b"], None, "a list of 2 item(s), not text"),
        (42, None, "a value of type int"),
        ({"text": "a fox"}, None, "a dict with 1 key(s); name the field with prompt_from"),
        ({"output": {}}, "output.text", "output (a dict with 0 key(s)) has no field 'text'"),
        ({"output": ["x"]}, "output.text", "a list of 1 item(s), which has no field 'text'"),
        ({"output": {"text": 7}}, "output.text", "at 'output.text' is a value of type int, not text"),
        ("not json at all", "output.text", "a str of 15 characters that is not JSON"),
        ("x" * 200, None, "a str of 200 characters; at most 100"),
        ("x" * 100_000, None, "a str of 100000 characters"),
        ({"output": {"text": "x" * 5000}}, "output.text", "bytes); at most 1000"),
        ("a fox\x1b[31m at dusk\x07", None, "contains the control character U+001B at position 5"),
        ('{"output": {"text": "a fox"}}', None, "JSON text (a dict with 1 key(s)); name the field with prompt_from"),
        ('["a fox"]', None, "JSON text (a list of 1 item(s))"),
    ],
)
def test_bad_upstream_values_say_what_arrived_without_the_text(
    value: object, prompt_from: str | None, said: str
) -> None:
    with pytest.raises(UpstreamValueError) as caught:
        pick(value, prompt_from)
    message = str(caught.value)
    assert said in message
    assert "xxxxxxxxxx" not in message and "a fox" not in message  # never the upstream text


@pytest.mark.parametrize("path", ["", "a..b", "a b", "__class__.x" + ".y" * 20, "a/b", 7, "output.text\n"])
def test_prompt_from_must_be_a_plain_dotted_path(path: Any) -> None:
    with pytest.raises(UpstreamValueError, match="dotted path"):
        check_prompt_path(path)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("```\na red fox\n```", "a red fox"),
        ("```text\nPrompt: a red fox\n```\n", "a red fox"),
        ("~~~markdown\na red fox\n~~~", "a red fox"),
        ("Prompt: a red fox", "a red fox"),
        ("**Prompt:** a red fox", "a red fox"),
        ("image prompt:  a red fox", "a red fox"),
        # Nothing else is rewritten: inner fences, later labels, quotes stay.
        ("a fox ```code``` here", "a fox ```code``` here"),
        ("A fox. Prompt: keep", "A fox. Prompt: keep"),
        ('"a red fox"', '"a red fox"'),
        ("```\nfirst\n```\n```\nsecond\n```", "```\nfirst\n```\n```\nsecond\n```"[4:-4].strip()),
        # A model's Windows line ends are line breaks (a lone CR stays, and is refused as a control character).
        ("```text\r\na red fox\r\nat dusk\r\n```\r\n", "a red fox\nat dusk"),
        ("a\rb", "a\rb"),
    ],
)
def test_llm_output_cleaning_is_exactly_fences_and_the_label(raw: str, clean: str) -> None:
    assert clean_llm_text(raw) == clean


def test_describe_never_shows_content() -> None:
    assert describe("secret text") == "a str of 11 characters"
    assert describe({"k": "secret"}) == "a dict with 1 key(s)"
    assert describe(b"secret") == "bytes of 6 bytes"


# --- the prompt step's inputs ---------------------------------------------------


def test_prompt_step_inputs_are_validated_together(seed_node: dict[str, Any]) -> None:
    seed_node["inputs"].update(
        prompt_enhancement="Diversify", text_model="gemini_2_5_flash_lite", prompt_instructions="flat colours"
    )
    inputs = validate_node(seed_node, Settings()).inputs
    assert (inputs.prompt_enhancement, inputs.text_model, inputs.prompt_instructions) == (
        "diversify",
        "gemini_2_5_flash_lite",
        "flat colours",
    )


@pytest.mark.parametrize(
    ("inputs", "field", "message"),
    [
        ({"prompt_enhancement": "better"}, "inputs.prompt_enhancement", "off, enhance"),
        ({"prompt_enhancement": True}, "inputs.prompt_enhancement", "must be one of"),
        ({"prompt_enhancement": "enhance", "text_model": "gpt-4"}, "inputs.text_model", "gemini_2_5_flash"),
        ({"text_model": "gemini_2_5_flash"}, "inputs.text_model", "prompt_enhancement is off"),
        ({"prompt_instructions": "flat"}, "inputs.prompt_instructions", "prompt_enhancement is off"),
        ({"prompt_enhancement": "enhance", "prompt_instructions": ""}, "inputs.prompt_instructions", "empty"),
        ({"prompt_enhancement": "enhance", "prompt_instructions": "x" * 5000}, "inputs.prompt_instructions", "4000"),
        ({"prompt_enhancement": "enhance", "prompt_instructions": "a\x00b"}, "inputs.prompt_instructions", "U+0000"),
        ({"style_guide": "flat"}, "inputs.style_guide", "did you mean 'prompt_instructions'"),
    ],
)
def test_bad_prompt_step_inputs_name_the_field(
    seed_node: dict[str, Any], inputs: dict[str, Any], field: str, message: str
) -> None:
    seed_node["inputs"].update(inputs)
    with pytest.raises(NodeValidationError) as caught:
        validate_node(seed_node, Settings())
    assert [p.field for p in caught.value.problems] == [field]
    assert message in caught.value.problems[0].message


def test_a_model_whose_provider_has_no_default_text_model_needs_one(seed_node: dict[str, Any], tmp_path: Any) -> None:
    catalog = tmp_path / "catalog.json"
    entry = load_catalog().models["offline_preview"].model_dump(mode="json")
    catalog.write_text(json.dumps({"models": {"other": {**entry, "provider": "other"}}}))
    settings = Settings(model_catalog_file=str(catalog))
    seed_node["inputs"].update(model="other", size="1024x1024", prompt_enhancement="enhance")
    with pytest.raises(NodeValidationError) as caught:
        validate_node(seed_node, settings)
    [problem] = caught.value.problems
    assert problem.field == "inputs.text_model" and "is required for prompt_enhancement with other" in problem.message


def test_text_models_are_catalog_data_with_token_prices() -> None:
    catalog = load_catalog()
    flash = catalog.get_text("gemini_2_5_flash")
    assert flash is not None and flash.model_id == "gemini-2.5-flash"
    assert flash.cost_for(1_000_000, 0) == 0.30 and flash.cost_for(0, 1_000_000) == 2.50
    offline = catalog.get_text("offline_prompt_writer")
    assert offline is not None and offline.provider == "offline" and offline.cost_for(10**6, 10**6) == 0.0
    assert catalog.text_model_for("gemini_3_image", None) == "gemini_2_5_flash"
    assert catalog.text_model_for("offline_preview", None) == "offline_prompt_writer"
    assert catalog.text_model_for("offline_preview", "gemini_2_5_flash_lite") == "gemini_2_5_flash_lite"
    assert "gemini_2_5_flash" not in catalog.names()  # text models are not image models


def test_an_unpriced_text_model_costs_unknown_not_zero(tmp_path: Any) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"text_models": {"new_text": {"provider": "gemini", "model_id": "gemini-9"}}}))
    loaded = load_catalog(str(catalog))
    entry = loaded.get_text("new_text")
    assert entry is not None and entry.cost_for(100, 100) is None
    assert loaded.get_text("gemini_2_5_flash") is not None  # extended, not replaced


def test_a_default_text_model_must_exist(tmp_path: Any) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"default_text_models": {"gemini": "nope"}}))
    with pytest.raises(ValueError, match="nope"):
        load_catalog(str(catalog))
