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
job task opens the node's storage target, in each variation, before a webhook is
signed, and before an image URL is signed with a node's credentials (a message may
bypass the producer). Jobs outside the ``t/`` namespace are the platform's own (the
Python client of a trusted engine) and follow the global allow-list only.

``vault:`` and ``file:`` entries match whole path segments, so ``{tenant}`` there
names one tenant only. ``env:`` entries match a name prefix: ``env:T_{tenant}_``
filled in for ``acme`` would also match ``T_acme_eu_KEY``, tenant ``acme_eu``'s. So an
``env:`` template must follow ``{tenant}`` with ``_``, and only tenants named with
letters and digits alone may use one (``ENV_TEMPLATE_TENANT``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from contract.errors import MISSING, NodeValidationError, Problem
from contract.secret_refs import check_allowed, parse_secret_ref
from contract.settings import Settings

NAMESPACE_ROOT = "t"  # t/<tenant>/<the caller's id>
TENANT_PLACEHOLDER = "{tenant}"
TENANT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,31}")  # one job id segment; never "." or ".."
# Tenants that may use env: templates: without "_" in the name, "T_acme_" is no other tenant's prefix.
ENV_TEMPLATE_TENANT = re.compile(r"[A-Za-z0-9]{1,32}")


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
    check_refs_of_tenant(tenant_of(job_id), refs, settings)


def check_refs_of_tenant(tenant: str | None, refs: Mapping[str, str | None], settings: Settings) -> None:
    """``check_tenant_refs`` for a request that names its tenant (None: the platform's own)."""
    named = {field: ref for field, ref in refs.items() if ref}
    if tenant is None or not named:
        return
    templates = _templates(settings.tenant_secret_refs)
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
    if ENV_TEMPLATE_TENANT.fullmatch(tenant) is None:
        templates = [t for t in templates if not _is_env_template(t)]
    refusal = f"is not a secret reference tenant {tenant!r} may use (IMAGEGEN_TENANT_SECRET_REFS)"
    if not templates:  # an empty list would allow anything (check_allowed)
        return refusal
    try:
        check_allowed(
            parse_secret_ref(ref), [t.replace(TENANT_PLACEHOLDER, tenant) for t in templates], settings.vault_mount
        )
    except ValueError:
        return refusal
    return None


def check_tenant_templates(text: str) -> None:
    """ValueError unless every ``env:`` entry of IMAGEGEN_TENANT_SECRET_REFS follows ``{tenant}`` with ``_``."""
    for entry in _templates(text):
        if _is_env_template(entry) and f"{TENANT_PLACEHOLDER}_" not in entry:
            raise ValueError(
                f"entry {entry!r}: in an env: entry {TENANT_PLACEHOLDER} must be followed by '_' "
                f"(env:PREFIX_{TENANT_PLACEHOLDER}_), else one tenant's prefix is another's"
            )


def check_env_template_tenants(tenants: Iterable[str], settings: Settings) -> None:
    """ValueError naming a tenant whose name an ``env:`` template cannot tell apart from another's
    (``acme_eu`` beside ``acme``); none matters without an ``env:`` template."""
    if not any(_is_env_template(t) for t in _templates(settings.tenant_secret_refs)):
        return
    for tenant in tenants:
        if ENV_TEMPLATE_TENANT.fullmatch(tenant) is None:
            raise ValueError(
                f"tenant {tenant!r} has characters other than A-Z a-z 0-9, which IMAGEGEN_TENANT_SECRET_REFS's "
                "env: entries cannot tell apart (another tenant's prefix could match its variables): rename the "
                "tenant or use vault: or file: entries"
            )


def _templates(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _is_env_template(entry: str) -> bool:
    return entry.startswith("env:") and TENANT_PLACEHOLDER in entry
