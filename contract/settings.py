"""One typed ``Settings`` for producer and worker, read from the environment.

Our own settings carry the ``IMAGEGEN_`` prefix; settings that the ecosystem
already names (``REDIS_URL``, ``GEMINI_API_KEY``, ...) keep those names.
Outside development, unsafe defaults are refused at start-up.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from functools import cached_property, lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.catalog import CatalogError, ModelCatalog, load_catalog
from contract.clouds import TargetError, TargetPolicy, canonical_prefix, parse_allowed_targets, storage_url_parts
from contract.errors import ImageGenError, excerpt
from contract.rate_limits import RateLimit, parse_rate_limits

SETTING_PREFIX = "IMAGEGEN_"
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?|\[[0-9a-f:.]+\]")  # IMAGEGEN_API_ALLOWED_HOSTS
MISSPELT_CUTOFF = 0.9  # difflib's ratio: ENVIRONMNET 0.95, WORKER_CONCURENCY 0.98; API_TOKEN_ACME 0.86 is no typo
POOL_HEADROOM = 16  # connections beyond one per worker slot: see Settings.pool_size
REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")  # the job store and result backend
BROKER_SCHEMES = ("amqp", "amqps", "pyamqp", *REDIS_SCHEMES)


class SettingsError(ImageGenError, ValueError):
    """A setting cannot be used. The message names each variable and what is allowed; it never
    carries the environment's values wholesale, as pydantic's own error does (API keys included)."""


def _host_names(text: str) -> tuple[str, ...]:
    """A comma-separated list of host names, as the settings that name hosts take it: trimmed, lowercased."""
    return tuple(name.strip().lower() for name in text.split(",") if name.strip())


_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _plaintext_problem(url: str | None, plaintext_hosts: tuple[str, ...]) -> str | None:
    """Why ``url`` may not carry the platform's secrets or images outside development, or None:
    it must be https://, unless its host is loopback or listed in IMAGEGEN_PLAINTEXT_HOSTS."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return "is not a URL"
    if parts.scheme == "https":
        return None
    if parts.scheme != "http" or not host:
        return "must be an https:// URL"
    if host in _LOOPBACK_HOSTS or host in plaintext_hosts:
        return None
    return (
        f"is plain http:// to {host!r}: what it carries would cross the network unencrypted; use https://, "
        "or list the host in IMAGEGEN_PLAINTEXT_HOSTS (a mesh's mTLS, on purpose)"
    )


