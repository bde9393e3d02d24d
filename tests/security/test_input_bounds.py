"""Hostile node documents and job ids: each is refused with a short, clear
NodeValidationError (or exit code 2), never a traceback, a hang, or an echo of
the attacker's megabytes."""

from __future__ import annotations

import copy
import json
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from contract.documents import MAX_DEPTH
from contract.errors import MISSING, ImageGenError, NodeValidationError, Problem, excerpt
from contract.job_ids import MAX_JOB_ID_CHARS, check_job_id, check_new_job_id, is_job_id, is_new_job_id
from contract.node import SEED_LIMIT, validate_node
from contract.queue import GENERATE_VARIATION
from contract.settings import Settings, get_settings
from contract.work import VariationWork
from producer import cli
from producer.client import ImageGenClient
from tests.cli import imagegen
from tests.conftest import StartWorker, request_keys

TEN_MB = 10 * 1024 * 1024
SHORT = 2048  # an error about any one value fits in a couple of KB


@pytest.fixture
def node(offline_node: dict[str, Any]) -> dict[str, Any]:
    return offline_node


def with_inputs(node: dict[str, Any], **inputs: Any) -> dict[str, Any]:
    changed = copy.deepcopy(node)
    changed["inputs"].update(inputs)
    return changed


def refused(document: object, settings: Settings | None = None) -> NodeValidationError:
    with pytest.raises(NodeValidationError) as caught:
        validate_node(document, settings or Settings())  # type: ignore[arg-type]  # any object, on purpose
    error = caught.value
    assert len(str(error)) < SHORT and len(json.dumps(error.as_dicts())) < SHORT
    return error


def fields(error: NodeValidationError) -> dict[str, str]:
    return {p.field: str(p) for p in error.problems}


# --- excerpts -----------------------------------------------------------------


def test_excerpt_keeps_short_values_and_summarises_long_ones() -> None:
    assert excerpt("short") == "short" and excerpt(7) == 7 and excerpt([1, 2]) == [1, 2] and excerpt(None) is None
    long = excerpt("x" * TEN_MB)
    assert long == "x" * 48 + f"… ({TEN_MB} characters)"
    assert excerpt(long) == long  # excerpting twice changes nothing
    assert excerpt(list(range(1000))) == "a list of 1000 items"
    assert excerpt({f"k{i}": "v" * 10 for i in range(10)}) == "an object with 10 keys"
    assert excerpt(10**5000) == "an integer of 5001 digits"  # no int-to-str conversion, no limit error
    assert excerpt(-(10**64)) == "a negative integer of 65 digits"
    assert excerpt(MISSING) is MISSING


def test_excerpt_of_deep_cyclic_or_odd_values_is_bounded() -> None:
    deep: list[Any] = []
    cursor = deep
    for _ in range(100_000):
        cursor.append([])
        cursor = cursor[0]
    assert excerpt(deep) == "a list of 1 item"
    cycle: list[Any] = []
    cycle.append(cycle)
    assert excerpt(cycle) == "a list of 1 item"
    assert excerpt(object()) == "a value of type object"
    assert excerpt(b"x" * 1000) == "1000 bytes"


def test_every_problem_value_is_an_excerpt_whoever_builds_it() -> None:
    problem = Problem("inputs.user_query", "p" * TEN_MB, "is too long")
    assert len(str(problem)) < 200 and f"({TEN_MB} characters)" in str(problem)
    assert issubclass(NodeValidationError, ImageGenError) and issubclass(NodeValidationError, ValueError)


def test_control_characters_in_a_quoted_value_are_escaped() -> None:
    text = str(Problem("name", "a\nERROR forged\x1b[31m\x9b\u202e", "bad"))
    assert "\n" not in text and "\x1b" not in text and "\x9b" not in text and "\u202e" not in text
    assert "\\n" in text and "\\u001b" in text


# --- size: 10 MB fields and documents -----------------------------------------------


@pytest.mark.parametrize("field", ["name", "description", "user_query"])
@pytest.mark.parametrize("form", ["dict", "text", "bytes"])
def test_a_10_mb_field_is_refused_by_the_document_size(node: dict[str, Any], field: str, form: str) -> None:
    huge = "x" * TEN_MB
    document = with_inputs(node, user_query=huge) if field == "user_query" else {**node, field: huge}
    given: object = {"dict": document, "text": json.dumps(document), "bytes": json.dumps(document).encode()}[form]
    error = refused(given)
    assert list(fields(error)) == ["(document)"]
    assert "at most 65536 bytes" in str(error) and "IMAGEGEN_MAX_NODE_BYTES" in str(error)
    assert "xxxxxxxxxx" not in str(error)


