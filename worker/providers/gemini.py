"""Gemini image models, and the text models of the prompt step, through the real google-genai SDK.

One ``genai.Client`` per provider instance (the registry keeps one per worker
process), shared by the pool's threads; its HTTP connection pool holds a
connection per worker slot (httpx's default of 100 would queue the 101st call
behind the others, for a whole generation). Each call has a whole-call deadline
and a byte cap (``http_budget``): httpx alone bounds only each socket read. The
SDK's own retries stay off: a
retry inside the call would hold the worker slot while it sleeps, whereas a
``TransientError`` becomes a Celery retry with a countdown that frees it.

Every outcome leaves as a ``worker.errors`` type whose message is safe to
show: the API key is scrubbed from anything built from SDK or HTTP errors.
"""

from __future__ import annotations

import dataclasses
import email.utils
import importlib
import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Iterable
from typing import Any

from google import genai
from google.genai import errors, types

from contract.errors import clipped, printable
from contract.prompt_text import describe
from contract.result import GenerationMetadata, Usage
from contract.settings import Settings
from worker.errors import BlockedError, GenerationError, PermanentError, TransientError
from worker.providers import genai_lookup
from worker.providers.base import GeneratedImage, GeneratedText, GenerationRequest, TextRequest
from worker.providers.http_budget import ResponseTooLarge, call_budget, install_budget

genai_lookup.install()  # 0.65 ms less CPU per request built (the module says why)
# httpx logs every request at INFO ("HTTP Request: POST ... 200 OK"): a line per image that says
# nothing the variation's own outcome does not, and cost, with the SDK's "AFC is enabled" line
# (gone with AFC off, below), 0.17-0.19 ms of CPU per call where the process logs at INFO (docs/pools.md).
# Its warnings and errors still log.
for _library in ("httpx", "httpx2"):
    logging.getLogger(_library).setLevel(logging.WARNING)

# finishReason values that mean "no image, by policy or by choice": not retried
# (the same prompt gets the same answer, at the same cost).
BLOCKING_FINISH_REASONS = frozenset(
    {
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "IMAGE_RECITATION",
        "RECITATION",
        "IMAGE_OTHER",
        "NO_IMAGE",
        "OTHER",
    }
)
TRANSIENT_CODES = frozenset({408, 429, 500, 502, 503, 504})
TIMEOUT_CODES = frozenset({408, 504})
log = logging.getLogger(__name__)
TEXT_LIMIT = 500  # the model's words kept in the result; they can run long

# httpx / httpx2 class names (matched through the MRO, whichever module the
# SDK version imports) for failures worth retrying later.
_TIMEOUT_CLASSES = frozenset({"TimeoutException"})
_NETWORK_CLASSES = frozenset({"NetworkError", "RemoteProtocolError", "ProxyError"})
_RETRY_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
# We declare no tools, so the SDK's automatic function calling has nothing to call; left on, each
# call logs "AFC is enabled" at INFO and deep-copies its config. Client-side only: not sent.
_NO_FUNCTION_CALLING = types.AutomaticFunctionCallingConfig(disable=True)


