"""Who is calling, and the namespace their jobs live in.

Callers are tenants. ``IMAGEGEN_API_TOKENS`` lists them as ``tenant=reference``;
the reference (``env:NAME``, ``file:/path``, ``vault:path#key``, canonicalised
by contract/secret_refs.py) names the tenant's bearer token, so the setting
itself holds no secret. A presented token is compared with every tenant's in
constant time (``hmac.compare_digest`` of SHA-256 digests: equal lengths, no
early exit), and tokens are re-read every ``IMAGEGEN_SECRET_CACHE_TTL_S`` so a
rotated one is picked up without a restart.

Development without tokens: one anonymous tenant, ``dev``. Any other
environment refuses to start without tokens.

A tenant's jobs are stored under ``t/<tenant>/<caller's id>`` (the job id
grammar's ``/`` segments, contract/job_ids.py): another tenant's id simply
does not exist in the caller's namespace (404, as for an unknown id), and the
images land under a per-tenant storage prefix. Callers only ever see their own id.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
from dataclasses import dataclass

from contract.errors import NodeValidationError, Problem
from contract.job_ids import GRAMMAR, MAX_JOB_ID_CHARS, NAMESPACE_ROOT, check_job_id
from contract.secret_reader import SecretReadError, read_secret
from contract.secret_refs import SecretRef, parse_secret_ref
from contract.settings import Settings
from contract.tenancy import TENANT_NAME, check_env_template_tenants, first_namespace

log = logging.getLogger("api.tenants")

DEV_TENANT = "dev"
MAX_TENANT_CHARS = 32
MIN_TOKEN_CHARS = 16
# Route suffixes: GET /v1/jobs/<id>/events must not also be the job "<id>/events".
RESERVED_LAST_SEGMENTS = ("events", "cancel", "webhooks")
# A namespace prefix that begins a job id in a message: not preceded by a job id character, so
# a ``t/<x>/`` inside the caller's own id (``t/acme/t/globex/zz``: acme's job "t/globex/zz") is not one.
_NAMESPACED = re.compile(rf"(?<![A-Za-z0-9._/-]){NAMESPACE_ROOT}/({TENANT_NAME.pattern})/(?=[A-Za-z0-9._-])")


class TokenConfigError(ValueError):
    """IMAGEGEN_API_TOKENS cannot be used (bad syntax, an unreadable reference): the API does not start."""


def parse_api_tokens(text: str) -> dict[str, SecretRef]:
    """``tenant=reference,...`` into tenant -> canonical reference; TokenConfigError naming the entry."""
    tenants: dict[str, SecretRef] = {}
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        tenant, eq, reference = (part.strip() for part in entry.partition("="))
        if not eq or TENANT_NAME.fullmatch(tenant) is None:
            raise TokenConfigError(
                f"IMAGEGEN_API_TOKENS: entry {tenant[:40]!r} must be tenant=reference, the tenant 1-{MAX_TENANT_CHARS} "
                "of A-Z a-z 0-9 . _ - (not starting with '.')"
            )
        if tenant in tenants:
            raise TokenConfigError(f"IMAGEGEN_API_TOKENS: tenant {tenant!r} is listed twice")
        try:
            tenants[tenant] = parse_secret_ref(reference)
        except ValueError as exc:
            raise TokenConfigError(f"IMAGEGEN_API_TOKENS: the reference of tenant {tenant!r} {exc}") from None
    return tenants


def resolve_token(reference: SecretRef, settings: Settings) -> str:
    """The token a reference names, read by the reader the workers use too (contract/secret_reader.py).
    These references are the operator's, not a tenant's: no allow-list applies."""
    try:
        value = read_secret(reference, settings)
    except SecretReadError as exc:  # Vault down at start or on a re-read alike: the tokens in use stay
        raise TokenConfigError(str(exc)) from None
    if len(value) < MIN_TOKEN_CHARS:
        raise TokenConfigError(f"{reference}: the token is shorter than {MIN_TOKEN_CHARS} characters")
    return value


@dataclass(frozen=True)
class Tenant:
    name: str

    @property
    def prefix(self) -> str:
        return f"{NAMESPACE_ROOT}/{self.name}/"

    def job_id(self, caller_id: str) -> str:
        """The internal job id of the caller's ``caller_id``; NodeValidationError naming job_id when invalid."""
        check_job_id(caller_id)  # t/<tenant>/ comes first: a 't' in the caller's id stays in its namespace
        room = MAX_JOB_ID_CHARS - len(self.prefix)
        if len(caller_id) > room:
            raise _job_id_problem(caller_id, f"is {len(caller_id)} characters; at most {room} for this tenant")
        if caller_id.rsplit("/", 1)[-1] in RESERVED_LAST_SEGMENTS:
            words = " or ".join(repr(s) for s in RESERVED_LAST_SEGMENTS)
            raise _job_id_problem(caller_id, f"must not end with the segment {words} (API routes)")
        return self.prefix + caller_id

    def caller_id(self, job_id: str) -> str:
        return job_id.removeprefix(self.prefix)

    def owns_uri(self, uri: str) -> bool:
        """Whether ``uri`` names an object under this tenant's jobs: ``.../t/<tenant>/<job>/<file>``
        where that ``t`` is the first segment named ``t`` of its path (a job id of another tenant
        that contains ``t/<this tenant>`` comes after its own ``t/<other>``). The uri must be plain:
        no query, fragment, percent-escape, backslash, empty or dot segment that a store would read
        differently; an operator prefix with its own ``t`` segment fails closed."""
        if not uri.isascii() or not uri.isprintable() or any(c in uri for c in "?#%\\ "):
            return False
        scheme, sep, rest = uri.partition("://")
        if not sep or not scheme:
            return False
        segments = rest.split("/")[1:]  # the path after the host (file:/// has an empty host)
        if any(s in ("", ".", "..") for s in segments) or first_namespace(segments) != self.name:
            return False
        return len(segments) >= segments.index(NAMESPACE_ROOT) + 4  # t/<tenant>/<job...>/<file>