@pytest.mark.parametrize(
    ("field", "limit"), [("name", 200), ("description", 2000), ("output_type", 32), ("user_query", 8000)]
)
def test_field_caps_quote_only_an_excerpt(node: dict[str, Any], field: str, limit: int) -> None:
    roomy = Settings(max_node_bytes=16 * 1024 * 1024)  # past the document cap, the field's own cap answers
    huge = "y" * TEN_MB
    document = with_inputs(node, user_query=huge) if field == "user_query" else {**node, field: huge}
    found = fields(refused(document, roomy))
    key = f"inputs.{field}" if field == "user_query" else field
    assert f"({TEN_MB} characters)" in found[key] and f"at most {limit} are allowed" in found[key]
    assert "y" * 49 not in found[key]


@pytest.mark.parametrize(
    ("field", "limit"), [("name", 200), ("description", 2000), ("output_type", 32), ("user_query", 8000)]
)
def test_field_caps_are_exact(node: dict[str, Any], field: str, limit: int) -> None:
    def document(length: int) -> dict[str, Any]:
        return with_inputs(node, user_query="q" * length) if field == "user_query" else {**node, field: "q" * length}

    assert validate_node(document(limit), Settings())
    key = f"inputs.{field}" if field == "user_query" else field
    assert f"is {limit + 1} characters" in fields(refused(document(limit + 1)))[key]


