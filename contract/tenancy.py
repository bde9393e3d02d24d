"""Tenants: whose job an id is, and which secrets that tenant may name.

The HTTP API stores tenant ``acme``'s job ``x`` as ``t/acme/x`` (api/tenants.py),
which also puts its images under a per-tenant storage prefix. The platform's
allow-list (``IMAGEGEN_ALLOWED_SECRET_REFS``) is one list for everyone, so on
its own it would let tenant A name tenant B's credential reference or webhook
key (``vault:secret/imagegen/tenants/b#aws``) and have the worker use it.
``IMAGEGEN_TENANT_SECRET_REFS`` closes that: allow-list entries with a
``{tenant}`` placeholder (``vault:secret/imagegen/tenants/{tenant}``), filled in
with the job's tenant; a tenant's job may name only references they allow.
Without the setting, tenants may name no reference at all outside development.

Checked where a job id and its references meet: at submit (producer), when the
job task opens the node's storage target, in each variation, and before a
webhook is signed (a message may bypass the producer). Jobs outside the ``t/``
namespace are the platform's own (the Python client of a trusted engine) and
follow the global allow-list only.
"""

from __future__ import annotations

from collections.abc import Mapping

from contract.errors import MISSING, NodeValidationError, Problem
from contract.secret_refs import check_allowed, parse_secret_ref
from contract.settings import Settings

NAMESPACE_ROOT = "t"  # t/<tenant>/<the caller's id>
TENANT_PLACEHOLDER = "{tenant}"


def tenant_of(job_id: str) -> str | None:
    """The tenant whose namespace ``job_id`` is in (``t/<tenant>/...``), else None."""
    segments = job_id.split("/")
    if len(segments) >= 3 and segments[0] == NAMESPACE_ROOT and segments[1]:
        return segments[1]
    return None


def caller_id(job_id: str) -> str:
    """The id as the tenant knows it (``t/acme/x`` -> ``x``); other ids unchanged."""
    tenant = tenant_of(job_id)
    return job_id if tenant is None else job_id[len(NAMESPACE_ROOT) + len(tenant) + 2 :]


def check_tenant_refs(job_id: str, refs: Mapping[str, str | None], settings: Settings) -> None:
    """NodeValidationError naming each field whose secret reference the job's tenant may not use
    (``refs``: field -> reference, None for an unset field). The reference is never echoed."""
    tenant = tenant_of(job_id)
    named = {field: ref for field, ref in refs.items() if ref}
    if tenant is None or not named:
        return
    templates = [t.strip() for t in settings.tenant_secret_refs.split(",") if t.strip()]
    problems = []
    for field, ref in named.items():
        message = _refusal(tenant, ref, templates, settings)
        if message is not None:
            problems.append(Problem(field, MISSING, message))
    if problems:
        raise NodeValidationError(problems)


def _refusal(tenant: str, ref: str, templates: list[str], settings: Settings) -> str | None:
    if not templates:
        if settings.environment == "development":
            return None
        return (
            f"names a secret reference, but tenant {tenant!r} may name none: this deployment sets no "
            "IMAGEGEN_TENANT_SECRET_REFS (per-tenant reference prefixes)"
        )
    try:
        check_allowed(
            parse_secret_ref(ref), [t.replace(TENANT_PLACEHOLDER, tenant) for t in templates], settings.vault_mount
        )
    except ValueError:
        return f"is not a secret reference tenant {tenant!r} may use (IMAGEGEN_TENANT_SECRET_REFS)"
    return None
