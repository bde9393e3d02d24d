"""The Image Generation node's JSON contract and its validation.

``validate_node`` is the one entry point: it reports every problem at once,
each naming the field, the bad value and what is allowed, so a workflow author
fixes a node in one round and nothing invalid is ever enqueued.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from contract.catalog import ModelCatalog, load_catalog, parse_size
from contract.clouds import CLOUD_FIELDS, SPECS, TargetPolicy, storage_problems
from contract.documents import load_document
from contract.errors import MISSING, excerpt, field_part
from contract.errors import NodeValidationError as NodeValidationError  # re-exported: contract.node's API
from contract.errors import Problem as Problem
from contract.prompt_text import control_character
from contract.secret_refs import HOW_TO, check_allowed, parse_secret_ref
from contract.settings import Settings, get_settings
from contract.templates import TemplateProblem, render_prompt

if TYPE_CHECKING:
    from contract.webhooks import Webhook

CloudProvider = Literal["aws", "azure", "gcp"]  # the keys of contract.clouds.SPECS
# The prompt step before the images (worker/tasks/prompt_step.py): none, one detailed
# prompt for every variation, or one distinct prompt per variation.
PromptEnhancement = Literal["off", "enhance", "diversify"]

# Fields whose values are credentials (references only) and never echoed.
CREDENTIAL_FIELDS = frozenset({"aws_credentials", "azure_connection_string", "gcp_credentials"})
# A rejected account URL may carry a SAS token: not echoed either.
_NEVER_ECHOED = CREDENTIAL_FIELDS | {"azure_account_url"}

_REDACTED = "<not shown>"

# Names authors reach for first, for the did-you-mean hint.
_SYNONYMS = {
    "prompt": "user_query",
    "query": "user_query",
    "text": "user_query",
    "n": "variations",
    "count": "variations",
    "num_images": "variations",
    "number_of_images": "variations",
    "resolution": "size",
    "dimensions": "size",
    "provider": "cloud_provider",
    "cloud": "use_cloud",
    "enhance": "prompt_enhancement",
    "enhancement": "prompt_enhancement",
    "llm": "text_model",
    "llm_model": "text_model",
    "style_guide": "prompt_instructions",
    "instructions": "prompt_instructions",
}


# Caps on the generic fields: what a node's name and notes need, nothing a tenant can abuse.
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 2000
MAX_OUTPUT_TYPE_CHARS = 32
MAX_PROMPT_INSTRUCTIONS_CHARS = 4000  # a style guide for the prompt step, not a second prompt
# Gemini's seed is an int32 and variation i uses seed + i: seed + max_variations must fit.
SEED_LIMIT = 2**31 - 1


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("node", message)


def _whole_number(value: Any, example: str) -> Any:
    """A count or a seed as workflow UIs send it: 7 or "7". A bool, "7.5", a full-width digit, a
    32+ digit string or a list is a mistake, said plainly (pydantic would say "valid integer")."""
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= 32:
            return value
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(value, float) and value.is_integer():
        return int(value)
    raise _fail(f'must be a whole number such as {example} or "{example}"')


def _bounded_text(value: str, limit: int, *, multiline: bool) -> str:
    """At most ``limit`` characters; no control characters (tab and newline only when ``multiline``)."""
    if len(value) > limit:
        raise _fail(f"is {len(value)} characters; at most {limit} are allowed")
    control = control_character(value, multiline=multiline)
    if control is not None:
        raise _fail(control)
    return value


class NodeInputs(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, protected_namespaces=())

    user_query: str
    model: str
    variations: int = 1
    size: str = "1024x1024"
    use_cloud: bool = False
    cloud_provider: CloudProvider | None = None
    seed: int | None = None
    prompt_enhancement: PromptEnhancement = "off"
    text_model: str | None = None  # a text model of the catalog; default: the image provider's
    prompt_instructions: str | None = None  # the prompt step's style guide

    aws_bucket: str | None = None
    aws_region: str | None = None
    aws_prefix: str | None = None
    aws_credentials: str | None = None

    azure_container: str | None = None
    azure_account_url: str | None = None
    azure_connection_string: str | None = None
    azure_prefix: str | None = None

    gcp_bucket: str | None = None
    gcp_project: str | None = None
    gcp_prefix: str | None = None
    gcp_credentials: str | None = None

    @field_validator("cloud_provider", mode="before")
    @classmethod
    def _no_provider_chosen(cls, value: Any) -> Any:
        # A form's empty dropdown is no choice, as a blank bucket is no bucket: required only with use_cloud.
        return None if _no_choice(value) else value

    @field_validator("user_query")
    @classmethod
    def _prompt(cls, value: str, info: ValidationInfo) -> str:
        limit = _ctx(info).max_prompt_chars
        if not value:
            raise _fail("must be a non-empty prompt describing the image")
        return _bounded_text(value, limit, multiline=True)

    @field_validator("model", mode="before")
    @classmethod
    def _model_name(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):  # pydantic would say only "valid string"
            raise _fail(f"must be a model name (a string); allowed: {', '.join(_ctx(info).catalog.names())}")
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str, info: ValidationInfo) -> str:
        catalog = _ctx(info).catalog
        if catalog.get(value) is None:
            raise _fail(f"is not a known model; allowed: {', '.join(catalog.names())}")
        return value

    @field_validator("prompt_enhancement", mode="before")
    @classmethod
    def _enhancement_word(cls, value: Any) -> Any:
        # "Enhance" from a UI dropdown is the same choice; anything else names the allowed words.
        if isinstance(value, str) and value.strip().lower() in get_args(PromptEnhancement):
            return value.strip().lower()
        raise _fail("must be one of: off, enhance (one detailed prompt), diversify (one prompt per variation)")

    @field_validator("text_model")
    @classmethod
    def _known_text_model(cls, value: str | None, info: ValidationInfo) -> str | None:
        catalog = _ctx(info).catalog
        if value is not None and catalog.get_text(value) is None:
            raise _fail(f"is not a known text model; allowed: {', '.join(catalog.text_names()) or 'none'}")
        return value

    @field_validator("prompt_instructions")
    @classmethod
    def _instructions(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value:
            raise _fail("is empty; leave it out, or write the style guide for the prompt step")
        return _bounded_text(value, MAX_PROMPT_INSTRUCTIONS_CHARS, multiline=True)

    @field_validator("variations", mode="before")
    @classmethod
    def _variations_integer(cls, value: Any) -> Any:
        return _whole_number(value, "1")

    @field_validator("variations")
    @classmethod
    def _variations_range(cls, value: int, info: ValidationInfo) -> int:
        limit = _ctx(info).max_variations
        if not 1 <= value <= limit:
            raise _fail(f"must be from 1 to {limit}")
        return value

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_integer(cls, value: Any) -> Any:
        return value if value is None else _whole_number(value, "7")

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, value: int | None, info: ValidationInfo) -> int | None:
        top = SEED_LIMIT - _ctx(info).max_variations
        if value is not None and not 0 <= value <= top:
            raise _fail(f"must be from 0 to {top} (variation i uses seed + i, a 32-bit integer)")
        return value

    @field_validator("size", mode="before")
    @classmethod
    def _size_text(cls, value: Any) -> Any:
        if not isinstance(value, str):  # 1024 for "1024x1024": pydantic would say only "valid string"
            raise _fail('must be WIDTHxHEIGHT as a string, e.g. "1024x1024"')
        return value

    @field_validator("size")
    @classmethod
    def _size_for_model(cls, value: str, info: ValidationInfo) -> str:
        value = value.lower().replace(" ", "")
        try:
            parse_size(value)
        except ValueError:
            raise _fail("must be WIDTHxHEIGHT, e.g. 1024x1024") from None
        model = info.data.get("model")  # absent when the model itself was invalid
        entry = _ctx(info).catalog.get(model) if model else None
        if entry is not None and value not in entry.sizes:
            raise _fail(f"is not a size {model} supports; allowed sizes: {', '.join(entry.sizes)}")
        return value

    @field_validator("aws_credentials", "azure_connection_string", "gcp_credentials")
    @classmethod
    def _reference_not_secret(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        try:
            reference = parse_secret_ref(value)
        except ValueError:
            raise _fail(f"holds a raw secret, which is refused and was not sent anywhere; {HOW_TO}") from None
        try:
            check_allowed(reference, _ctx(info).secret_ref_prefixes)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        return value

    @field_validator("azure_account_url")
    @classmethod
    def _no_sas_in_url(cls, value: str | None) -> str | None:
        if value is not None and "?" in value:
            raise _fail(
                "must be the account URL without a query string "
                "(a SAS token is a secret; use azure_connection_string with a reference)"
            )
        return value


class ImageGenerationNode(BaseModel):
    """A whole node as the workflow engine sends it; extra top-level keys
    (canvas ids, positions) are ignored, unknown *inputs* are rejected."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    name: str = "image_generation"
    type: Literal["image_generation"]
    description: str | None = None
    output_type: str | None = "json"
    inputs: NodeInputs

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _bounded_text(value, MAX_NAME_CHARS, multiline=False)

    @field_validator("description")
    @classmethod
    def _description(cls, value: str | None) -> str | None:
        return None if value is None else _bounded_text(value, MAX_DESCRIPTION_CHARS, multiline=True)

    @field_validator("output_type")
    @classmethod
    def _output_type(cls, value: str | None) -> str | None:
        return None if value is None else _bounded_text(value, MAX_OUTPUT_TYPE_CHARS, multiline=False)

    def credential_refs(self, webhook: Webhook | None = None) -> dict[str, str | None]:
        """The secret references by field, for the tenant check (contract/tenancy.py): the
        storage credentials (none when the node writes to the platform's storage), and with a
        ``webhook`` its signing key's."""
        refs: dict[str, str | None] = {}
        if self.inputs.use_cloud:
            refs = {f"inputs.{name}": getattr(self.inputs, name, None) for name in sorted(CREDENTIAL_FIELDS)}
        if webhook is not None:
            refs["webhook.secret"] = webhook.secret
        return refs

    def to_task_payload(self) -> dict[str, Any]:
        """JSON-safe form sent to the worker: what the job runs (no description), references only."""
        return self.model_dump(mode="json", exclude_none=True, include={"name", "type", "inputs"})