def test_the_document_cap_is_a_setting_measured_in_utf8_bytes(
    node: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEGEN_MAX_NODE_BYTES", "2048")
    small = Settings()
    assert small.max_node_bytes == 2048
    fits = {**node, "description": "é" * 700}  # 1,400 bytes of UTF-8
    assert validate_node(fits, small)
    over = {**node, "description": "é" * 1000}  # 1,000 characters, 2,000+ bytes
    assert "at most 2048 bytes" in str(refused(json.dumps(over, ensure_ascii=False), small))
    assert "at most 2048 bytes" in str(refused(over, small))
    many = {**node, "canvas": [0] * 2000}  # small values, a large document
    assert "at most 2048 bytes" in str(refused(many, small))


def test_thousands_of_unknown_keys_give_a_bounded_report(node: dict[str, Any]) -> None:
    error = refused_any(with_inputs(node, **{f"field_{i}": 1 for i in range(3000)}))
    assert len(error.problems) <= 20 and "more problems, not listed" in str(error.problems[-1])


def refused_any(document: object) -> NodeValidationError:
    """Like ``refused`` for errors that list many problems (each short)."""
    with pytest.raises(NodeValidationError) as caught:
        validate_node(document, Settings())  # type: ignore[arg-type]
    assert len(str(caught.value)) < 20 * 400
    return caught.value


def test_a_huge_unknown_key_is_quoted_as_an_excerpt(node: dict[str, Any]) -> None:
    key = "k" * 50_000
    found = fields(refused(with_inputs(node, **{key: 1})))
    (field,) = found
    assert field.startswith("inputs.kkkk") and "(50000 characters)" in field and len(field) < 100


# --- nesting ----------------------------------------------------------------------


@pytest.mark.parametrize("roomy", [False, True])
def test_100k_deep_text_is_refused_before_parsing(roomy: bool) -> None:
    settings = Settings(max_node_bytes=1024 * 1024) if roomy else Settings()
    for text in ("[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000):
        error = refused(text, settings)
        assert (f"more than {MAX_DEPTH} deep" if roomy else "IMAGEGEN_MAX_NODE_BYTES") in str(error)
    wrapped = '{"type":"image_generation","inputs":{"x":' + "[" * 100_000 + "]" * 100_000 + "}}"
    assert f"more than {MAX_DEPTH} deep" in str(refused(wrapped, Settings(max_node_bytes=1024 * 1024)))


def test_100k_deep_dicts_and_lists_are_refused_without_recursion(node: dict[str, Any]) -> None:
    deep_dict: dict[str, Any] = {}
    cursor: Any = deep_dict
    for _ in range(100_000):
        cursor["a"] = {}
        cursor = cursor["a"]
    assert f"more than {MAX_DEPTH} deep" in str(refused(deep_dict))
    deep_list: list[Any] = []
    cursor = deep_list
    for _ in range(100_000):
        cursor.append([])
        cursor = cursor[0]
    error = refused(with_inputs(node, canvas=deep_list))
    assert f"more than {MAX_DEPTH} deep" in str(error) and "inputs.canvas[0][0]" in str(error)


def test_nesting_up_to_the_limit_is_accepted(node: dict[str, Any]) -> None:
    def nested(levels: int) -> Any:  # the node itself is level 1, "canvas" level 2...
        value: Any = 0
        for _ in range(levels - 1):
            value = [value]
        return value

    assert validate_node(json.dumps({**node, "canvas": nested(MAX_DEPTH)}), Settings())
    assert validate_node({**node, "canvas": nested(MAX_DEPTH)}, Settings())
    assert "deep" in str(refused(json.dumps({**node, "canvas": nested(MAX_DEPTH + 1)})))
    assert "deep" in str(refused({**node, "canvas": nested(MAX_DEPTH + 1)}))


def test_brackets_inside_strings_do_not_count_as_nesting(node: dict[str, Any]) -> None:
    prompt = '[[[[{{{{"\\"' * 100
    assert validate_node(json.dumps(with_inputs(node, user_query=prompt)), Settings()).inputs.user_query == prompt


# --- numbers ----------------------------------------------------------------------


def test_a_5000_digit_integer_is_refused_before_conversion(node: dict[str, Any]) -> None:
    digits = "9" * 5000
    text = json.dumps(with_inputs(node, seed=0)).replace('"seed": 0', f'"seed": {digits}')
    error = refused(text)
    assert "below 2**63" in str(error) and "(5000 characters)" in str(error)
    assert "below 2**63" in str(refused(with_inputs(node, seed=10**5000)))  # a Python int, from a dict
    assert "below 2**63" in str(refused(json.dumps(node).replace("{", '{"canvas": -' + digits + ",", 1)))


@pytest.mark.parametrize("number", ["1e999", "-1e999", "1e300", "9223372036854775808", "-9223372036854775808"])
def test_numbers_out_of_range_are_refused(node: dict[str, Any], number: str) -> None:
    assert "below 2**63" in str(refused(json.dumps(node).replace("{", f'{{"canvas": {number},', 1)))


def test_inputs_that_are_not_an_object_say_so_in_json_terms(node: dict[str, Any]) -> None:
    [problem] = refused({**node, "inputs": [1, 2]}).problems
    assert (problem.field, problem.message) == ("inputs", "must be a JSON object {...}")


@pytest.mark.parametrize("number", ["123456789012345678901234567890", "1e999", "-9223372036854775808"])
def test_a_number_out_of_range_in_json_text_is_named_by_its_field(node: dict[str, Any], number: str) -> None:
    text = json.dumps(with_inputs(node, seed=0)).replace('"seed": 0', f'"seed": {number}')
    [problem] = refused(text).problems
    assert problem.field == "inputs.seed" and "below 2**63" in problem.message


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(node: dict[str, Any], constant: str) -> None:
    assert "not JSON" in str(refused(json.dumps(node).replace("{", f'{{"canvas": {constant},', 1)))
    as_float = float(constant.replace("Infinity", "inf"))
    assert "finite" in str(refused(with_inputs(node, seed=as_float)))


@pytest.mark.parametrize(
    ("seed", "ok"),
    [(0, True), (7, True), ("7", True), (SEED_LIMIT - 8, True), (SEED_LIMIT - 7, False), (SEED_LIMIT, False),
     (2**31, False), (-1, False), (True, False), ("7.5", False), ("1" * 40, False), (1.5, False), ([7], False)],
)  # fmt: skip
def test_seed_is_a_32_bit_integer_leaving_room_for_every_variation(node: dict[str, Any], seed: Any, ok: bool) -> None:
    if ok:
        assert validate_node(with_inputs(node, seed=seed), Settings()).inputs.seed == int(seed)
    else:
        assert "inputs.seed" in fields(refused(with_inputs(node, seed=seed)))


# --- keys, encodings, types ---------------------------------------------------------


def test_duplicate_keys_are_refused_naming_key_and_path(node: dict[str, Any]) -> None:
    top = '{"type": "image_generation", "type": "image_generation", "inputs": {"user_query": "a", "model": "x"}}'
    assert "given more than once" in fields(refused(top))["type"]
    inner = json.dumps(node).replace('"model":', '"model": "gemini_3_image", "model":')
    assert "given more than once" in fields(refused(inner))["inputs.model"]


def test_invalid_utf8_and_lone_surrogates_are_refused(node: dict[str, Any]) -> None:
    text = json.dumps(node)
    assert "UTF-8" in str(refused(text.encode().replace(b"a girl", b"a \xff\xfe girl")))
    assert "UTF-8" in str(refused(b"\xc3"))
    assert "lone surrogate" in str(refused(text.replace("a girl", "a \\ud800 girl")))
    assert "lone surrogate" in str(refused(text.replace("a girl", "a \ud800 girl")))
    assert "Unicode" in str(refused(with_inputs(node, user_query="a \udfff girl")))


@pytest.mark.parametrize(
    "document",
    ["[1, 2]", "42", '"a string"', "null", "true", "", "{", b"", b"[]", [1, 2], (1,), 42, 1.5, None, True,
     object(), {1, 2}, frozenset(), b"\x00" * 10, Exception("x"), type],
)  # fmt: skip
def test_documents_that_are_not_json_objects(document: object) -> None:
    assert list(fields(refused(document))) == ["(document)"]


class _HostileMapping(dict[str, Any]):
    def items(self) -> Any:
        raise RuntimeError("boom")


class _Shouty(str):
    def __len__(self) -> int:
        raise RuntimeError("no len for you")


@pytest.mark.parametrize(
    "make",
    [
        lambda node: _HostileMapping(node),
        lambda node: {**node, "canvas": {1, 2}},
        lambda node: {**node, "canvas": b"bytes"},
        lambda node: {**node, "canvas": uuid.uuid4()},
        lambda node: {**node, (1, 2): "tuple key"},
        lambda node: {**node, 3: "int key"},
        lambda node: with_inputs(node, model=float("nan")),
    ],
)
def test_python_objects_that_are_not_json_are_refused(node: dict[str, Any], make: Any) -> None:
    refused(make(node))


def test_cycles_are_refused(node: dict[str, Any]) -> None:
    cyclic = copy.deepcopy(node)
    cyclic["inputs"]["canvas"] = cyclic
    assert "cycle" in str(refused(cyclic))


def test_shared_subtrees_cannot_multiply_the_size(node: dict[str, Any]) -> None:
    bomb: Any = ["x" * 100]
    for _ in range(25):
        bomb = [bomb, bomb]  # 2**25 leaves as JSON, a few dozen objects in memory
    assert "IMAGEGEN_MAX_NODE_BYTES" in str(refused({**node, "canvas": bomb}))


def test_str_subclasses_are_read_as_plain_strings(node: dict[str, Any]) -> None:
    assert validate_node({**node, "name": _Shouty("shouty")}, Settings()).name == "shouty"


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", [1, 2]), ("name", {"a": 1}), ("name", 5), ("description", []), ("type", ["image_generation"]),
     ("inputs", []), ("inputs", "user_query"), ("inputs.model", {"a": 1}), ("inputs.model", []),
     ("inputs.user_query", 5), ("inputs.user_query", None), ("inputs.variations", []), ("inputs.size", [1024]),
     ("inputs.use_cloud", []), ("inputs.cloud_provider", ["aws"]), ("inputs.cloud_provider", {"aws": 1}),
     ("inputs.seed", {})],
)  # fmt: skip
def test_type_confusions_are_problems_not_tracebacks(node: dict[str, Any], field: str, value: Any) -> None:
    document = copy.deepcopy(node)
    if field.startswith("inputs."):
        document["inputs"][field.removeprefix("inputs.")] = value
    else:
        document[field] = value
    assert field in fields(refused(document))