class GeminiProvider:
    name = "gemini"

    def __init__(self, settings: Settings):
        self._secrets = _secrets(settings)
        self._timeout_s = settings.gemini_timeout_s
        self._max_bytes = settings.gemini_max_response_mb * 2**20
        try:
            self._client = genai.Client(**_client_options(settings))
        except ValueError as exc:  # the SDK's "missing key / project" complaints
            raise PermanentError(self._scrub(f"cannot set up the Gemini client: {exc}")) from None

    def generate(self, request: GenerationRequest) -> GeneratedImage:
        option = request.model.sizes[request.size]
        config = types.GenerateContentConfig(
            response_modalities=["TEXT", "IMAGE"],
            image_config=types.ImageConfig(aspect_ratio=option.aspect_ratio, image_size=option.tier),
            seed=request.seed,  # None is left out of the request by the SDK
            automatic_function_calling=_NO_FUNCTION_CALLING,
        )
        return _image_from(self._call(request.model.model_id, request.prompt, config))

    def write_prompts(self, request: TextRequest) -> GeneratedText:
        """One prompt as text, or exactly ``count`` prompts as JSON under a response schema."""
        config = types.GenerateContentConfig(
            system_instruction=request.instructions,
            candidate_count=1,
            response_mime_type="application/json" if request.count is not None else None,
            response_schema=_prompts_schema(request.count) if request.count is not None else None,
            automatic_function_calling=_NO_FUNCTION_CALLING,
        )
        response = self._call(request.model.model_id, request.prompt, config)
        spent = GeneratedText(
            [],
            usage=_usage(response.usage_metadata),
            model_version=response.model_version,
            response_id=response.response_id,
        )
        try:
            text = _answer_text(response)
            if any(secret in text for secret in self._secrets):
                # It would become an image prompt, sent on and kept in the result: refused, not redacted.
                raise PermanentError("the text model's answer contains the worker's API key; refused")
            prompts = [text] if request.count is None else _prompts_from_json(text, request.count)
        except GenerationError as exc:
            exc.spent = spent  # the call was made and billed, though its answer is refused
            raise
        return dataclasses.replace(spent, prompts=prompts)

    def _call(self, model_id: str, contents: str, config: types.GenerateContentConfig) -> types.GenerateContentResponse:
        """``generate_content``, with every failure mapped to a ``worker.errors`` outcome."""
        try:
            with call_budget(self._timeout_s, self._max_bytes):
                return self._client.models.generate_content(model=model_id, contents=contents, config=config)
        except errors.APIError as exc:
            raise self._api_error(exc, model_id) from None
        except ResponseTooLarge as exc:
            raise PermanentError(f"Gemini's answer was refused: {exc} (IMAGEGEN_GEMINI_MAX_RESPONSE_MB)") from None
        except Exception as exc:
            outcome = self._transport_error(exc)
            if outcome is None:
                # Only the SDK ran, and could not read the answer. Not JSON (a proxy's HTML page, a
                # body cut short) is worth another try; JSON the SDK cannot take (a field of the
                # wrong type) would come back the same, and each try may be billed.
                log.warning("Gemini's answer could not be read", exc_info=True)
                what = self._scrub(f"Gemini's answer could not be read: {_first_line(exc)}")
                unreadable = isinstance(exc, json.JSONDecodeError | UnicodeDecodeError)
                outcome = TransientError(what) if unreadable else PermanentError(what)
            raise outcome from None

    def _api_error(self, exc: errors.APIError, model_id: str) -> GenerationError:
        code = int(exc.code or 0)
        what = self._scrub(f"Gemini answered {code} {exc.status or ''}: {exc.message or 'no message'}")
        if code in TRANSIENT_CODES:
            return TransientError(what, retry_after_s=retry_after_s(exc), timed_out=code in TIMEOUT_CODES)
        if code == 404:
            return PermanentError(
                f"model id {model_id!r} is not served; update the model catalog (IMAGEGEN_MODEL_CATALOG_FILE). {what}"
            )
        if code in (401, 403):
            return PermanentError(f"Gemini refused the credentials (check GEMINI_API_KEY / GOOGLE_API_KEY). {what}")
        return PermanentError(what)

    def _transport_error(self, exc: BaseException) -> GenerationError | None:
        """Network failures surface as the SDK's HTTP library exceptions."""
        names = {cls.__name__ for cls in type(exc).__mro__}
        if names & _TIMEOUT_CLASSES or isinstance(exc, TimeoutError):
            limit = f"no answer within IMAGEGEN_GEMINI_TIMEOUT_S={self._timeout_s:g} s for the whole call"
            return TransientError(self._scrub(f"{limit}: {type(exc).__name__}: {exc}"), timed_out=True)
        if names & _NETWORK_CLASSES or isinstance(exc, ConnectionError):
            return TransientError(self._scrub(f"cannot reach Gemini: {type(exc).__name__}: {exc}"))
        return None

    def _scrub(self, text: str) -> str:
        """Without the API key, on one line, and bounded: an error body can be a whole HTML page,
        and a line break in it would forge a line of the worker's log."""
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return clipped(printable(text))


def _secrets(settings: Settings) -> tuple[str, ...]:
    """The configured API keys, GOOGLE_API_KEY first; empty values count as unset."""
    values = (settings.google_api_key, settings.gemini_api_key)
    return tuple(v.get_secret_value() for v in values if v is not None and v.get_secret_value())