@dataclass(frozen=True)
class _Context:
    catalog: ModelCatalog
    max_variations: int
    max_prompt_chars: int
    secret_ref_prefixes: tuple[str, ...]
    target_policy: TargetPolicy


def _ctx(info: ValidationInfo) -> _Context:
    ctx = info.context
    return ctx if isinstance(ctx, _Context) else _context_from(get_settings())


def _context_from(settings: Settings) -> _Context:
    return _Context(
        catalog=load_catalog(settings.model_catalog_file, settings.model_catalog_replace),
        max_variations=settings.max_variations,
        max_prompt_chars=settings.max_prompt_chars,
        secret_ref_prefixes=settings.secret_ref_prefixes,
        target_policy=settings.target_policy,
    )


def validate_node(
    data: Mapping[str, Any] | str | bytes,
    settings: Settings | None = None,
    *,
    context: Mapping[str, Any] | str | bytes | None = None,
) -> ImageGenerationNode:
    """Parse node JSON (text, bytes or dict); raise NodeValidationError listing every problem.

    Whatever ``data`` is (any object, text or bytes), nothing but NodeValidationError
    is raised: the document's size, encoding, nesting, numbers and keys are checked
    first (contract/documents.py), then every field.

    With a ``context`` (the engine's upstream outputs, a JSON object), ``user_query``
    is a template (contract/templates.py): it is rendered first, and the rendered
    prompt is what is validated and returned. Without one, the prompt is taken as written.
    """
    settings = settings or get_settings()
    data = load_document(data, settings.max_node_bytes)  # plain JSON data from here on
    if context is not None:
        data = _rendered(data, context, settings)
    rules = _context_from(settings)
    problems: list[Problem] = []
    node: ImageGenerationNode | None = None
    try:
        node = ImageGenerationNode.model_validate(data, context=rules)
    except ValidationError as exc:
        # did-you-mean hints for the first few only: a node with thousands of unknown keys costs no more
        problems = [_problem_from(err, data, hint=n < 20) for n, err in enumerate(exc.errors())]
    inputs = data.get("inputs")
    if isinstance(inputs, Mapping):
        problems += _cloud_problems(inputs, [p.field for p in problems], rules.target_policy)
        problems += _prompt_step_problems(inputs, [p.field for p in problems], rules.catalog)
    if problems:
        raise NodeValidationError(problems)
    assert node is not None
    return node