def test_type_confusions_with_use_cloud_on(node: dict[str, Any]) -> None:
    for provider in (["aws"], {"a": 1}, 5, "nope"):
        assert "inputs.cloud_provider" in fields(refused(with_inputs(node, use_cloud=True, cloud_provider=provider)))


@pytest.mark.parametrize("name", ["a\nb", "a\tb", "a\rb", "a\x00b", "a\x1b[31mb", "a\x85b", "a\x7fb"])
def test_control_characters_are_refused_in_the_name(node: dict[str, Any], name: str) -> None:
    assert "control character" in fields(refused({**node, "name": name}))["name"]


def test_tab_and_newline_are_the_only_control_characters_in_prompt_and_description(node: dict[str, Any]) -> None:
    ok = validate_node({**with_inputs(node, user_query="line 1\n\tline 2"), "description": "a\nb\tc"}, Settings())
    assert ok.inputs.user_query == "line 1\n\tline 2"
    for bad in ("a\rb", "a\x1bb", "a\x00b", "a\x9bb"):
        assert "control character" in fields(refused(with_inputs(node, user_query=bad)))["inputs.user_query"]
        assert "control character" in fields(refused({**node, "description": bad}))["description"]


# --- job ids ----------------------------------------------------------------------------

INVALID_JOB_IDS = [
    "", "../x", "x/..", "a/../b", "/abs", "abs/", "a//b", "a/./b", ".", "..", "a\nb", "a\rb", "a\x00b", "a:b",
    "imagegen:job:x", "a@1", "a b", "a\\b", "a%2Fb", "x" * (MAX_JOB_ID_CHARS + 1),
    "\u0430bc",  # Cyrillic a
    "run\u201042",  # Unicode hyphen
    "\uff52un-42",  # fullwidth r
    "run\u200b42",  # zero-width space
    "1\u0662",  # Arabic-Indic digit
    "caf\u00e9",
]  # fmt: skip
# "t" begins a tenant's namespace, and only a new job's id's start: these would write into acme's.
NOT_NEW_JOB_IDS = ["run-1/t/acme/x", "t/acme", "t", "a/t"]
VALID_JOB_IDS = [
    "run-42/node-7",
    "1a312d65-ada8-41a8-ac78-7ef4699b0272",
    "a",
    "x" * MAX_JOB_ID_CHARS,
    "a.b_c-D9",
    "...",
    "a/b/c/d",
    "t/acme/x",  # a tenant's job (the HTTP API's ids)
    "t/acme/t/globex/x",  # ... whose own id starts with t/: still acme's first
]


