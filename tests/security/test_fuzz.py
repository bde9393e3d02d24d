"""Property-based fuzzing of everything a tenant controls: node documents and job ids.

Generated inputs are mutations of the seed node (model ``offline_preview``):
random JSON values (and Python oddities) in every field, unknown keys, deleted
keys, and random or corrupted text and bytes. They are driven through
``validate_node``, ``check_job_id`` and the CLI's ``main`` in-process
(``validate``, and ``submit --job-id`` against the suite's Redis with no worker
running). Properties: nothing but NodeValidationError is ever raised, exit codes
are clean, no traceback is printed, every report is short, and every message
that reached the queue carries a node that validates and a valid job id.

Deterministic (``derandomize=True``): CI runs the same examples every time.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import io
import json
import string
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.errors import NodeValidationError, shown
from contract.job_ids import MAX_JOB_ID_CHARS, check_job_id, is_job_id, is_new_job_id
from contract.node import ImageGenerationNode, NodeInputs, validate_node
from contract.settings import Settings, get_settings
from producer import cli
from tests.conftest import SEED_NODE

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")  # long example reprs

DOCUMENTS = 10_000  # node documents through validate_node and `imagegen validate`
JOB_IDS = 10_000  # job ids through check_job_id and `imagegen submit --job-id` (mostly refused documents)
BATCH = 10  # inputs per Hypothesis example: the engine's own cost per example is most of the run time

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)

SEED: dict[str, Any] = json.loads(SEED_NODE.read_text())
SEED["inputs"]["model"] = "offline_preview"

TOP_FIELDS = ["name", "type", "description", "output_type", "inputs"]
INPUT_FIELDS = list(NodeInputs.model_fields)
REPORT_CHARS = 20 * 700  # at most 20 problems, each a field, an excerpt and a message


class _Odd:
    def __repr__(self) -> str:
        return "<odd>"


# --- strategies ----------------------------------------------------------------------

EDGE_SCALARS: list[Any] = [
    "", " ", "\n", "\t", "\x00", "\x1b[2J", "\u202e", "\ud800", "\u0430", "1", " 2 ", "1.5", "true", "NaN",
    "1024x1024", "offline_preview", "image_generation", "x" * 201, "y" * 2001, "z" * 8001,
    0, 1, -1, 8, 9, 2**31 - 1, 2**31, 2**63 - 1, 2**63, -(2**63), 10**30, 10**400,
    0.5, 1e300, float("nan"), float("inf"), -float("inf"),
]  # fmt: skip
ODD_PYTHON: list[Any] = [b"bytes", bytearray(b"x"), {1, 2}, frozenset(), (1, 2), _Odd(), uuid.UUID(int=7), type]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=24),
    st.sampled_from(EDGE_SCALARS),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
any_values = st.one_of(
    json_values,
    st.sampled_from(ODD_PYTHON),
    st.dictionaries(st.one_of(st.integers(), st.tuples(st.integers())), scalars, min_size=1, max_size=2),
)

PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "name": st.sampled_from(["Hero image", "n" * 200, "n" * 201, "a\nb", "  spaced  ", ""]),
    "type": st.sampled_from(["image_generation", "image_gen", "IMAGE_GENERATION"]),
    "description": st.sampled_from(["notes\nmore\tnotes", "d" * 2000, "d" * 2001, "a\rb", None]),
    "output_type": st.sampled_from(["json", "o" * 32, "o" * 33, None]),
    "user_query": st.one_of(st.text(max_size=40), st.sampled_from(["a red car", "q" * 8000, "q" * 8001, "  "])),
    "model": st.sampled_from(["offline_preview", "gemini_3_image", "gemini_2_5_image", "gemini_9", ""]),
    "variations": st.one_of(st.integers(-2, 10), st.sampled_from(["1", " 3 ", "8", "9", "1.5", "two", True])),
    "size": st.sampled_from(["1024x1024", "1024X1024", "1024 x 1024", "1000x1000", "4096x4096", "big", "9" * 5000]),
    "seed": st.one_of(st.integers(-2, 2**31 + 2), st.sampled_from([None, "7", " 7 ", "7.5", True, 2**31 - 9])),
    "use_cloud": st.sampled_from([False, True, "true", "false", "yes", "no", 1, 0, None]),
    "cloud_provider": st.sampled_from(["aws", "azure", "gcp", "gcs", "AWS", None]),
    "aws_bucket": st.sampled_from(["my-images", "b", "Bad_Bucket", "x" * 64]),
    "aws_region": st.sampled_from(["eu-west-1", "mars-1"]),
    "aws_prefix": st.sampled_from(["workflows/", "../up", "/abs"]),
    "aws_credentials": st.sampled_from(["vault:secret/imagegen/aws#credentials", "env:AWS", "AKIA-raw-secret"]),
    "azure_container": st.sampled_from(["images", "C"]),
    "azure_account_url": st.sampled_from(["https://acct.blob.core.windows.net", "https://x/?sig=S"]),
    "azure_connection_string": st.sampled_from(["env:AZURE_CONN", "DefaultEndpointsProtocol=https;AccountKey=k"]),
    "gcp_bucket": st.sampled_from(["my-images", "g"]),
    "gcp_credentials": st.sampled_from(["file:/var/run/secrets/gcp.json", "{raw json}"]),
}


@st.composite
def node_objects(draw: st.DrawFn) -> Any:
    """The seed node with 0-6 mutations: a plausible or random value, a deletion, an unknown key."""
    if draw(st.integers(0, 19)) == 0:
        return draw(any_values)  # not a node at all
    document = copy.deepcopy(SEED)
    for _ in range(draw(st.integers(0, 6))):
        inputs = document.get("inputs")
        top = not isinstance(inputs, dict) or draw(st.booleans())
        target: dict[Any, Any] = document if top else inputs
        key = draw(st.sampled_from(TOP_FIELDS if top else INPUT_FIELDS) | st.text(max_size=10))
        action = draw(st.sampled_from(["plausible", "plausible", "random", "delete"]))
        if action == "delete":
            target.pop(key, None)
        elif action == "plausible" and key in PLAUSIBLE:
            target[key] = draw(PLAUSIBLE[key])
        else:
            target[key] = draw(any_values)
    return document


def _dumps(document: Any) -> str:
    return json.dumps(document, default=repr, skipkeys=True)


@st.composite
def node_documents(draw: st.DrawFn) -> object:
    """A node as any of the forms validate_node accepts, or random text / bytes."""
    form = draw(st.sampled_from(["dict", "dict", "text", "bytes", "corrupted", "random text", "random bytes"]))
    if form == "random text":
        return draw(st.text(max_size=80) | st.sampled_from(["{", "[]", "null", '{"a":1,"a":2}', "[" * 200]))
    if form == "random bytes":
        return draw(st.binary(max_size=80))
    document = draw(node_objects())
    if form == "dict":
        return document
    text = _dumps(document)
    if form == "text":
        return text
    raw = text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8, as attackers send it
    if form == "bytes":
        return raw
    at = draw(st.integers(0, len(raw)))
    return raw[:at] + draw(st.binary(min_size=1, max_size=6)) + raw[at + draw(st.integers(0, 4)) :]


SEGMENT_CHARS = string.ascii_letters + string.digits + "._-"
valid_segments = st.text(alphabet=SEGMENT_CHARS, min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
grammar_ids = st.lists(valid_segments, min_size=1, max_size=4).map("/".join).filter(lambda s: len(s) <= 128)
NASTY = ["/", "//", ".", "..", ":", "@", "\n", "\r", "\x00", " ", "\\", "%2F", "\u0430", "\u2010", "\uff52", "\u200b"]


@st.composite
def job_id_values(draw: st.DrawFn) -> object:
    """Valid ids, valid ids with one nasty insertion, random text, and values that are not str at all."""
    kind = draw(st.integers(0, 9))
    if kind <= 3:
        return draw(grammar_ids)
    if kind <= 6:
        base = draw(grammar_ids)
        at = draw(st.integers(0, len(base)))
        return base[:at] + draw(st.sampled_from(NASTY)) + base[at:]
    if kind == 7:
        return draw(st.text(max_size=20))
    if kind == 8:
        return draw(st.sampled_from(["", "x" * MAX_JOB_ID_CHARS, "x" * (MAX_JOB_ID_CHARS + 1), "../x", "a/./b"]))
    return draw(any_values)


def oracle(value: object) -> bool:
    """The job id grammar, written independently of contract/job_ids.py."""
    if type(value) is not str or not 1 <= len(value) <= MAX_JOB_ID_CHARS:
        return False
    if any(char not in SEGMENT_CHARS + "/" for char in value):
        return False
    return all(segment not in ("", ".", "..") for segment in value.split("/"))


def new_job_oracle(value: object) -> bool:
    """... and for a new job, "t" only begins an id, as t/<tenant>/<id>."""
    if not oracle(value):
        return False
    segments = str(value).split("/")
    return "t" not in segments or (segments[0] == "t" and len(segments) >= 3)


# --- properties ---------------------------------------------------------------------


def check_report(error: NodeValidationError) -> None:
    """A refusal is short, names printable fields, and quotes values only as excerpts."""
    assert 1 <= len(error.problems) <= 20
    assert len(str(error)) <= REPORT_CHARS
    for problem in error.problems:
        assert problem.field and problem.field.isprintable() and len(problem.field) <= 260, problem.field
        assert len(json.dumps(problem.value, default=str, ensure_ascii=False)) <= 100, problem.value
        assert len(shown(problem.value)) <= 6 * 100  # and shown with invisible characters escaped
        assert problem.message.isprintable(), problem.message


def check_node(node: ImageGenerationNode, settings: Settings) -> None:
    """An accepted node is within every cap and its worker payload validates again."""
    assert len(node.name) <= 200 and len(node.description or "") <= 2000 and len(node.output_type or "") <= 32
    assert 1 <= node.inputs.variations <= settings.max_variations
    assert len(node.inputs.user_query) <= settings.max_prompt_chars
    if node.inputs.seed is not None:
        assert node.inputs.seed >= 0 and node.inputs.seed + settings.max_variations <= 2**31 - 1
    payload = node.to_task_payload()
    again = validate_node(json.loads(json.dumps(payload, allow_nan=False)), settings)
    assert again.to_task_payload() == payload


def outcome(document: object, settings: Settings) -> tuple[bool, str]:
    """validate_node's verdict; anything but NodeValidationError escapes and fails the test."""
    try:
        node = validate_node(document, settings)  # type: ignore[arg-type]  # any object, on purpose
    except NodeValidationError as error:
        check_report(error)
        return False, str(error)
    check_node(node, settings)
    return True, ""


