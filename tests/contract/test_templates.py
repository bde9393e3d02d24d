"""Prompts from LLMs: user_query templates (a jinja2 sandbox), upstream values picked and
cleaned, and the prompt step's node inputs and text models."""

from __future__ import annotations

import json
from typing import Any

import pytest

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
from contract.templates import TemplateProblem, placeholders, render_prompt

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
    for template in ("A poster of {{ llm_1.text }}", "A poster of {{ llm_1.text | string }}"):
        with pytest.raises(TemplateProblem, match=message.replace("(", r"\(").replace(")", r"\)")):
            render_prompt(template, {"llm_1": {"text": value}}, 1000)
    # Tested, defaulted or picked, they are fine.
    template = "{% if llm_1.text %}{{ llm_1.text }}{% else %}a lighthouse{% endif %}, {{ n | default('x') }}"
    assert render_prompt(template, {"llm_1": {"text": None}, "n": 3}, 1000) == "a lighthouse, 3"
    # The advice the error gives works for a null.
    assert render_prompt('{{ t | default("a fox", true) }}', {"t": None}, 1000) == "a fox"


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