@pytest.mark.parametrize("job_id", INVALID_JOB_IDS)
def test_invalid_job_ids_are_refused(job_id: str) -> None:
    with pytest.raises(NodeValidationError) as caught:
        check_job_id(job_id)
    (problem,) = caught.value.problems
    assert problem.field == "job_id" and "run-42/node-7" in problem.message and not is_job_id(job_id)
    assert str(caught.value).count("\n") == 1  # a header and one problem line: nothing forged


@pytest.mark.parametrize("job_id", VALID_JOB_IDS)
def test_valid_job_ids_are_returned(job_id: str) -> None:
    assert check_job_id(job_id) == job_id and is_job_id(job_id)
    assert check_new_job_id(job_id) == job_id and is_new_job_id(job_id)


@pytest.mark.parametrize("job_id", NOT_NEW_JOB_IDS)
def test_no_new_job_takes_a_tenant_namespace_it_does_not_begin_with(job_id: str) -> None:
    with pytest.raises(NodeValidationError) as caught:
        check_new_job_id(job_id)
    assert "a segment 't' only begins an id, as t/<tenant>/<id>" in str(caught.value)
    assert not is_new_job_id(job_id)
    # A job submitted before the rule is still read, canceled and ended under its id.
    assert check_job_id(job_id) == job_id and is_job_id(job_id)


@pytest.mark.parametrize("job_id", [None, 42, 4.2, b"run-42", ["run-42"], {"id": 1}, object(), True])
def test_non_string_job_ids_are_refused(job_id: object) -> None:
    with pytest.raises(NodeValidationError, match="job_id"):
        check_job_id(job_id)


def test_a_huge_job_id_is_quoted_as_an_excerpt() -> None:
    with pytest.raises(NodeValidationError) as caught:
        check_job_id("j" * TEN_MB)
    assert len(str(caught.value)) < SHORT and f"({TEN_MB} characters)" in str(caught.value)


def test_the_client_checks_job_ids_before_anything_is_stored(
    client: ImageGenClient, node: dict[str, Any], redis_url: str
) -> None:
    store = redis.Redis.from_url(redis_url)
    before = request_keys(store)
    for job_id in ("../x", "a:b", "a@1", "a\nb", 42):
        with pytest.raises(NodeValidationError, match="job_id"):
            client.submit(node, job_id=job_id)  # type: ignore[arg-type]
        for method in (client.status, client.result, client.wait):
            with pytest.raises(NodeValidationError, match="job_id"):
                method(job_id)  # type: ignore[operator]
    assert not request_keys(store) - before and store.llen(client.settings.queue) == 0
    job_id = f"run-{uuid.uuid4().hex[:8]}/node-7"
    handle = client.submit(node, job_id=job_id)
    assert handle.job_id == job_id and client.status(job_id).state == "queued"
    assert store.llen(client.settings.queue) == 1


