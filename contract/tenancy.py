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
job task opens the node's storage target, in the prompt step and each variation (before
their provider calls), before a webhook is
signed, and before an image URL is signed with a node's credentials (a message may
bypass the producer). Jobs outside the ``t/`` namespace are the platform's own (the
Python client of a trusted engine) and follow the global allow-list only.

``vault:`` and ``file:`` entries match whole path segments, so ``{tenant}`` there
names one tenant only; a ``vault:`` entry's KV mount is resolved before ``{tenant}`` is
filled in, so tenant ``secret`` under ``vault:{tenant}`` gets the folder ``secret/secret``,
never the whole mount. Entries that could still overlap between tenants (``{tenant}`` inside
a segment, different parents, a shared entry among the tenants' folders) stop start-up
(``check_tenant_templates``). ``env:`` entries match a name prefix: ``env:T_{tenant}_``
filled in for ``acme`` would also match ``T_acme_eu_KEY``, tenant ``acme_eu``'s. So an
``env:`` template must follow ``{tenant}`` with ``_``, and only tenants named with
letters and digits alone may use one (``ENV_TEMPLATE_TENANT``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from contract.errors import MISSING, NodeValidationError, Problem
from contract.job_ids import NAMESPACE_ROOT
from contract.secret_refs import AllowedRef, check_allowed, parse_allowed_ref, parse_secret_ref
from contract.settings import Settings

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


def first_namespace(segments: Sequence[str]) -> str | None:
    """The tenant an object path names: the segment after its first ``t`` segment. A job id of
    another tenant that holds ``t/<name>`` comes after its own ``t/<other>``, and a prefix that
    moved the first ``t`` would name the prefix's tenant, not the caller's (fails closed)."""
    if NAMESPACE_ROOT not in segments:
        return None
    at = segments.index(NAMESPACE_ROOT)
    return segments[at + 1] if at + 1 < len(segments) else None


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
        allowed = [_filled(t, tenant, settings.vault_mount) for t in templates]
        check_allowed(parse_secret_ref(ref), allowed, settings.vault_mount)
    except ValueError:
        return refusal
    return None


def _filled(template: str, tenant: str, vault_mount: str) -> AllowedRef:
    # Filled in after the mount is resolved (parse_allowed_ref): a tenant named "secret" gets
    # "vault:{tenant}" as the folder secret/secret, never the whole mount "secret".
    return parse_allowed_ref(template, vault_mount, fill=lambda text: text.replace(TENANT_PLACEHOLDER, tenant))


def check_tenant_templates(text: str, vault_mount: str) -> None:
    """ValueError naming the first IMAGEGEN_TENANT_SECRET_REFS entry that could give one tenant
    another's secrets. Per scheme the tenants' folders must be one level, ``<root>/{tenant}``:

    * a ``vault:`` or ``file:`` entry has ``{tenant}`` as a whole path segment, not in a key or
      beside other text (``t-{tenant}-x`` for tenant ``a`` is ``t-{tenant}`` for ``a-x``);
    * every entry with ``{tenant}`` of a scheme has the same root (with ``vault:{tenant}`` beside
      ``vault:imagegen/{tenant}``, tenant ``imagegen`` would hold everyone's folder);
    * an ``env:`` entry follows ``{tenant}`` with ``_``, else one tenant's prefix is another's;
    * an entry without ``{tenant}`` (shared by all tenants) lies outside the root's folders.
    """
    roots: dict[str, tuple[str, AllowedRef]] = {}
    for entry in _templates(text):
        scheme = entry.partition(":")[0]
        if TENANT_PLACEHOLDER not in entry:
            parse_allowed_ref(entry, vault_mount)
            continue
        if scheme == "env" and f"{TENANT_PLACEHOLDER}_" not in entry:
            raise ValueError(
                f"entry {entry!r}: in an env: entry {TENANT_PLACEHOLDER} must be followed by '_' "
                f"(env:PREFIX_{TENANT_PLACEHOLDER}_), else one tenant's prefix is another's"
            )
        path, _, key = entry.partition(":")[2].partition("#")
        mixed = [s for s in path.split("/") if TENANT_PLACEHOLDER in s and s != TENANT_PLACEHOLDER]
        if scheme in ("vault", "file") and (mixed or TENANT_PLACEHOLDER in key):
            raise ValueError(
                f"entry {entry!r}: {TENANT_PLACEHOLDER} must be a whole path segment "
                f"({scheme}:<path>/{TENANT_PLACEHOLDER}[/<path>]), not part of one or of a key"
            )
        root = _root(entry, vault_mount)
        if scheme in roots and roots[scheme][1] != root:
            raise ValueError(
                f"entries {roots[scheme][0]!r} and {entry!r} put {TENANT_PLACEHOLDER} under different parents; "
                f"every {scheme}: entry must use the same <parent>/{TENANT_PLACEHOLDER}, else a tenant named like "
                "a segment of one parent reaches other tenants' folders"
            )
        roots.setdefault(scheme, (entry, root))
    for entry in _templates(text):
        if TENANT_PLACEHOLDER in entry:
            continue
        allowed = parse_allowed_ref(entry, vault_mount)
        if allowed.scheme in roots and _reaches_folders(allowed, roots[allowed.scheme][1]):
            raise ValueError(
                f"entry {entry!r} is shared by every tenant but lies on or inside the tenants' folders "
                f"({roots[allowed.scheme][0]!r}); name a secret outside them"
            )


def _root(template: str, vault_mount: str) -> AllowedRef:
    """The parent of ``template``'s tenant folders: filled in twice, up to where the fills differ
    (text left empty, so two templates' parents compare equal when they are the same)."""
    one, other = (_filled(template, tenant, vault_mount) for tenant in ("a", "b"))
    if one.scheme == "env":
        return AllowedRef("", "env", name_prefix=template.partition(":")[2].partition(TENANT_PLACEHOLDER)[0])
    pairs = enumerate(zip(one.segments, other.segments, strict=True))
    depth = next((i for i, (x, y) in pairs if x != y), len(one.segments))
    return AllowedRef("", one.scheme, one.segments[:depth])


def _reaches_folders(entry: AllowedRef, root: AllowedRef) -> bool:
    """Whether a tenant-less ``entry`` allows something in a tenant's folder under ``root``."""
    if entry.scheme == "env":
        return entry.name_prefix.startswith(root.name_prefix) or root.name_prefix.startswith(entry.name_prefix)
    depth = len(root.segments)
    if len(entry.segments) > depth:  # inside the folder of the tenant named entry.segments[depth]
        return entry.segments[:depth] == root.segments
    return entry.key is None and root.segments[: len(entry.segments)] == entry.segments  # covers them all


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