@contextlib.contextmanager
def stdin_bytes(data: bytes) -> Iterator[None]:
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    try:
        yield
    finally:
        sys.stdin = saved


def run_cli(argv: list[str], stdin: bytes) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with stdin_bytes(stdin), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def as_bytes(document: object) -> bytes:
    if isinstance(document, bytes):
        return document
    if isinstance(document, str):
        return document.encode("utf-8", "surrogatepass")
    return _dumps(document).encode("utf-8", "surrogatepass")


class Counter:
    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.started = time.perf_counter()

    def add(self, what: str) -> None:
        self.seen[what] = self.seen.get(what, 0) + 1

    def report(self, name: str) -> str:
        return f"{name}: {self.seen} in {time.perf_counter() - self.started:.1f} s"


@pytest.fixture
def fuzz_env(job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """This test's queue on a Redis database of its own (job ids it makes up cannot meet
    another test's), for the in-process CLI; no worker consumes the queue."""
    parts = urlsplit(job_env["REDIS_URL"])
    url = urlunsplit(parts._replace(path="/13"))
    for name, value in {**job_env, "REDIS_URL": url}.items():
        monkeypatch.setenv(name, value)
    store = redis.Redis.from_url(url)
    store.flushdb()
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()
    store.flushdb()
    store.close()


# --- the fuzz tests ---------------------------------------------------------------------


@pytest.fixture
def fast_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI builds its argparse parser on every call (~0.7 ms, most of a call's cost
    here); build it once. The parser is not changed by parsing, so nothing else differs."""
    monkeypatch.setattr(cli, "_parser", functools.lru_cache(maxsize=1)(cli._parser))


def test_fuzz_documents_through_validate_node_and_the_cli(
    fuzz_env: Settings, fast_cli: None, record_property: Callable[[str, object], None]
) -> None:
    counter = Counter()

    @settings(FUZZ, max_examples=DOCUMENTS // BATCH)
    @given(st.lists(node_documents(), min_size=BATCH, max_size=BATCH))
    def fuzz(documents: list[object]) -> None:
        for document in documents:
            valid, report = outcome(document, fuzz_env)
            counter.add("valid" if valid else "refused")
            code, out, err = run_cli(["validate", "-"], as_bytes(document))
            assert "Traceback" not in out + err
            if isinstance(document, bytes) or (isinstance(document, str) and document.isascii()):
                # the CLI reads exactly these bytes: the same verdict, the same report
                assert code == (0 if valid else 2), (code, err)
                assert err.strip() == report.strip()
            else:  # a dict: the CLI reads its JSON, which may differ (NaN, odd keys and values)
                assert code in (0, 2), (code, err)

    fuzz()
    record_property("fuzz_documents", counter.report("documents"))
    print(counter.report("documents"))
    assert sum(counter.seen.values()) >= DOCUMENTS
    assert counter.seen.get("valid", 0) >= DOCUMENTS // 20  # the mutations keep some nodes valid


def _submit_documents() -> list[bytes]:
    """What the submit fuzz sends: mostly refused documents (cheap), two valid nodes."""

    def variant(**inputs: Any) -> bytes:
        return json.dumps({**SEED, "inputs": {**SEED["inputs"], **inputs}}).encode()

    seed = json.dumps(SEED).encode()
    return [
        seed,
        variant(variations=2, seed=7),  # valid too, a different node: the same job id conflicts
        variant(variations="0"),
        variant(user_query="q" * 8001),
        variant(seed=-1),
        variant(model="gemini_9"),
        variant(size="1000x1000"),
        seed.replace(b'"model"', b'"model": "x", "model"'),
        seed[:-1],
        seed.replace(b"a girl", b"a \xff girl"),
        b"\xff\xfe" + seed,
        b"[" * 100_000,
        b'{"type": "image_generation", "inputs": ' + b"9" * 5000 + b"}",
        b"x" * 70_000,
    ]


SUBMIT_DOCUMENTS = _submit_documents()


def test_fuzz_job_ids_through_check_job_id_and_cli_submit(
    fuzz_env: Settings, fast_cli: None, record_property: Callable[[str, object], None]
) -> None:
    counter = Counter()
    accepted: dict[str, bytes] = {}  # job id -> the document that enqueued it
    pick = st.integers(0, len(SUBMIT_DOCUMENTS) - 1)

    @settings(FUZZ, max_examples=JOB_IDS // BATCH)
    @given(st.lists(st.tuples(job_id_values(), pick), min_size=BATCH, max_size=BATCH))
    def fuzz(pairs: list[tuple[object, int]]) -> None:
        for value, index in pairs:
            # 1. check_job_id agrees with an independent reading of the grammar
            try:
                checked: str | None = check_job_id(value)
            except NodeValidationError as error:
                check_report(error)
                checked = None
            assert (checked is not None) == oracle(value) == is_job_id(value), value
            assert checked is None or (checked == value and type(checked) is str)
            counter.add("valid id" if checked is not None else "refused id")
            # 2. the CLI: submit --job-id, with no worker on the queue
            job_id = value if isinstance(value, str) else repr(value)  # argv holds text only
            document = SUBMIT_DOCUMENTS[index]
            code, out, err = run_cli(["submit", "-", f"--job-id={job_id}"], document)
            assert "Traceback" not in out + err
            assert is_new_job_id(value) == new_job_oracle(value), value
            if code == 0:
                assert out.strip() == job_id and is_new_job_id(job_id)
                accepted.setdefault(job_id, document)
                counter.add("enqueued" if "not enqueued again" not in err else "same again")
            elif code == 6:  # the id was taken by a different node: refused, nothing enqueued
                assert job_id in accepted and accepted[job_id] != document and "different node" in err, err
                counter.add("conflict")
            else:
                assert code == 2, (code, err)
                assert ("invalid image_generation node" if is_new_job_id(job_id) else "invalid job id") in err, err
                counter.add("refused")

    fuzz()
    record_property("fuzz_job_ids", counter.report("job ids"))
    print(counter.report("job ids"))
    ids = counter.seen.get("valid id", 0) + counter.seen.get("refused id", 0)
    assert ids >= JOB_IDS and min(counter.seen.get("valid id", 0), counter.seen.get("refused id", 0)) >= JOB_IDS // 5
    assert counter.seen.get("enqueued", 0) >= JOB_IDS // 100 and counter.seen.get("conflict", 0) >= 1

    store = redis.Redis.from_url(fuzz_env.redis_url)
    messages = [json.loads(raw) for raw in store.lrange(fuzz_env.queue, 0, -1)]
    assert len(messages) == len(accepted)  # one message per job id, nothing else
    enqueued_ids = set()
    for message in messages:
        task_id = message["headers"]["id"]
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        order = args[0]
        job_id = order.get("job_id", task_id) if isinstance(order, dict) and "node" in order else task_id
        node = order["node"] if isinstance(order, dict) and "node" in order else order
        assert check_job_id(job_id) == job_id and task_id.split("@")[0] == job_id
        validate_node(node, fuzz_env)  # raises if an invalid node reached the queue
        enqueued_ids.add(job_id)
    assert enqueued_ids == set(accepted)
    store.close()
