"""The Image Generation node's JSON contract and its validation.

``validate_node`` is the one entry point: it reports every problem at once,
each naming the field, the bad value and what is allowed, so a workflow author
fixes a node in one round and nothing invalid is ever enqueued.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from contract.catalog import ModelCatalog, load_catalog, parse_size
from contract.secret_refs import HOW_TO, check_allowed, parse_secret_ref
from contract.settings import Settings, get_settings

CloudProvider = Literal["aws", "azure", "gcp"]

# Fields whose values are credentials (references only) and never echoed.
CREDENTIAL_FIELDS = frozenset({"aws_credentials", "azure_connection_string", "gcp_credentials"})
# A rejected account URL may carry a SAS token: not echoed either.
_NEVER_ECHOED = CREDENTIAL_FIELDS | {"azure_account_url"}

# What each provider needs when use_cloud is true; "a|b" means one of them.
REQUIRED_CLOUD_FIELDS: dict[str, tuple[str, ...]] = {
    "aws": ("aws_bucket",),
    "azure": ("azure_container", "azure_account_url|azure_connection_string"),
    "gcp": ("gcp_bucket",),
}

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
}


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("node", message)


class NodeInputs(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, protected_namespaces=())

    user_query: str
    model: str
    variations: int = 1
    size: str = "1024x1024"
    use_cloud: bool = False
    cloud_provider: CloudProvider | None = None
    seed: int | None = None

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

    @field_validator("user_query")
    @classmethod
    def _prompt(cls, value: str, info: ValidationInfo) -> str:
        limit = _ctx(info).max_prompt_chars
        if not value:
            raise _fail("must be a non-empty prompt describing the image")
        if len(value) > limit:
            raise _fail(f"is {len(value)} characters; at most {limit} are allowed")
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str, info: ValidationInfo) -> str:
        catalog = _ctx(info).catalog
        if catalog.get(value) is None:
            raise _fail(f"is not a known model; allowed: {', '.join(catalog.names())}")
        return value

    @field_validator("variations", mode="before")
    @classmethod
    def _variations_integer(cls, value: Any) -> Any:
        # Workflow UIs send "1"; a bool or "1.5" is a mistake, not a count.
        if isinstance(value, bool) or (isinstance(value, str) and not value.strip().isdigit()):
            raise _fail('must be a whole number such as 1 or "1"')
        return value

    @field_validator("variations")
    @classmethod
    def _variations_range(cls, value: int, info: ValidationInfo) -> int:
        limit = _ctx(info).max_variations
        if not 1 <= value <= limit:
            raise _fail(f"must be from 1 to {limit}")
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

    def to_task_payload(self) -> dict[str, Any]:
        """JSON-safe form sent to the worker: references only, no secrets."""
        return self.model_dump(mode="json", exclude_none=True)


@dataclass(frozen=True)
class Problem:
    field: str
    value: Any
    message: str

    def __str__(self) -> str:
        if self.value is _MISSING:
            return f"{self.field}: {self.message}"
        return f"{self.field} = {json.dumps(self.value, default=str)}: {self.message}"


_MISSING: Any = object()


class NodeValidationError(ValueError):
    """Every problem with a node, each naming field, value and what is allowed."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid image_generation node ({len(problems)} problem(s)):\n{lines}")

    def as_dicts(self) -> list[dict[str, Any]]:
        return [
            {"field": p.field, "value": None if p.value is _MISSING else p.value, "message": p.message}
            for p in self.problems
        ]


@dataclass(frozen=True)
class _Context:
    catalog: ModelCatalog
    max_variations: int
    max_prompt_chars: int
    secret_ref_prefixes: tuple[str, ...]


def _ctx(info: ValidationInfo) -> _Context:
    ctx = info.context
    return ctx if isinstance(ctx, _Context) else _context_from(get_settings())


def _context_from(settings: Settings) -> _Context:
    return _Context(
        catalog=load_catalog(settings.model_catalog_file, settings.model_catalog_replace),
        max_variations=settings.max_variations,
        max_prompt_chars=settings.max_prompt_chars,
        secret_ref_prefixes=settings.secret_ref_prefixes,
    )


def validate_node(data: Mapping[str, Any] | str | bytes, settings: Settings | None = None) -> ImageGenerationNode:
    """Parse node JSON (text or dict); raise NodeValidationError listing every problem."""
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise NodeValidationError([Problem("(document)", _MISSING, f"is not valid JSON: {exc}")]) from None
    if not isinstance(data, Mapping):
        raise NodeValidationError([Problem("(document)", _MISSING, "must be a JSON object")])

    context = _context_from(settings or get_settings())
    problems: list[Problem] = []
    node: ImageGenerationNode | None = None
    try:
        node = ImageGenerationNode.model_validate(data, context=context)
    except ValidationError as exc:
        problems = [_problem_from(err, data) for err in exc.errors()]
    inputs = data.get("inputs")
    if isinstance(inputs, Mapping):
        problems += _cloud_problems(inputs, already=[p.field for p in problems])
    if problems:
        raise NodeValidationError(problems)
    assert node is not None
    return node


def _problem_from(err: Any, data: Mapping[str, Any]) -> Problem:
    loc = [str(part) for part in err["loc"]]
    field = ".".join(loc)
    leaf = loc[-1] if loc else ""
    kind = err["type"]
    if kind == "missing":
        return Problem(field, _MISSING, "is required")
    if kind == "extra_forbidden":
        allowed = list(NodeInputs.model_fields)
        hint = difflib.get_close_matches(leaf.lower(), [*allowed, *_SYNONYMS], n=1)
        guess = f"did you mean '{_SYNONYMS.get(hint[0], hint[0])}'? " if hint else ""
        return Problem(field, _MISSING, f"is not a known input field; {guess}allowed: {', '.join(allowed)}")
    value = _REDACTED if leaf in _NEVER_ECHOED else err.get("input", _MISSING)
    message = err["msg"]
    if kind == "literal_error" and leaf == "type":
        message = "must be 'image_generation'"
    elif kind.startswith("bool_"):
        message = "must be true or false"
    return Problem(field, value, message[0].lower() + message[1:] if message else message)


def _cloud_problems(inputs: Mapping[str, Any], already: list[str]) -> list[Problem]:
    """Cross-field rules for use_cloud; run even when single fields failed."""
    use_cloud = inputs.get("use_cloud", False)
    if isinstance(use_cloud, str):
        use_cloud = use_cloud.strip().lower() in ("true", "1", "yes", "on")
    if use_cloud is not True or "inputs.use_cloud" in already:
        return []
    provider = inputs.get("cloud_provider")
    if provider is None:
        return [
            Problem("inputs.cloud_provider", _MISSING, "is required when use_cloud is true; allowed: aws, azure, gcp")
        ]
    if provider not in REQUIRED_CLOUD_FIELDS:
        return []  # already reported as a bad value
    problems = []
    for need in REQUIRED_CLOUD_FIELDS[provider]:
        options = need.split("|")
        if not any(inputs.get(name) for name in options):
            problems.append(
                Problem(
                    f"inputs.{options[0]}",
                    _MISSING,
                    f"is required when use_cloud is true and cloud_provider is {provider}"
                    + (f" (or give {', '.join(options[1:])})" if len(options) > 1 else ""),
                )
            )
    return problems
