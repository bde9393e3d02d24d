"""The HTTP front door: FastAPI routes over the same ``ImageGenClient`` the CLI uses.

    imagegen serve --host 0.0.0.0 --port 8000      # or: uvicorn api.app:create_app --factory

Routes, documents and decisions: docs/api.md. Blocking work (the client's
Redis and broker calls) runs in the thread pool; the event stream blocks on
``XREAD`` with redis.asyncio.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
import redis
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from pydantic.json_schema import models_json_schema
from sse_starlette import EventSourceResponse

from api.body import read_json
from api.browser import LOOPBACK_HOSTS, BrowserSafety
from api.events import KEEP_ALIVE_S, async_redis, job_events
from api.models import (
    MAX_URI_CHARS,
    CancelView,
    CatalogView,
    Health,
    JobAccepted,
    JobLinks,
    JobView,
    ProblemItem,
    SignBody,
    SignedView,
    SubmitEnvelope,
    ValidationReport,
    is_configured,
)
from api.problems import (
    ApiProblem,
    ProblemDocument,
    install_handlers,
    invalid,
    invalid_field,
    not_found,
    problem_responses,
    unavailable,
)
from api.quota import ConcurrencyCap, InFlightCap, TenantThreads
from api.submission import parse_submission
from api.tenants import Authenticator, Tenant
from contract.catalog import load_catalog
from contract.errors import MISSING, NodeValidationError, Problem
from contract.events import check_event_id
from contract.jobs import JobStatus
from contract.node import ImageGenerationNode
from contract.providers import reported_providers
from contract.result import JobResult
from contract.settings import Settings, get_settings
from contract.webhooks import DeliveryStatus
from producer.client import ImageGenClient, JobNotFound, QueueUnavailable, check_image_uri

log = logging.getLogger("api")

API_PREFIX = "/v1"
PLAYGROUND = Path(__file__).resolve().parent / "playground"
DOCUMENT_WAIT_S = 1.0  # a finished job's document is stored a round trip after the job is marked finished
RETRY_AFTER_AT_CAP_S = 10  # a job takes seconds to minutes: ask again in a while, not in a loop


@dataclass
class ApiState:
    settings: Settings
    client: ImageGenClient
    auth: Authenticator
    cap: InFlightCap
    aredis: Any  # redis.asyncio.Redis (untyped enough to keep mypy out of its generics)
    streams: ConcurrencyCap
    signs: ConcurrencyCap
    # A sign waits up to its timeout for a worker: on threads of its own, never the shared pool
    # that every other route's blocking calls run on (40 threads: 40 signs had stalled them all).
    sign_threads: anyio.CapacityLimiter
    # A submit resolves its webhook's host: on its tenant's own threads, for the same reason.
    submit_threads: TenantThreads


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application; refuses to start (TokenConfigError) outside development without tokens."""
    settings = settings or get_settings()
    auth = Authenticator(settings)  # at creation: a bad token setting fails before the port opens
    if auth.anonymous:
        log.warning("IMAGEGEN_API_TOKENS is empty: development mode, every caller is the tenant 'dev'")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = ImageGenClient(settings)
        cap = InFlightCap(client.records.client, settings.api_max_jobs_in_flight, settings.result_ttl_s)
        aredis = async_redis(settings.redis_url, settings.api_max_streams)
        streams = ConcurrencyCap(settings.api_max_streams_per_tenant, settings.api_max_streams)
        signs = ConcurrencyCap(settings.api_max_signs_per_tenant, settings.api_max_signs)
        sign_threads = anyio.CapacityLimiter(settings.api_max_signs)
        submit_threads = TenantThreads(settings.api_submit_threads_per_tenant)
        app.state.api = ApiState(settings, client, auth, cap, aredis, streams, signs, sign_threads, submit_threads)
        try:
            yield
        finally:
            await aredis.aclose()
            client.close()

    app = FastAPI(
        title="imagegen",
        version="1",
        summary="Image Generation node jobs over HTTP",
        description="The same jobs as the Python client and the `imagegen` CLI. See docs/api.md.",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN: off. The document is /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    install_handlers(app)
    # Without tokens, only this machine's own names: a DNS-rebound page must not act as "dev".
    hosts = LOOPBACK_HOSTS | settings.api_allowed_host_names if auth.anonymous else None
    app.add_middleware(BrowserSafety, allowed_hosts=hosts)
    _routes(app)
    _pages(app, settings)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app


def _pages(app: FastAPI, settings: Settings) -> None:
    """The Playground (static files, no build step: api/playground/) and, in development with local
    storage, the images themselves, so a browser can show what the worker wrote (set
    IMAGEGEN_STORAGE_PUBLIC_BASE_URL to <this API>/files). An <img> sends no token, so /files is
    not per tenant: a development convenience only. Production refuses local storage."""
    app.mount("/playground", StaticFiles(directory=PLAYGROUND, html=True), name="playground")

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/playground/")

    if settings.environment == "development" and "://" not in settings.storage_url:
        images = Path(settings.storage_url).expanduser()
        images.mkdir(parents=True, exist_ok=True)
        app.mount("/files", StaticFiles(directory=images, follow_symlink=False), name="files")


# --- dependencies ------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="A tenant's token (IMAGEGEN_API_TOKENS)")


# Dependencies are async (cheap, no I/O): FastAPI would run sync ones in the thread pool.
async def _state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


async def _tenant(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Tenant:
    auth = (await _state(request)).auth
    if auth.stale:
        await run_in_threadpool(auth.refresh)  # a file or Vault read, every IMAGEGEN_SECRET_CACHE_TTL_S
    tenant = auth.tenant_for(credentials.credentials if credentials else None)
    if tenant is None:
        detail = "a bearer token is required" if credentials is None else "the bearer token is not valid"
        raise ApiProblem(401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})
    return tenant


State = Annotated[ApiState, Depends(_state)]
Caller = Annotated[Tenant, Depends(_tenant)]


def _links(caller_id: str) -> JobLinks:
    base = f"{API_PREFIX}/jobs/{caller_id}"
    return JobLinks(self=base, events=f"{base}/events", cancel=f"{base}/cancel")


def _status(state: ApiState, tenant: Tenant, caller_id: str) -> JobStatus:
    try:
        job_id = tenant.job_id(caller_id)
    except NodeValidationError:
        raise not_found(caller_id) from None  # an id no job can have: unknown, like any other
    try:
        return state.client.status(job_id)
    except JobNotFound:
        raise not_found(caller_id) from None


def _finished_result(state: ApiState, status: JobStatus) -> JobResult | None:
    """The current result document of a finished job. The worker marks the job finished, then
    stores the document (a round trip later), then announces ``completed``: a reader in between
    waits for it, briefly."""
    deadline = time.monotonic() + DOCUMENT_WAIT_S
    while True:
        result = state.client.result(status.job_id)
        if result is not None or status.result_run is None or time.monotonic() > deadline:
            return result
        time.sleep(0.02)


def _view(state: ApiState, tenant: Tenant, status: JobStatus) -> JobView:
    caller_id = tenant.caller_id(status.job_id)
    result = _finished_result(state, status) if status.finished else None
    return JobView(
        job_id=caller_id,
        state=status.state,
        done=status.done,
        total=status.variations,
        name=status.name,
        model=status.model,
        run=status.run,
        cancel_requested=status.cancel_requested,
        submitted_at=status.submitted_at,
        started_at=status.started_at,
        finished_at=status.finished_at,
        result=None if result is None else result.model_copy(update={"job_id": caller_id}),
        links=_links(caller_id),
    )


# --- routes ------------------------------------------------------------------------------------


def _json_body(model: type[Any], *alternatives: type[Any]) -> dict[str, Any]:
    """OpenAPI for a body read by hand (api/body.py): the schema(s) it accepts."""
    refs = [{"$ref": f"#/components/schemas/{m.__name__}"} for m in (model, *alternatives)]
    schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_BODY_ERRORS = (400, 401, 413, 415, 422, 503)


def _routes(app: FastAPI) -> None:
    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> Health:
        """The process is up (liveness)."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["operations"], responses=problem_responses(503))
    async def readyz(state: State) -> Health:
        """Redis answers (readiness): 503 otherwise."""
        try:
            await state.aredis.ping()
        except (redis.RedisError, OSError) as exc:
            log.warning("not ready: Redis unreachable (%s)", type(exc).__name__)
            raise unavailable() from None
        return Health(status="ready")

    # HTTP wants HEAD wherever GET works; probes and load balancers use it. Out of the schema:
    # one operation per path and method there.
    app.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)
    app.add_api_route("/readyz", readyz, methods=["HEAD"], include_in_schema=False)

    @app.post(
        f"{API_PREFIX}/jobs",
        status_code=202,
        response_model=JobAccepted,
        tags=["jobs"],
        openapi_extra=_json_body(ImageGenerationNode, SubmitEnvelope),
        responses=problem_responses(
            *_BODY_ERRORS,
            409,
            429,
            ok={"model": JobAccepted, "description": "Submitted before with this node: nothing enqueued"},
        ),
    )
    async def submit(
        request: Request,
        state: State,
        tenant: Caller,
        idempotency_key: Annotated[
            str | None, Header(description="Your job id: the same key and node, one job")
        ] = None,
    ) -> JSONResponse:
        """Validate and enqueue a node (bare, or in an envelope with job_id / webhook / rerun)."""
        if len(request.headers.getlist("idempotency-key")) > 1:  # which one is the job id? neither
            raise invalid_field("Idempotency-Key", MISSING, "is sent more than once; send it once")
        raw, data = await read_json(request, state.settings.api_max_body_bytes, state.settings.api_body_timeout_s)
        work = functools.partial(_submit, state, tenant, raw, data, idempotency_key)
        accepted = await anyio.to_thread.run_sync(work, limiter=state.submit_threads.of(tenant.name))
        return JSONResponse(
            accepted.model_dump(mode="json"),
            status_code=202 if accepted.created else 200,
            headers={"Location": accepted.links.self},
        )

    @app.get(
        f"{API_PREFIX}/jobs/{{job_id:path}}/events",
        tags=["jobs"],
        response_class=EventSourceResponse,
        responses=problem_responses(
            401, 404, 422, 503, ok={"content": {"text/event-stream": {}}, "description": "Server-sent events"}
        ),
    )
    async def events(
        job_id: str,
        state: State,
        tenant: Caller,
        after: Annotated[str | None, Query(description="Resume after this event id")] = None,
        last_event_id: Annotated[
            str | None, Header(description="Resume after this event id (wins over ?after)")
        ] = None,
    ) -> EventSourceResponse:
        """The job's events as server-sent events: started, one per variation, (canceled), completed."""
        cursor = last_event_id if last_event_id is not None else after
        if cursor is not None:
            check_event_id(cursor, "Last-Event-ID" if last_event_id is not None else "after")
        status = await run_in_threadpool(_status, state, tenant, job_id)
        caller_id = tenant.caller_id(status.job_id)

        async def finished_result() -> dict[str, Any] | None:
            def read() -> dict[str, Any] | None:
                try:
                    now = state.client.status(status.job_id)
                except JobNotFound:
                    return {"job_id": status.job_id, "status": "expired"}
                if not now.finished or (now.result_run or 0) < status.run:
                    return None
                document = _finished_result(state, now)
                return {"job_id": status.job_id} if document is None else document.model_dump(mode="json")

            try:
                return await run_in_threadpool(read)
            except QueueUnavailable:
                return None

        _admit(
            state.streams,
            tenant,
            "streams",
            "event streams open",
            "IMAGEGEN_API_MAX_STREAMS",
            "close one, or follow several jobs from one client",
        )

        async def counted() -> AsyncIterator[Any]:
            try:
                async for item in job_events(state.aredis, status, caller_id, cursor, finished_result):
                    yield item
            finally:  # the stream ended, or the client went away (sse-starlette cancels it)
                state.streams.close(tenant.name)

        return EventSourceResponse(counted(), ping=KEEP_ALIVE_S, headers={"Cache-Control": "no-store"})

    @app.post(
        f"{API_PREFIX}/jobs/{{job_id:path}}/cancel",
        response_model=CancelView,
        tags=["jobs"],
        responses=problem_responses(401, 404, 503),
    )
    def cancel(job_id: str, state: State, tenant: Caller) -> CancelView:
        """Ask a queued or running job to stop; a finished job is left as it is (changed: false)."""
        status = _status(state, tenant, job_id)
        outcome = state.client.cancel(status.job_id)
        return CancelView(
            job_id=job_id,
            state=outcome.state,
            changed=outcome.changed,
            message=outcome.message.replace(status.job_id, job_id),
        )

    @app.get(
        f"{API_PREFIX}/jobs/{{job_id:path}}/webhooks",
        response_model=list[DeliveryStatus],
        tags=["jobs"],
        responses=problem_responses(401, 404, 503),
    )
    def webhooks(job_id: str, state: State, tenant: Caller) -> list[DeliveryStatus]:
        """How each of the job's webhook events fared: state (pending, delivered, failed, refused),
        attempts, last HTTP status and error, in event order; [] when it has no webhook."""
        status = _status(state, tenant, job_id)
        return state.client.webhook_deliveries(status.job_id)

    @app.get(
        f"{API_PREFIX}/jobs/{{job_id:path}}",
        response_model=JobView,
        tags=["jobs"],
        responses=problem_responses(401, 404, 503),
    )
    def job(job_id: str, state: State, tenant: Caller) -> JobView:
        """State, progress and, once finished, the result document."""
        return _view(state, tenant, _status(state, tenant, job_id))

    @app.post(
        f"{API_PREFIX}/validate",
        response_model=ValidationReport,
        tags=["nodes"],
        openapi_extra=_json_body(ImageGenerationNode, SubmitEnvelope),
        responses=problem_responses(400, 401, 413, 415),
    )
    async def validate(request: Request, state: State, tenant: Caller) -> ValidationReport:
        """Every problem of a node (as `imagegen validate` reports them) and its estimated cost; nothing is enqueued."""
        try:
            raw, data = await read_json(request, state.settings.api_max_body_bytes, state.settings.api_body_timeout_s)
        except NodeValidationError as exc:  # the document's own (a key twice, a number, the depth): reported alike
            return ValidationReport(valid=False, problems=[ProblemItem(**p) for p in exc.as_dicts()])
        return await run_in_threadpool(_validate, state, tenant, raw, data)

    @app.get(f"{API_PREFIX}/models", response_model=CatalogView, tags=["nodes"], responses=problem_responses(401))
    def models(state: State, tenant: Caller) -> CatalogView:
        """The model catalog: names, sizes with aspect ratio and tier, price per image."""
        catalog = load_catalog(state.settings.model_catalog_file, state.settings.model_catalog_replace)
        return CatalogView.of(catalog, state.settings, _reported_providers(state))

    @app.post(
        f"{API_PREFIX}/sign",
        response_model=SignedView,
        tags=["images"],
        openapi_extra=_json_body(SignBody),
        responses=problem_responses(*_BODY_ERRORS, 404, 502, 504),
    )
    async def sign(request: Request, state: State, tenant: Caller) -> SignedView:
        """A fresh URL for an image of one of your jobs (its durable ``uri``), signed by a worker."""
        _, data = await read_json(request, state.settings.api_max_body_bytes, state.settings.api_body_timeout_s)
        try:
            body = SignBody.model_validate(data)
        except ValidationError as exc:
            raise invalid(_sign_problems(exc)) from None
        try:
            check_image_uri(body.uri)  # a signed url given for the uri is told so, not "not found"
        except NodeValidationError as exc:
            raise invalid(exc) from None
        if not tenant.owns_uri(body.uri):
            # Another tenant's image and no image at all answer alike.
            raise ApiProblem(404, "image-not-found", "No such image", "no image of your jobs has this uri")
        _admit(state.signs, tenant, "signs", "signs waiting for a worker", "IMAGEGEN_API_MAX_SIGNS", "wait for one")
        try:
            sign = functools.partial(state.client.sign, body.uri, body.node, tenant=tenant.name)
            signed = await anyio.to_thread.run_sync(sign, limiter=state.sign_threads)
        finally:
            state.signs.close(tenant.name)
        return SignedView(uri=signed.uri, url=signed.url, url_expires_at=signed.url_expires_at)


def _admit(cap: ConcurrencyCap, tenant: Tenant, slug: str, what: str, setting: str, advice: str) -> None:
    """Count one more of ``what`` for ``tenant``, or refuse: 429 at the tenant's cap (the
    ``<setting>_PER_TENANT`` setting), 503 at the process's (``<setting>``)."""
    opened = cap.open(tenant.name)
    if opened == "tenant":
        raise ApiProblem(
            429,
            f"too-many-{slug}",
            f"Too many {what}",
            f"you have {cap.per_tenant} {what} here ({setting}_PER_TENANT); {advice}",
            headers={"Retry-After": str(RETRY_AFTER_AT_CAP_S)},
        )
    if opened == "process":
        raise ApiProblem(
            503,
            "busy",
            f"Too many {what} on this server",
            f"this API process has {cap.total} {what} ({setting}); try again shortly",
            headers={"Retry-After": str(RETRY_AFTER_AT_CAP_S)},
        )


SIGN_FIELDS = ("uri", "node")
_SIGN_RULES = {
    "uri": f"must be the image's durable uri from the result document, a string of at most {MAX_URI_CHARS} "
    "characters (e.g. s3://bucket/images/t/acme/run-42/variation-0.png)",
    "node": "must be the job's node JSON object, or left out (needed only for an image in the node's own cloud)",
}


def _sign_problems(error: ValidationError) -> NodeValidationError:
    """A /v1/sign body's problems, each saying what is allowed (not pydantic's own words)."""
    problems = []
    for e in error.errors():
        field = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            problems.append(Problem(field, MISSING, f"is not a known field; allowed: {', '.join(SIGN_FIELDS)}"))
        elif e["type"] == "missing":
            problems.append(Problem(field, MISSING, f"is required: it {_SIGN_RULES.get(field, 'must be given')}"))
        else:
            rule = _SIGN_RULES.get(field, f"must be a JSON object with {' and, optionally, '.join(SIGN_FIELDS)}")
            problems.append(Problem(field or "(document)", e.get("input"), rule))
    return NodeValidationError(problems, subject="request")


def _submit(
    state: ApiState, tenant: Tenant, raw: bytes, data: dict[str, Any], idempotency_key: str | None
) -> JobAccepted:
    submission = parse_submission(raw, data, state.settings, tenant, idempotency_key)
    job_id = submission.job_id or tenant.job_id(str(uuid.uuid4()))
    caller_id = tenant.caller_id(job_id)
    try:
        booking = state.cap.book(tenant.name, job_id, rerun=submission.rerun)
    except (redis.RedisError, OSError) as exc:
        raise QueueUnavailable(type(exc).__name__) from None
    if not booking.booked:
        raise ApiProblem(
            429,
            "too-many-jobs",
            "Too many jobs in flight",
            f"{booking.in_flight} of your jobs are queued or running; at most {state.cap.cap} "
            "(IMAGEGEN_API_MAX_JOBS_IN_FLIGHT); submit again when one has finished",
            headers={"Retry-After": str(RETRY_AFTER_AT_CAP_S)},
        )
    try:
        handle = state.client.submit(
            submission.node, job_id, rerun=submission.rerun, webhook=submission.webhook, context=submission.context
        )
    except BaseException:
        if booking.added:
            _release(state, tenant, job_id)
        raise
    if handle.created:
        if not booking.added:  # the id was a member (another request's booking, maybe released since)
            _keep(state, tenant, job_id)
        return JobAccepted(job_id=caller_id, state="queued", created=True, run=handle.run, links=_links(caller_id))
    if booking.added:
        _release(state, tenant, job_id)
    status = state.client.status(job_id)
    return JobAccepted(job_id=caller_id, state=status.state, created=False, run=status.run, links=_links(caller_id))


def _release(state: ApiState, tenant: Tenant, job_id: str) -> None:
    with contextlib.suppress(redis.RedisError, OSError):  # else the next booking prunes it
        state.cap.release(tenant.name, job_id)


def _keep(state: ApiState, tenant: Tenant, job_id: str) -> None:
    with contextlib.suppress(redis.RedisError, OSError):  # the job is enqueued: the answer is 202 all the same
        state.cap.keep(tenant.name, job_id)


def _reported_providers(state: ApiState) -> frozenset[str] | None:
    """What the workers said they can call (contract/providers.py); None when unknown."""
    try:
        return reported_providers(state.client.records.client, state.settings)
    except (redis.RedisError, OSError):
        return None


def _validate(state: ApiState, tenant: Tenant, raw: bytes, data: dict[str, Any]) -> ValidationReport:
    try:
        submission = parse_submission(raw, data, state.settings, tenant, None, resolve_webhook=False)
    except NodeValidationError as exc:
        return ValidationReport(valid=False, problems=[ProblemItem(**p) for p in exc.as_dicts()])
    inputs = submission.parsed.inputs
    catalog = load_catalog(state.settings.model_catalog_file, state.settings.model_catalog_replace)
    entry = catalog.get(inputs.model)
    price = entry.price_for(inputs.size) if entry is not None else None
    warnings = []
    reported = _reported_providers(state)
    if entry is not None and is_configured(entry.provider, state.settings, reported) is False:
        ready = [
            name for name in catalog.names() if is_configured(catalog.models[name].provider, state.settings, reported)
        ]
        message = (
            f"is not configured on this deployment's workers (provider {entry.provider}: no API key or Vertex AI): "
            f"a job would fail; configured: {', '.join(ready) or 'none'}"
        )
        warnings.append(ProblemItem(field="inputs.model", value=inputs.model, message=message))
    return ValidationReport(
        valid=True,
        problems=[],
        warnings=warnings,
        model=inputs.model,
        size=inputs.size,
        variations=inputs.variations,
        price_usd_per_image=price,
        estimated_cost_usd=None if price is None else round(price * inputs.variations, 6),
    )


# --- OpenAPI -----------------------------------------------------------------------------------


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's document plus the schemas of the bodies read by hand (the contract's own models)."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            _, extra = models_json_schema(
                [(m, "validation") for m in (ImageGenerationNode, SubmitEnvelope, SignBody, ProblemDocument)],
                ref_template="#/components/schemas/{model}",
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in extra.get("$defs", {}).items():
                schemas.setdefault(name, schema)
            app.openapi_schema = document
        return app.openapi_schema

    return build