def _check_url_parses(name: str, url: str, is_redis: bool) -> None:
    """A URL its client would refuse only at its first connection (a port that is not a number, a
    query value redis-py cannot read, a database that is not one) is refused at start-up, naming
    the setting and never quoting the URL (it may hold a password)."""
    from kombu.utils.url import parse_url as kombu_parse_url
    from redis.connection import parse_url as redis_parse_url

    try:
        if is_redis:
            redis_parse_url(url)  # type: ignore[no-untyped-call]
            database = urlsplit(url).path.strip("/")
            if not url.startswith("unix:") and database and not database.isdigit():  # unix: a socket's path
                raise ValueError("the path must be a database number, e.g. /0")
        else:
            kombu_parse_url(url)
            urlsplit(url).port  # noqa: B018  # raises on a port that is not a number
    except ValueError as exc:
        reason = str(exc).split(": '", 1)[0].split(" as '", 1)[0]  # without any part of the URL
        raise ValueError(f"{name} is not a URL its client can use: {reason}") from None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=SETTING_PREFIX, extra="ignore")

    def __init__(self, **values: Any) -> None:
        misspelt = _misspelt_variables(os.environ)
        if misspelt:
            raise SettingsError("invalid settings: " + "; ".join(misspelt))
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from None

    environment: Literal["development", "production"] = "development"

    # --- queue and results -------------------------------------------------
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    queue: str = "imagegen"
    result_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    # Result documents (and the chord's variation records) stored compressed: a 4-image
    # document takes ~1 KB instead of 3.7. Any Celery >= 5.7 reader decodes them whatever
    # its own setting (the payload says it is compressed); "none" for older Celery readers.
    result_compression: Literal["zlib", "none"] = "zlib"

    # --- broker (docs/reliability.md, "Brokers") -------------------------------
    # Empty: REDIS_URL is the broker too. amqp://user:pw@host:5672/vhost: RabbitMQ
    # (a quorum queue, native delayed delivery) while Redis stays result backend and
    # job store. REDIS_URL and this also take sentinel://h1:p1,h2:p2/service/db
    # (contract/redis_client.py).
    broker_url: str = ""

    @model_validator(mode="after")
    def _broker_urls_parse(self) -> Settings:
        from contract.redis_client import SentinelURL, is_sentinel

        for name, url, schemes in (
            ("REDIS_URL", self.redis_url, REDIS_SCHEMES),
            ("IMAGEGEN_BROKER_URL", self.broker_url, BROKER_SCHEMES),
        ):
            if not url:
                continue
            scheme = url.split("://", 1)[0] if "://" in url else ""
            if scheme not in schemes:
                raise ValueError(f"{name}: scheme {scheme or '(none)'!r} is not one of {', '.join(schemes)}")
            if is_sentinel(url):
                try:
                    SentinelURL.parse(url)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
            else:
                _check_url_parses(name, url, scheme in REDIS_SCHEMES)
        return self

    # How long the producer (Python client, CLI, HTTP API) waits out an unreachable, full or
    # failing-over Redis before it answers QueueUnavailable (CLI exit 5, HTTP 503). Workers
    # always wait ~35 s: their bookkeeping must not be dropped.
    client_redis_patience_s: float = Field(35.0, ge=0, le=600)

    @property
    def broker(self) -> str:
        """The broker URL in effect: IMAGEGEN_BROKER_URL, else REDIS_URL."""
        return self.broker_url or self.redis_url

    # --- the node contract ---------------------------------------------------
    model_catalog_file: str | None = None
    model_catalog_replace: bool = False
    max_variations: int = Field(8, ge=1, le=64)
    max_prompt_chars: int = Field(8000, ge=1)
    # A whole node document (text, bytes, or a dict's compact JSON) is at most this
    # many bytes, measured before it is parsed (contract/documents.py).
    max_node_bytes: int = Field(65536, ge=1024, le=16 * 1024 * 1024)

    # --- retries, time limits (seconds) --------------------------------------
    retry_max_retries: int = Field(5, ge=0)
    retry_base_delay_s: float = Field(2.0, ge=0)
    retry_max_delay_s: float = Field(60.0, ge=0)
    retry_max_total_s: float = Field(600.0, ge=0)
    task_soft_time_limit_s: int = Field(300, ge=1)
    task_time_limit_s: int = Field(330, ge=1)
    # Redis broker only: an unacked message older than this is redelivered, so a
    # killed worker's tasks resume after it (plus up to one sweep). 900 s covers the
    # longest honest hold: a 60 s countdown, up to 330 s waiting for a slot behind
    # busy generations, 330 s of its own run (docs/reliability.md, "Brokers").
    visibility_timeout_s: int = 900
    # A queued or running job with no progress (submitted, started, a variation
    # finished) for this long is ended "failed" with a "lost" error: its messages
    # are gone (a broker that lost data, a worker dead mid-dispatch on an old
    # version). Checked by every worker every IMAGEGEN_LOST_SWEEP_S and by waiting clients.
    job_deadline_s: int = Field(2 * 3600, ge=1)
    lost_sweep_s: int = Field(60, ge=1)
    # How often a worker looks for messages whose consumer died (kombu's
    # default is ~100 s: a 10 s timer that scans every 10th tick).
    redelivery_sweep_s: int = Field(30, ge=1)

    # --- job events and webhooks (contract/events.py, contract/webhooks.py) ------
    # Each job's event stream keeps about this many entries (XADD MAXLEN ~); it expires with the job.
    events_max_len: int = Field(1000, ge=100, le=100_000)
    # How long a job's event log outlives the job's end (the result document and the job record
    # keep IMAGEGEN_RESULT_TTL_S): it serves live followers, late readers resuming and webhook
    # retries; a reader after that gets the result document as the one "completed" event.
    events_retention_s: int = Field(3600, ge=60)
    # Webhook deliveries: one POST per attempt with this timeout; 5xx, 408, 429, timeouts and
    # dropped connections are retried with exponential backoff up to the attempts; other 4xx are not.
    # A retry never waits longer than IMAGEGEN_RETRY_MAX_DELAY_S either (the visibility timeout's bound).
    webhook_timeout_s: float = Field(10.0, gt=0, le=60)
    webhook_max_attempts: int = Field(8, ge=1, le=30)
    webhook_retry_base_delay_s: float = Field(2.0, ge=0)
    webhook_retry_max_delay_s: float = Field(60.0, ge=0)

    # --- HTTP API (api/, docs/api.md) ---------------------------------------------
    # Who may call it: comma-separated tenant=reference (env:NAME, file:/path, vault:path#key),
    # the reference naming the tenant's bearer token. Checked when the API starts (api/tenants.py);
    # outside development the API refuses to start without any.
    api_tokens: str = ""
    api_max_jobs_in_flight: int = Field(100, ge=1)  # per tenant: queued + running; more gets 429
    api_max_streams_per_tenant: int = Field(50, ge=1)  # open event streams per tenant and API process
    api_max_streams: int = Field(200, ge=1, le=10_000)  # all tenants' open event streams per API process
    api_max_signs_per_tenant: int = Field(4, ge=1)  # POST /v1/sign waiting for a worker, per tenant and process
    api_max_signs: int = Field(16, ge=1, le=1000)  # all tenants' signs waiting, per API process (own threads)
    api_submit_threads_per_tenant: int = Field(8, ge=1, le=256)  # a tenant's submits at once; more wait
    api_max_body_bytes: int = Field(256 * 1024, ge=1024, le=16 * 1024 * 1024)  # a larger body gets 413
    api_body_timeout_s: float = Field(30.0, gt=0, le=600)  # a body not all there by then gets 408
    # Without tokens (development: every caller is the tenant "dev") the API answers only requests
    # whose Host is localhost, 127.0.0.1 or [::1] (any port), so a page whose name was re-pointed at
    # this machine (DNS rebinding) cannot use it; comma-separated host names or addresses (no port)
    # named here are answered too (api/browser.py). With tokens, any Host is answered.
    api_allowed_hosts: str = ""

    @model_validator(mode="after")
    def _api_allowed_hosts_parse(self) -> Settings:
        for entry in self.api_allowed_host_names:
            if _HOST_NAME.fullmatch(entry) is None:
                raise ValueError(
                    f"IMAGEGEN_API_ALLOWED_HOSTS: entry {excerpt(entry)!r} must be a host name or address without "
                    "a port (an IPv6 address in brackets: [fd00::1])"
                )
        return self

    # --- provider quota, shared by all workers (contract/rate_limits.py) -------
    rate_limits: str = ""  # API model id = calls per minute[:burst], comma-separated

    # --- worker pool ----------------------------------------------------------
    worker_pool: Literal["threads", "prefork", "gevent", "solo"] = "threads"
    # Generations in flight per worker process. Every connection pool of the process (Redis
    # broker, result backend and job store; the Gemini and storage HTTP clients) is sized
    # from it (pool_size). 512 is the most measured to work (docs/pools.md).
    worker_concurrency: int = Field(256, ge=1, le=512)
    # All of the worker's threads on one CPU (worker/cpu_affinity.py): "" leaves them to the OS;
    # "first" is the lowest CPU the process may run on; a number is that CPU. Only where the pod
    # owns its CPUs (docs/pools.md): workers pinned alike on shared CPUs pile onto one.
    worker_cpu: str = ""

    @field_validator("worker_cpu")
    @classmethod
    def _cpu_named(cls, value: str) -> str:
        value = value.strip()
        if value and value != "first" and not (value.isascii() and value.isdigit() and len(value) <= 4):
            raise ValueError(
                "not a CPU: use a CPU number, 'first' (the lowest CPU this process may run on) "
                "or leave it empty (threads left to the OS)"
            )
        return value

    heartbeat_file: str = "/tmp/imagegen-worker-heartbeat"  # liveness probe checks its age
    # Celery's "Task x[id] received" line for every task (worker/celery_app.py). Off: Flower's
    # task-received event and the job's own lines say the same, and it was a third of the log.
    log_task_received: bool = False
    # Prometheus metrics of the worker process (worker/metrics.py); 0: none served.
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"  # scraped from outside the pod

    # --- storage --------------------------------------------------------------
    storage_url: str = "./var/images"
    storage_public_base_url: str | None = None
    # At most 7 days (S3's limit); Azure user-delegation SAS URLs are capped at 7 days less an hour
    # (worker/storage/azure_blob.py).
    signed_url_ttl_s: int = Field(3600, ge=60, le=7 * 24 * 3600)
    # Who may write where (contract/clouds): a node without its own credential reference may
    # target only these (comma-separated s3://bucket[/prefix], gs://bucket[/prefix],
    # az://account-host/container[/prefix]); the worker's identity serves nothing else.
    allowed_targets: str = ""
    # Endpoint hosts a node or a referenced secret may name beyond the clouds' public ones
    # ("host" exactly, ".suffix" for any name under it); production accepts nothing else.
    allowed_endpoint_hosts: str = ""
    # Outside development, the platform's own endpoints that carry secrets or images (VAULT_ADDR,
    # GOOGLE_GEMINI_BASE_URL, IMAGEGEN_STORAGE_PUBLIC_BASE_URL) must be https://, or a loopback host
    # (a sidecar such as Vault Agent), or a host named here (comma-separated, exact): plain HTTP on
    # purpose, e.g. an in-cluster service behind a mesh's mTLS. Never a node's endpoint.
    plaintext_hosts: str = ""

    # --- cloud storage and secret references (worker only) ----------------------
    # Uploads: a few quick retries of throttling/5xx/dropped connections, then a
    # "storage" error record; each SDK's own retries are off so this is the one policy.
    storage_retry_attempts: int = Field(4, ge=1, le=10)
    storage_retry_max_delay_s: float = Field(2.0, ge=0)
    storage_timeout_s: float = Field(30.0, gt=0)
    # Platform az:// storage: AZURE_STORAGE_CONNECTION_STRING (read as the secret
    # reference env:AZURE_STORAGE_CONNECTION_STRING) wins; else this URL with the
    # default Azure credential chain (managed / workload identity).
    azure_storage_account_url: str | None = Field(None, validation_alias="AZURE_STORAGE_ACCOUNT_URL")
    # vault:<path>#<key> references: standard Vault variables keep their names.
    vault_addr: str | None = Field(None, validation_alias="VAULT_ADDR")
    vault_token: SecretStr | None = Field(None, validation_alias="VAULT_TOKEN")
    vault_namespace: str | None = Field(None, validation_alias="VAULT_NAMESPACE")
    vault_k8s_role: str | None = Field(None, validation_alias="VAULT_K8S_ROLE")  # set: Kubernetes auth, not a token
    vault_k8s_mount: str = "kubernetes"
    vault_k8s_token_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    vault_mount: str = "secret"  # the KV v2 mount; "vault:secret/a#k" and "vault:a#k" both read a
    # Resolved secrets and the storage clients built from them live this long in a
    # worker process, so a rotated credential is picked up without a restart.
    secret_cache_ttl_s: float = Field(300.0, ge=0)
    # Comma-separated reference prefixes, matched by whole path segments (not as
    # strings), e.g. "vault:secret/imagegen/tenants"; empty allows any
    # (development only). Rules: contract/secret_refs.py.
    allowed_secret_refs: str = ""
    # What a tenant's job (id t/<tenant>/..., the HTTP API) may name besides: the same entries
    # with a {tenant} placeholder, e.g. "vault:secret/imagegen/tenants/{tenant}"; empty: tenants
    # may name no reference outside development (contract/tenancy.py).
    tenant_secret_refs: str = ""

    @model_validator(mode="after")
    def _allowed_secret_refs_parse(self) -> Settings:
        from contract.secret_refs import parse_allow_list  # here: keeps the module graph one-way
        from contract.tenancy import check_tenant_templates

        try:
            parse_allow_list(self.allowed_secret_refs, self.vault_mount)
        except ValueError as exc:
            raise ValueError(f"IMAGEGEN_ALLOWED_SECRET_REFS: {exc}") from None
        try:
            check_tenant_templates(self.tenant_secret_refs, self.vault_mount)
        except ValueError as exc:
            raise ValueError(f"IMAGEGEN_TENANT_SECRET_REFS: {exc}") from None
        return self

    # --- offline preview model (tests, demo, benchmarks) ----------------------
    offline_latency_s: float = Field(0.0, ge=0)
    offline_failures: str = ""

    # --- Gemini (google-genai's own variable names) ---------------------------
    gemini_api_key: SecretStr | None = Field(None, validation_alias="GEMINI_API_KEY")
    google_api_key: SecretStr | None = Field(None, validation_alias="GOOGLE_API_KEY")
    gemini_base_url: str | None = Field(
        None, validation_alias=AliasChoices("GOOGLE_GEMINI_BASE_URL", "IMAGEGEN_GEMINI_BASE_URL")
    )
    gemini_use_vertexai: bool = Field(False, validation_alias="GOOGLE_GENAI_USE_VERTEXAI")
    google_cloud_project: str | None = Field(None, validation_alias="GOOGLE_CLOUD_PROJECT")
    google_cloud_location: str | None = Field(None, validation_alias="GOOGLE_CLOUD_LOCATION")
    gemini_api_version: str = "v1beta"
    gemini_timeout_s: float = Field(120.0, gt=0)  # the whole call, not each read (worker/providers/http_budget.py)
    # A 4K PNG in base64 stays well under this; it bounds a broken or hostile endpoint's answer.
    gemini_max_response_mb: int = Field(128, ge=1, le=1024)
    # Image answers one worker process reads, decodes and stores at once, by their estimated size
    # (worker/providers/answer_gate.py): about 3 answers of 4096x4096, 60 of 1024x1024. 0: no limit.
    answer_memory_mb: int = Field(128, ge=0, le=65536)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.worker_cpu and self.worker_pool == "prefork":
            raise ValueError(
                f"IMAGEGEN_WORKER_CPU={self.worker_cpu} with IMAGEGEN_WORKER_POOL=prefork: its child processes "
                "would all share the one CPU; pin with the threads, gevent or solo pool"
            )
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            raise ValueError("IMAGEGEN_TASK_SOFT_TIME_LIMIT_S must be below IMAGEGEN_TASK_TIME_LIMIT_S")
        # An unacked message older than the visibility timeout is redelivered:
        # it must outlive the longest run plus the longest retry countdown.
        floor = self.task_time_limit_s + self.retry_max_delay_s
        if self.visibility_timeout_s <= floor:
            raise ValueError(
                f"IMAGEGEN_VISIBILITY_TIMEOUT_S={self.visibility_timeout_s} must exceed "
                f"task time limit + longest retry delay ({floor:g} s), or tasks run twice"
            )
        # A webhook delivery reads its event from the log: the log must outlive every retry.
        horizon = self.webhook_max_attempts * (
            min(self.webhook_retry_max_delay_s, self.retry_max_delay_s) + self.webhook_timeout_s
        )
        if self.events_retention_s < horizon:
            raise ValueError(
                f"IMAGEGEN_EVENTS_RETENTION_S={self.events_retention_s} is shorter than a webhook's "
                f"retries ({horizon:g} s: attempts x (longest delay + timeout))"
            )
        # A bad catalog file or quota fails at start-up, not at the first job.
        try:
            catalog = load_catalog(self.model_catalog_file, self.model_catalog_replace)
        except CatalogError as exc:
            raise ValueError(f"IMAGEGEN_MODEL_CATALOG_FILE: {exc}") from None
        self._check_rate_limits(catalog)
        self.target_policy  # noqa: B018  # a bad IMAGEGEN_ALLOWED_TARGETS entry fails at start-up
        cloud_storage = storage_url_parts(self.storage_url)
        if cloud_storage is not None:
            try:  # a 't' segment in the platform prefix: every image would be refused at its upload
                canonical_prefix(cloud_storage.path)
            except TargetError as exc:
                raise ValueError(f"IMAGEGEN_STORAGE_URL {excerpt(self.storage_url)}: its prefix {exc}") from None
        if self.environment != "development":
            self._refuse_unsafe_defaults()
        return self

    def _check_rate_limits(self, catalog: ModelCatalog) -> None:
        """Quotas are keyed by the API's model ids: a node's model name there would book nothing.
        An id the catalog does not list is allowed (a retired id an override file replaced, a
        quota kept for a model added later)."""
        entries = catalog.models | catalog.text_models  # by name
        ids = {entry.model_id for entry in entries.values()}
        for model_id in parse_rate_limits(self.rate_limits):
            if model_id in entries and model_id not in ids:
                raise ValueError(
                    f"IMAGEGEN_RATE_LIMITS names {model_id!r}, a model name; quotas are keyed by model id: "
                    f"{entries[model_id].model_id!r}"
                )

    def _refuse_unsafe_defaults(self) -> None:
        problems = []
        if storage_url_parts(self.storage_url) is None:
            problems.append(
                "IMAGEGEN_STORAGE_URL is a local directory: other pods and the next node "
                "cannot read it; use s3://, az:// or gs://"
            )
        if not self.secret_ref_prefixes:
            problems.append("IMAGEGEN_ALLOWED_SECRET_REFS is empty: nodes could name any secret the workers can read")
        if self.offline_latency_s or self.offline_failures:
            problems.append("IMAGEGEN_OFFLINE_LATENCY_S / IMAGEGEN_OFFLINE_FAILURES are test knobs")
        redelivered = self.visibility_timeout_s + self.redelivery_sweep_s
        if self.job_deadline_s <= redelivered:
            problems.append(
                f"IMAGEGEN_JOB_DEADLINE_S={self.job_deadline_s} is not above the visibility timeout plus one "
                f"redelivery sweep ({redelivered} s): a killed worker's job would end lost before its "
                "variations come back"
            )
        attempt = self.gemini_timeout_s + self.storage_retry_attempts * (
            self.storage_timeout_s + self.storage_retry_max_delay_s
        )
        if attempt >= self.task_soft_time_limit_s:
            # The threads pool enforces no time limit: these timeouts are what bound an attempt,
            # and the visibility timeout and the pods' grace period are sized from the limits.
            problems.append(
                f"an attempt may take {attempt:g} s (IMAGEGEN_GEMINI_TIMEOUT_S + IMAGEGEN_STORAGE_RETRY_ATTEMPTS x "
                "(IMAGEGEN_STORAGE_TIMEOUT_S + IMAGEGEN_STORAGE_RETRY_MAX_DELAY_S)), not below "
                f"IMAGEGEN_TASK_SOFT_TIME_LIMIT_S={self.task_soft_time_limit_s}"
            )
        plaintext = _host_names(self.plaintext_hosts)
        for variable, url in (
            ("VAULT_ADDR", self.vault_addr),
            ("GOOGLE_GEMINI_BASE_URL", self.gemini_base_url),
            ("IMAGEGEN_STORAGE_PUBLIC_BASE_URL", self.storage_public_base_url),
        ):
            problem = _plaintext_problem(url, plaintext)
            if problem is not None:
                problems.append(f"{variable} {problem}")
        if problems:
            raise ValueError(f"unsafe for environment={self.environment}: " + "; ".join(problems))

    @property
    def pool_size(self) -> int:
        """Connections any one client pool of a worker process may open: one per slot, plus the
        worker's own users (consumer, events, heartbeat, lost-job sweep, chord callbacks)."""
        return self.worker_concurrency + POOL_HEADROOM

    @property
    def rate_limit_table(self) -> dict[str, RateLimit]:
        return parse_rate_limits(self.rate_limits)

    @cached_property
    def target_policy(self) -> TargetPolicy:
        return TargetPolicy(
            production=self.environment != "development",
            allowed_targets=parse_allowed_targets(self.allowed_targets),
            allowed_endpoint_hosts=_host_names(self.allowed_endpoint_hosts),
        )

    @property
    def api_allowed_host_names(self) -> frozenset[str]:
        """IMAGEGEN_API_ALLOWED_HOSTS' entries, lowercased (checked by _api_allowed_hosts_parse)."""
        return frozenset(_host_names(self.api_allowed_hosts))

    @property
    def secret_ref_prefixes(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.allowed_secret_refs.split(",") if p.strip())