def _rendered(data: dict[str, Any], context: Mapping[str, Any] | str | bytes, settings: Settings) -> dict[str, Any]:
    """``data`` with its ``user_query`` template rendered from ``context``; NodeValidationError if it cannot be."""
    try:
        values = load_document(context, settings.max_node_bytes)  # the same bounds as a node
    except NodeValidationError as exc:
        raise NodeValidationError(
            [
                Problem(f"context.{p.field}" if p.field != "(document)" else "context", p.value, p.message)
                for p in exc.problems
            ]
        ) from None
    inputs = data.get("inputs")
    if not isinstance(inputs, Mapping) or not isinstance(inputs.get("user_query"), str):
        return data  # field validation reports it
    template: str = inputs["user_query"]
    if len(template) > settings.max_prompt_chars:
        return data  # the prompt's own length check reports it, before any rendering work
    try:
        prompt = render_prompt(template, values, settings.max_prompt_chars)
    except TemplateProblem as exc:
        raise NodeValidationError([Problem("inputs.user_query", excerpt(template), str(exc))]) from None
    return {**data, "inputs": {**inputs, "user_query": prompt}}


def _prompt_step_problems(inputs: Mapping[str, Any], already: list[str], catalog: ModelCatalog) -> list[Problem]:
    """The prompt step's inputs together: they need the step on, and a text model to run it."""
    if any(f in already for f in ("inputs.prompt_enhancement", "inputs.model", "inputs.text_model")):
        return []
    mode = str(inputs.get("prompt_enhancement", "off")).strip().lower()
    if mode == "off":
        stray = [name for name in ("text_model", "prompt_instructions") if inputs.get(name) is not None]
        return [
            Problem(
                f"inputs.{name}",
                excerpt(inputs[name]),
                "is set, but prompt_enhancement is off; set prompt_enhancement to enhance or diversify",
            )
            for name in stray
        ]
    model = inputs.get("model")
    if catalog.text_model_for(str(model), inputs.get("text_model")) is None:
        return [
            Problem(
                "inputs.text_model",
                MISSING,
                f"is required for prompt_enhancement with {model}; allowed: {', '.join(catalog.text_names())}",
            )
        ]
    return []


