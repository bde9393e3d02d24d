"""Resolve secret references (``vault:``, ``env:``, ``file:``) inside the worker.

Only workers hold credentials: the node carries a reference, this module turns
it into the value just before a storage client is built. Every error names the
reference and never the value; values are kept in a short per-process cache so
a rotated secret is picked up within ``IMAGEGEN_SECRET_CACHE_TTL_S``.

Everything is checked again here (a task may be sent straight to the broker,
bypassing the producer): the reference is canonicalised and matched against the
allow-list by structure (contract/secret_refs.py); a ``file:`` reference must
really lie inside an allowed directory. The reading itself is
contract/secret_reader.py, which the API shares for its tenant tokens.
"""

from __future__ import annotations

import threading
import time

from contract.secret_reader import (
    SecretReadError,
    SecretUnavailable,
    forget_vault_clients,
    read_secret,
    vault_identity,
)
from contract.secret_refs import SecretRef, check_allowed, parse_allow_list, parse_secret_ref
from contract.settings import Settings
from worker.errors import PermanentError, TransientError


class SecretError(PermanentError):
    """A reference that cannot be resolved (missing, denied, malformed)."""


_lock = threading.Lock()
_cache: dict[str, tuple[float, str]] = {}


def resolve_secret(reference: str | SecretRef, settings: Settings) -> str:
    """The secret's value; SecretError (permanent) or TransientError (Vault unreachable)."""
    ref = _parse(str(reference))  # canonical, even for a SecretRef built by hand
    try:
        allowed = parse_allow_list(settings.allowed_secret_refs, settings.vault_mount)
    except ValueError as exc:
        raise SecretError(f"IMAGEGEN_ALLOWED_SECRET_REFS is invalid: {exc}") from None
    try:
        check_allowed(ref, allowed, settings.vault_mount)  # again here: a task may bypass the producer
    except ValueError as exc:
        raise SecretError(f"a credential field {exc}") from None
    # Keyed by what decides access too, so a value read under one allow-list or
    # Vault identity is never handed out under another.
    identity = vault_identity(settings) if ref.scheme == "vault" else ""
    name = f"{ref}|{settings.allowed_secret_refs}|{settings.vault_mount}|{identity}"
    now = time.monotonic()
    with _lock:
        hit = _cache.get(name)
    if hit is not None and hit[0] > now:
        return hit[1]
    # No allow-list (development): any file, but the reference is canonical (no "..").
    directories = [entry.path for entry in allowed if entry.scheme == "file"]
    try:
        value = read_secret(ref, settings, directories)
    except SecretUnavailable as exc:
        raise TransientError(str(exc)) from None
    except SecretReadError as exc:
        raise SecretError(str(exc)) from None
    if settings.secret_cache_ttl_s > 0:
        with _lock:
            _cache[name] = (now + settings.secret_cache_ttl_s, value)
    return value


def clear_cache() -> None:
    """Forget cached values and Vault logins (tests; a forced rotation)."""
    with _lock:
        _cache.clear()
    forget_vault_clients()


def _parse(text: str) -> SecretRef:
    try:
        return parse_secret_ref(text)
    except ValueError as exc:
        raise SecretError(f"a credential field {exc}") from None  # the text may be a raw secret: never echo it