# What Kubernetes sets for each Service in the namespace (unless enableServiceLinks: false):
# IMAGEGEN_WORKER_PORT=tcp://10.0.0.5:9808 is a link, not a misspelt IMAGEGEN_WORKER_POOL.
_SERVICE_LINK = re.compile(
    r"[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)"
)
_SERVICE_LINK_VALUE = re.compile(r"(tcp|udp|sctp)(://[0-9a-fA-F.:\[\]]+:[0-9]+)?|[0-9a-fA-F.:]+|[0-9]+")


@lru_cache(maxsize=1)
def _variable_names() -> frozenset[str]:
    """Every environment variable a setting is read from."""
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        else:
            names.add(alias if isinstance(alias, str) else f"IMAGEGEN_{name.upper()}")
    return frozenset(names)


def _misspelt_variables(environ: Mapping[str, str]) -> list[str]:
    """``IMAGEGEN_`` variables that are no setting but nearly spell one. pydantic-settings ignores
    unknown names, so ``IMAGEGEN_ENVIRONMNET=production`` would leave a deployment in development
    mode, every production refusal off. Names a secret reference may use (``env:`` in
    IMAGEGEN_API_TOKENS or IMAGEGEN_ALLOWED_SECRET_REFS) are no typo."""
    ours = sorted(n for n in _variable_names() if n.startswith(SETTING_PREFIX))
    refs = (
        entry.split("=", 1)[-1].strip()  # "tenant=env:NAME" in the tokens, "env:PREFIX" in the allow-list
        for entry in (
            *environ.get("IMAGEGEN_API_TOKENS", "").split(","),
            *environ.get("IMAGEGEN_ALLOWED_SECRET_REFS", "").split(","),
        )
    )
    referenced = [ref.removeprefix("env:") for ref in refs if ref.startswith("env:")]
    problems = []
    for name in sorted(environ):
        if not name.startswith(SETTING_PREFIX) or name in ours:
            continue
        if any(name.startswith(prefix) for prefix in referenced if prefix):
            continue
        if _SERVICE_LINK.fullmatch(name) and _SERVICE_LINK_VALUE.fullmatch(environ[name]):
            continue  # Kubernetes' variables for a Service named imagegen-<something>
        close = difflib.get_close_matches(name, ours, n=1, cutoff=MISSPELT_CUTOFF)
        if close:
            problems.append(
                f"{name} is set but is no setting: did you mean {close[0]}? (a misspelt name would be "
                "ignored and the default used; a variable meant as something else needs another name)"
            )
    return problems


def _describe(error: ValidationError) -> str:
    """One line per problem: the variable, its value unless secret, and the rule it broke."""
    lines = []
    for problem in error.errors(include_url=False):
        message = str(problem["msg"]).removeprefix("Value error, ")
        if not problem["loc"]:  # a rule across settings: its message names the variables
            lines.append(message)
            continue
        name = str(problem["loc"][0])
        field = Settings.model_fields.get(name)
        alias = field.validation_alias if field is not None else None
        variable = (
            alias.choices[0] if isinstance(alias, AliasChoices) else alias if isinstance(alias, str) else None
        ) or f"IMAGEGEN_{name.upper()}"
        value = problem.get("input")
        secret = (field is not None and "SecretStr" in str(field.annotation)) or "@" in str(value)  # a URL's password
        shown = "" if secret or "input" not in problem else f"={excerpt(value)!r}"
        lines.append(f"{variable}{shown}: {message}")
    return "invalid settings: " + "; ".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; tests build their own)."""
    return Settings()