def _client_options(settings: Settings) -> dict[str, Any]:
    timeout_ms = int(settings.gemini_timeout_s * 1000)
    if settings.gemini_use_vertexai:
        if not (settings.google_cloud_project and settings.google_cloud_location):
            raise PermanentError(
                "GOOGLE_GENAI_USE_VERTEXAI is set: GOOGLE_CLOUD_PROJECT and GOOGLE_CLOUD_LOCATION are required"
            )
        if os.environ.get("GOOGLE_API_USE_CLIENT_CERTIFICATE", "").strip().lower() == "true":
            # The SDK loads a client certificate only into an HTTP client it builds itself; this
            # one is built here (the call budget), so the certificate would be dropped silently.
            raise PermanentError(
                "GOOGLE_API_USE_CLIENT_CERTIFICATE (Vertex mutual TLS) is not supported by this worker"
            )
        # "v1beta" is the Developer API default; Vertex has its own versions,
        # so only an explicitly different setting is passed on.
        version = None if settings.gemini_api_version == "v1beta" else settings.gemini_api_version
        http = types.HttpOptions(
            base_url=settings.gemini_base_url or None,
            api_version=version,
            timeout=timeout_ms,
            httpx_client=_http_client(settings),
        )
        return {
            "vertexai": True,
            "project": settings.google_cloud_project,
            "location": settings.google_cloud_location,
            "http_options": http,
        }
    keys = _secrets(settings)  # GOOGLE_API_KEY first: it wins over GEMINI_API_KEY, as in the SDK
    if not keys:
        raise PermanentError("no Gemini API key: set GEMINI_API_KEY or GOOGLE_API_KEY in the worker's environment")
    http = types.HttpOptions(
        base_url=settings.gemini_base_url or None,
        api_version=settings.gemini_api_version,
        timeout=timeout_ms,
        httpx_client=_http_client(settings),
    )
    return {"vertexai": False, "api_key": keys[0], "http_options": http}


def _http_client(settings: Settings) -> Any:
    """The SDK's sync HTTP client: a connection per worker slot, all kept alive between calls
    (httpx keeps 20 by default: a burst of calls would open the rest again, TLS and all), and
    every call bounded by ``http_budget``.

    It is built from the HTTP library the SDK would pick itself (google-genai 2.x/3.x: httpx2
    when installed, else httpx; ``GOOGLE_GENAI_HTTP_CLIENT`` decides when set)."""
    wanted = os.environ.get("GOOGLE_GENAI_HTTP_CLIENT", "").strip().lower()
    if wanted not in ("httpx", "httpx2"):
        wanted = "httpx2" if importlib.util.find_spec("httpx2") is not None else "httpx"
    httpx = importlib.import_module(wanted)
    limits = httpx.Limits(max_connections=settings.pool_size, max_keepalive_connections=settings.pool_size)
    return install_budget(httpx.Client(limits=limits))


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def _raise_if_prompt_blocked(response: types.GenerateContentResponse) -> None:
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        reason = _name(feedback.block_reason)
        detail = f": {clipped(printable(feedback.block_reason_message), 300)}" if feedback.block_reason_message else ""
        raise BlockedError(f"Gemini blocked the prompt ({reason}){detail}", reason=reason)


def _prompts_schema(count: int) -> types.Schema:
    """``{"prompts": [exactly count strings]}``: the structured answer of ``diversify``."""
    prompt = types.Schema(type=types.Type.STRING, description="One complete prompt for an image model")
    prompts = types.Schema(type=types.Type.ARRAY, items=prompt, min_items=count, max_items=count)
    return types.Schema(type=types.Type.OBJECT, properties={"prompts": prompts}, required=["prompts"])


def _answer_text(response: types.GenerateContentResponse) -> str:
    """A text model's answer: its non-thought text parts; blocks and empty answers are outcomes."""
    _raise_if_prompt_blocked(response)
    if not response.candidates:
        raise BlockedError("Gemini returned no candidate for the prompt step", reason="NO_TEXT")
    candidate = response.candidates[0]
    finish = _name(candidate.finish_reason) if candidate.finish_reason is not None else None
    if finish in BLOCKING_FINISH_REASONS:
        detail = f": {clipped(printable(candidate.finish_message), 300)}" if candidate.finish_message else ""
        raise BlockedError(f"Gemini wrote no prompt (finishReason {finish}){detail}", reason=finish)
    parts = (candidate.content.parts if candidate.content else None) or []
    text = "".join(p.text for p in parts if p.text and not p.thought)
    if not text.strip():
        raise PermanentError(f"Gemini's prompt step answered with no text (finishReason {finish or 'none'})")
    return text