def _problem_from(err: Any, data: Mapping[str, Any], hint: bool = True) -> Problem:
    loc = [str(part) for part in err["loc"]]
    field = ".".join(field_part(part) for part in loc)  # a hostile key is shown as a short, inert excerpt
    leaf = loc[-1] if loc else ""
    kind = err["type"]
    if kind == "missing":
        return Problem(field, MISSING, "is required: 'image_generation'" if field == "type" else "is required")
    if kind == "extra_forbidden":
        allowed = list(NodeInputs.model_fields)
        near = leaf.lower() if hint and len(leaf) <= 64 else ""  # difflib's cost grows with the key
        # 0.75: a typo ("varitions", "szie") is close; "colour" is not "use_cloud"
        close = difflib.get_close_matches(near, [*allowed, *_SYNONYMS], n=1, cutoff=0.75) if near else []
        guess = f"did you mean '{_SYNONYMS.get(close[0], close[0])}'? " if close else ""
        return Problem(field, MISSING, f"is not a known input field; {guess}allowed: {', '.join(allowed)}")
    value = _REDACTED if leaf in _NEVER_ECHOED else excerpt(err.get("input", MISSING))
    message = err["msg"]
    if kind == "literal_error" and leaf == "type":
        message = "must be 'image_generation'"
    elif kind.startswith("bool_"):
        message = "must be true or false"
    elif kind in ("model_type", "dict_type"):  # pydantic names our class: say what JSON is wanted
        message = "must be a JSON object {...}"
    return Problem(field, value, message[0].lower() + message[1:] if message else message)


_BOOL = TypeAdapter(bool)


def _no_choice(value: Any) -> bool:
    """A cloud_provider that chooses nothing: absent, or a form's empty dropdown (blank)."""
    return value is None or (isinstance(value, str) and not value.strip())


def _cloud_problems(inputs: Mapping[str, Any], already: list[str], policy: TargetPolicy) -> list[Problem]:
    """The cloud's own rules (contract/clouds) for use_cloud; run even when single fields failed."""
    if "inputs.use_cloud" in already:
        return []
    try:  # read as the model reads it ("y", "on", 1 ... are true there too), else a check is skipped
        use_cloud = _BOOL.validate_python(inputs.get("use_cloud", False))
    except ValidationError:
        return []  # reported on the field
    if not use_cloud:
        # The images would go to the platform storage, not to the bucket the author named.
        return [
            Problem(
                f"inputs.{name}",
                _REDACTED if name in _NEVER_ECHOED else inputs[name],
                "is used only when use_cloud is true; with use_cloud false the images go to the platform's "
                "storage: set use_cloud to true, or remove this field",
            )
            for name in sorted(CLOUD_FIELDS)
            if inputs.get(name) not in (None, "") and f"inputs.{name}" not in already  # "": a form's empty field
        ]
    provider = inputs.get("cloud_provider")
    if _no_choice(provider):  # as NodeInputs reads it
        allowed = ", ".join(SPECS)
        return [Problem("inputs.cloud_provider", MISSING, f"is required when use_cloud is true; allowed: {allowed}")]
    problems = []
    for name, message in storage_problems(inputs, policy).items():
        field = f"inputs.{name}"
        if field in already:
            continue
        value = inputs.get(name, MISSING)
        shown = _REDACTED if name in _NEVER_ECHOED and value is not MISSING else value
        problems.append(Problem(field, shown, message))
    return problems