def _job_id_problem(value: str, message: str) -> NodeValidationError:
    return NodeValidationError([Problem("job_id", value, f"{message}; {GRAMMAR}")], subject="job id")


def strip_namespaces(text: str, tenant: str | None = None) -> str:
    """Messages written with internal ids (``t/<tenant>/<id>``), shown with the caller's: the
    namespace prefix that begins an id is removed, and only ``tenant``'s (None: the tenant of the
    first id the message names, the job's own). The rest of an id is the caller's and stays whole
    (``t/acme/t/globex/zz`` is shown ``t/globex/zz``, never ``zz``); an id in another tenant's
    namespace is left as written, never shown as if it were one of the caller's."""
    if tenant is None:
        first = _NAMESPACED.search(text)
        if first is None:
            return text
        tenant = first.group(1)
    return _NAMESPACED.sub(lambda found: "" if found.group(1) == tenant else found.group(0), text)


class Authenticator:
    """Bearer token -> tenant. Tokens are resolved at start (a bad reference, or one token for two
    tenants, stops the start) and re-read every ``IMAGEGEN_SECRET_CACHE_TTL_S``; a failed re-read
    keeps the tokens in use."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.references = parse_api_tokens(settings.api_tokens)
        try:  # acme_eu beside acme: an env: template could not tell their variables apart
            check_env_template_tenants(self.references, settings)
        except ValueError as exc:
            raise TokenConfigError(f"IMAGEGEN_API_TOKENS: {exc}") from None
        if not self.references and settings.environment != "development":
            raise TokenConfigError(
                f"IMAGEGEN_API_TOKENS is empty: environment={settings.environment} refuses an API anyone can call"
            )
        self._lock = threading.Lock()
        self._digests: list[tuple[str, bytes]] = []
        self._expires = 0.0
        self._load()

    @property
    def anonymous(self) -> bool:
        return not self.references

    def _load(self) -> None:
        digests = [
            (tenant, hashlib.sha256(resolve_token(ref, self.settings).encode()).digest())
            for tenant, ref in self.references.items()
        ]
        # One token for two tenants would make every caller with it the last one listed (it would
        # see and cancel the other's jobs): refused at start; on a re-read, the tokens in use stay.
        owners: dict[bytes, str] = {}
        for tenant, digest in digests:
            if digest in owners:
                raise TokenConfigError(
                    f"IMAGEGEN_API_TOKENS: tenants {owners[digest]!r} and {tenant!r} have the same token; "
                    "give each tenant its own"
                )
            owners[digest] = tenant
        with self._lock:
            self._digests = digests
            self._expires = time.monotonic() + self.settings.secret_cache_ttl_s

    @property
    def stale(self) -> bool:
        """Whether the tokens are due to be re-read (``refresh``, blocking: a file or Vault read)."""
        return not self.anonymous and time.monotonic() >= self._expires  # TTL 0: on every request

    def refresh(self) -> None:
        try:
            self._load()
        except TokenConfigError as exc:
            log.error("re-reading IMAGEGEN_API_TOKENS failed, keeping the tokens in use: %s", exc)
            with self._lock:
                self._expires = time.monotonic() + max(1.0, min(30.0, self.settings.secret_cache_ttl_s))

    def tenant_for(self, token: str | None) -> Tenant | None:
        """The tenant whose token this is; None when there is none or it matches no tenant."""
        if self.anonymous:
            return Tenant(DEV_TENANT)
        if not token:
            return None
        presented = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            digests = self._digests
        found = None
        for tenant, digest in digests:  # every tenant is compared: the time says nothing
            if hmac.compare_digest(presented, digest):
                found = tenant
        return Tenant(found) if found is not None else None
