"""Every error answer is an RFC 9457 problem document (``application/problem+json``).

One exception (``ApiProblem``) for the API's own refusals, one table from the
service's typed errors (contract/errors.py, producer/client.py) to a status, and
a catch-all that logs the traceback and answers a plain 500 problem: a caller
never sees a traceback, a Redis URL or a token.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract.errors import ImageGenError, NodeValidationError, Problem, excerpt, field_part
from contract.jobs import JobConflict
from contract.tenancy import tenant_of
from contract.webhooks import ResolverUnavailable
from producer.client import JobCrashed, JobNotFound, JobTimeout, QueueUnavailable, SignError

log = logging.getLogger("api")

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://imagegen.local/problems/"  # + slug; each slug is listed in docs/api.md
RETRY_AFTER_UNAVAILABLE_S = 5  # Redis unreachable: a restart or failover takes seconds


class ProblemField(BaseModel):
    """One problem of a rejected document: the field (a dotted path), an excerpt of its value, what is allowed."""

    field: str
    value: Any = Field(None, description="An excerpt of the rejected value; null when absent or never shown")
    message: str


class ProblemDocument(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(description=f"{PROBLEM_BASE}<slug>, see docs/api.md")
    title: str
    status: int
    detail: str
    problems: list[ProblemField] | None = Field(None, description="422: every problem, as the CLI reports them")


class ApiProblem(Exception):
    """A refusal the API answers as a problem document (with optional headers)."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        problems: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(detail)
        self.status, self.slug, self.title, self.detail = status, slug, title, detail
        self.problems = problems
        self.headers = dict(headers or {})


def problem_response(problem: ApiProblem) -> JSONResponse:
    document = ProblemDocument(
        type=PROBLEM_BASE + problem.slug,
        title=problem.title,
        status=problem.status,
        detail=problem.detail,
        problems=None if problem.problems is None else [ProblemField(**p) for p in problem.problems],
    )
    body = document.model_dump(mode="json")
    if body["problems"] is None:
        del body["problems"]  # only 422 lists problems; a problem's own "value" stays, even when null
    return JSONResponse(
        body,
        status_code=problem.status,
        # One caller's error, of this moment: never kept by a cache (api/browser.py sets it on every
        # /v1 answer, but the catch-all 500 is sent from outside that middleware).
        headers={"Cache-Control": "no-store", **problem.headers},
        media_type=PROBLEM_JSON,
    )


def invalid(error: NodeValidationError) -> ApiProblem:
    return ApiProblem(422, "invalid-node", "Invalid request", str(error), problems=error.as_dicts())


def invalid_field(field: str, value: Any, message: str) -> ApiProblem:
    return invalid(NodeValidationError([Problem(field, value, message)], subject="request"))


def not_found(job_id: str) -> ApiProblem:
    # The same answer for another tenant's job as for a job that never existed.
    shown = excerpt(job_id)  # bounded: the id is the caller's, of any length
    return ApiProblem(404, "job-not-found", "No such job", f"no job {shown!r} (never submitted, or it expired)")


def unavailable(detail: str = "the job store (Redis) cannot be reached; try again shortly") -> ApiProblem:
    return ApiProblem(
        503, "unavailable", "Service unavailable", detail, headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)}
    )


def from_service_error(error: ImageGenError) -> ApiProblem:
    """The service's typed errors, each to its status (messages are written to be shown)."""
    if isinstance(error, NodeValidationError):
        return invalid(error)
    if isinstance(error, JobConflict):
        return ApiProblem(409, "job-conflict", "Job id conflict", _caller_view(str(error), tenant_of(error.job_id)))
    if isinstance(error, JobNotFound):
        return ApiProblem(404, "job-not-found", "No such job", _caller_view(str(error)))
    if isinstance(error, QueueUnavailable):
        return unavailable()  # the cause names Redis internals: logged, not shown
    if isinstance(error, JobTimeout):
        return ApiProblem(504, "timeout", "No worker answered in time", str(error))
    if isinstance(error, SignError):
        if error.kind == "not_found":  # as for a uri outside the tenant's jobs: nothing about the store
            return ApiProblem(404, "image-not-found", "No such image", "no image of your jobs has this uri")
        status = {"transient": 503, "storage": 502}.get(error.kind, 422)
        return ApiProblem(status, f"sign-{error.kind}", "Cannot sign this uri", str(error))
    if isinstance(error, ResolverUnavailable):
        return unavailable(f"webhook.url: {error}; try again shortly")
    if isinstance(error, JobCrashed):
        return ApiProblem(500, "job-crashed", "The job crashed in the worker", str(error))
    return ApiProblem(500, "internal", "Internal error", "the service could not complete this request")


def _caller_view(message: str, tenant: str | None = None) -> str:
    """Messages name the internal job id ``t/<tenant>/<id>``: show the caller its own id, whole
    (only the tenant's namespace prefix of the internal id is removed; ``tenant`` None: the
    namespace of the first id the message names, the job's own)."""
    from api.tenants import strip_namespaces  # here: tenants imports this module

    return strip_namespaces(message, tenant)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiProblem)
    async def _api_problem(_: Request, exc: ApiProblem) -> JSONResponse:
        return problem_response(exc)

    @app.exception_handler(ImageGenError)
    async def _service_error(_: Request, exc: ImageGenError) -> JSONResponse:
        if isinstance(exc, QueueUnavailable):
            log.warning("queue unavailable: %s", exc)
        return problem_response(from_service_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            Problem(".".join(field_part(p) for p in err.get("loc", ())), excerpt(err.get("input")), err.get("msg", ""))
            for err in exc.errors()
        ]
        return problem_response(invalid(NodeValidationError(problems, subject="request")))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        detail = exc.detail if isinstance(exc.detail, str) else title
        return problem_response(ApiProblem(exc.status_code, slug, title, detail, headers=exc.headers))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        from api.browser import HEADERS  # api.browser answers its refusals with problem_response

        log.exception("unhandled error on %s %s", request.method, request.url.path)
        # Starlette answers this one outside every middleware: the browser headers are set here.
        problem = ApiProblem(500, "internal", "Internal error", "the service could not complete this request")
        response = problem_response(problem)
        response.headers.update(HEADERS)
        return response


# For routes' OpenAPI: every error answer has this shape.
# (ProblemDocument is added to the document's components by api/app.py's OpenAPI builder.)
PROBLEM_RESPONSE: dict[str, Any] = {
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDocument"}}}
}


def problem_responses(*statuses: int, ok: dict[str, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses``: a problem document for each status (and ``ok``, another 200 answer)."""
    responses: dict[int | str, dict[str, Any]] = {} if ok is None else {200: ok}
    for status in statuses:
        responses[status] = {**PROBLEM_RESPONSE, "description": _DESCRIPTIONS.get(status, "")}
    return responses


_DESCRIPTIONS = {
    400: "Malformed JSON",
    401: "Missing or wrong bearer token",
    404: "No such job (or another tenant's)",
    409: "The job id was used for a different node, or cannot be rerun now",
    413: "Request body larger than IMAGEGEN_API_MAX_BODY_BYTES",
    415: "Content-Type is not application/json",
    422: "Invalid node or request (problems lists each field, value and what is allowed)",
    429: "Too many jobs in flight for this tenant (see Retry-After)",
    502: "The storage refused",
    503: "Redis unreachable (see Retry-After)",
    504: "No worker answered in time",
}