# --- the CLI ----------------------------------------------------------------------------


@pytest.fixture
def cli_env(settings: Settings) -> Iterator[Settings]:
    """In-process ``cli.main``: settings from this test's environment, not an earlier one's."""
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def test_a_200_mb_prompt_file_is_refused_without_reading_it(
    job_env: dict[str, str], tmp_path: Path, node: dict[str, Any]
) -> None:
    path = tmp_path / "huge.json"
    head, tail = json.dumps(with_inputs(node, user_query="@@")).split("@@")
    chunk = b"x" * (1024 * 1024)
    with path.open("wb") as handle:
        handle.write(head.encode())
        for _ in range(200):
            handle.write(chunk)
        handle.write(tail.encode())
    for command in ("validate", "submit"):
        run = imagegen(job_env, command, str(path))
        assert run.returncode == 2, run.stderr
        assert len(run.stderr) < SHORT and "IMAGEGEN_MAX_NODE_BYTES" in run.stderr
        assert "Traceback" not in run.stderr and "xxxxxxxxxx" not in run.stderr and run.stdout == ""
    path.unlink()


def test_the_cli_reads_at_most_the_document_cap(
    cli_env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b'{"name": "' + b"x" * (50 * 1024 * 1024) + b'"}')
    tracemalloc.start()
    try:
        assert cli.main(["validate", str(path)]) == 2
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 1024 * 1024, f"peak {peak} bytes: the file was loaded"
    assert "at most 65536 bytes" in capsys.readouterr().err


def test_undecodable_bytes_from_a_file_or_stdin_exit_2(job_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"name": "café"}'.encode("latin-1"))
    for run in (imagegen(job_env, "validate", str(path)), imagegen(job_env, "submit", str(path))):
        assert run.returncode == 2 and "UTF-8" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("job_id", ["../x", "a:b", "a@1", "/abs", "x" * 129, "\u0430bc"])
def test_the_cli_refuses_bad_job_ids_with_exit_2(
    cli_env: Settings, tmp_path: Path, node: dict[str, Any], job_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.json"
    path.write_text(json.dumps(node))
    for argv in (["submit", str(path), f"--job-id={job_id}"], ["status", job_id], ["result", job_id]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "job_id" in err and "run-42/node-7" in err and "Traceback" not in err
    assert redis.Redis.from_url(cli_env.redis_url).llen(cli_env.queue) == 0


def test_the_cli_job_id_checks_in_a_real_process(job_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_text("{}")  # the job id is refused first
    for args in (("submit", str(path), "--job-id", "a\nb"), ("status", "../x"), ("result", "a//b", "--wait")):
        run = imagegen(job_env, *args)
        assert run.returncode == 2 and "job_id" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("size", ["99999x99999", "../../1024x1024", "1024x1024\nFORGED LINE", "x" * 5000])
def test_a_raw_variation_with_a_size_its_model_does_not_make_fails_before_any_cost(
    start_worker: StartWorker, client: ImageGenClient, size: str
) -> None:
    """A variation sent on its own, past the job task, with a size the catalog does not list for
    its model: a permanent error naming it (bounded, escaped), not an unexpected error."""
    worker = start_worker()
    job_id = f"raw-size-{uuid.uuid4().hex[:6]}"
    work = VariationWork(job_id=job_id, run=1, index=0, prompt="x", model="offline_preview", size=size)
    client.celery.send_task(GENERATE_VARIATION, args=(work.model_dump(mode="json"),))
    deadline = time.monotonic() + 30
    while f"job {job_id} variation 0 failed" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    [line] = [line for line in worker.log().splitlines() if f"job {job_id} variation 0 failed" in line]
    assert "permanent (size " in line and "is not one model 'offline_preview' makes" in line
    assert "FORGED LINE" not in worker.log().replace("\\nFORGED LINE", "")  # escaped, not a line of its own
    assert "x" * 100 not in line  # an excerpt, not the 5,000 characters
    assert "unexpected error" not in worker.log()