def _prompts_from_json(text: str, count: int) -> list[str]:
    """Exactly ``count`` non-empty strings under "prompts", or a PermanentError saying what came instead."""
    try:
        answer = json.loads(text)
    except ValueError:
        raise PermanentError(
            f"the prompt step asked for JSON but got {len(text)} characters that are not JSON"
        ) from None
    prompts = answer.get("prompts") if isinstance(answer, dict) else None
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise PermanentError(f"the prompt step's JSON has no list of strings under 'prompts' ({describe(answer)})")
    if len(prompts) != count or not all(p.strip() for p in prompts):
        blank = sum(1 for p in prompts if not p.strip())
        raise PermanentError(
            f"the prompt step returned {len(prompts)} prompt(s), {blank} of them empty; "
            f"exactly {count} non-empty prompts are needed"
        )
    return prompts


def _image_from(response: types.GenerateContentResponse) -> GeneratedImage:
    _raise_if_prompt_blocked(response)
    if not response.candidates:
        raise BlockedError("Gemini returned no candidate and no image", reason="NO_IMAGE")
    candidate = response.candidates[0]  # one candidate per request for image models
    parts = (candidate.content.parts if candidate.content else None) or []
    answer = [p for p in parts if not p.thought]  # drafts and reasoning are not the answer
    text = " ".join(p.text.strip() for p in answer if p.text).strip()[:TEXT_LIMIT] or None
    images = [p.inline_data for p in answer if p.inline_data is not None and p.inline_data.data]
    finish = _name(candidate.finish_reason) if candidate.finish_reason is not None else None
    if finish in BLOCKING_FINISH_REASONS:
        detail = f": {clipped(printable(candidate.finish_message), 300)}" if candidate.finish_message else ""
        raise BlockedError(f"Gemini returned no image (finishReason {finish}){detail}", reason=finish)
    if not images:
        said = f": {text!r}" if text else ""
        raise BlockedError(f"Gemini answered without an image{said}", reason="NO_IMAGE")
    image = images[-1]  # the final image comes last
    metadata = GenerationMetadata(
        provider=GeminiProvider.name,
        model_version=response.model_version,
        response_id=response.response_id,
        text=text,
        usage=_usage(response.usage_metadata),
    )
    assert image.data is not None  # filtered above; narrows the type
    return GeneratedImage(data=image.data, metadata=metadata, mime_type_label=image.mime_type)


def _usage(usage: types.GenerateContentResponseUsageMetadata | None) -> Usage | None:
    if usage is None:
        return None
    return Usage(
        prompt_tokens=usage.prompt_token_count or 0,
        output_tokens=usage.candidates_token_count or 0,
        thoughts_tokens=usage.thoughts_token_count or 0,
        total_tokens=usage.total_token_count or 0,
    )


def _name(value: object) -> str:
    """An SDK enum's name; unknown values arrive as plain strings or ad-hoc members."""
    return str(getattr(value, "value", value)).upper()


def retry_after_s(exc: errors.APIError) -> float | None:
    """The server's delay hint: the larger of a google.rpc.RetryInfo
    ``retryDelay`` and a ``Retry-After`` header, or None."""
    hints = [d for d in (_retry_info(exc.details), _retry_after_header(exc)) if d is not None]
    return max(hints) if hints else None


def _retry_info(body: Any) -> float | None:
    error = body.get("error", body) if isinstance(body, dict) else None
    details: Iterable[Any] = (error.get("details") or []) if isinstance(error, dict) else []
    for detail in details:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, dict):  # the protobuf JSON object form
                return float(delay.get("seconds", 0)) + float(delay.get("nanos", 0)) / 1e9
            match = _RETRY_DELAY.match(str(delay))
            if match:
                return float(match[1])
    return None


def _retry_after_header(exc: errors.APIError) -> float | None:
    headers = getattr(exc.response, "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    value = str(value).strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
