"""Resolve secret references (``vault:``, ``env:``, ``file:``) inside the worker.

Only workers hold credentials: the node carries a reference, this module turns
it into the value just before a storage client is built. Every error names the
reference and never the value; values are kept in a short per-process cache so
a rotated secret is picked up within ``IMAGEGEN_SECRET_CACHE_TTL_S``.

Everything is checked again here (a task may be sent straight to the broker,
bypassing the producer): the reference is canonicalised, matched against the
allow-list by structure (contract/secret_refs.py), and a ``file:`` reference
is read only if its real path (symbolic links resolved) lies inside an allowed
directory's real path, it is a regular file of at most ``MAX_FILE_BYTES``, and
the final component is opened with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests

from contract.secret_refs import (
    AllowedRef,
    SecretRef,
    check_allowed,
    parse_allow_list,
    parse_secret_ref,
    vault_kv_path,
)
from contract.settings import Settings
from worker.errors import PermanentError, TransientError


class SecretError(PermanentError):
    """A reference that cannot be resolved (missing, denied, malformed)."""


# Worth another try later (the variation task retries TransientError with backoff).
_VAULT_TRANSIENT = (
    hvac.exceptions.VaultDown,
    hvac.exceptions.InternalServerError,
    hvac.exceptions.BadGateway,
    hvac.exceptions.RateLimitExceeded,
)

MAX_FILE_BYTES = 64 * 1024  # a mounted credential is small; bigger is a mistake or an attack

_lock = threading.Lock()
_cache: dict[str, tuple[float, str]] = {}
_vault: dict[str, hvac.Client] = {}  # one logged-in client per (address, auth) per process


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
    vault_identity = _client_key(settings) if ref.scheme == "vault" else ""
    name = f"{ref}|{settings.allowed_secret_refs}|{settings.vault_mount}|{vault_identity}"
    now = time.monotonic()
    with _lock:
        hit = _cache.get(name)
    if hit is not None and hit[0] > now:
        return hit[1]
    if ref.scheme == "env":
        value = _from_env(ref)
    elif ref.scheme == "file":
        value = _from_file(ref, allowed)
    else:
        value = _from_vault(ref, settings)
    if settings.secret_cache_ttl_s > 0:
        with _lock:
            _cache[name] = (now + settings.secret_cache_ttl_s, value)
    return value


def clear_cache() -> None:
    """Forget cached values and Vault logins (tests; a forced rotation)."""
    with _lock:
        _cache.clear()
        _vault.clear()


def _parse(text: str) -> SecretRef:
    try:
        return parse_secret_ref(text)
    except ValueError as exc:
        raise SecretError(f"a credential field {exc}") from None  # the text may be a raw secret: never echo it


def _from_env(ref: SecretRef) -> str:
    value = os.environ.get(ref.target)
    if not value:
        raise SecretError(f"{ref}: the variable is not set in the worker's environment")
    return value


def _inside(path: str, directories: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in directories)


def _from_file(ref: SecretRef, allowed: tuple[AllowedRef, ...]) -> str:
    # No allow-list (development): any file, but the reference is canonical (no "..").
    directories = [os.path.realpath(entry.path) for entry in allowed if entry.scheme == "file"]
    real = os.path.realpath(ref.target)
    if allowed and not _inside(real, directories):
        # The real path is not shown: it describes the worker's filesystem.
        raise SecretError(f"{ref}: resolves through a symbolic link outside the allowed directories; not read")
    try:
        before = os.stat(real, follow_symlinks=False)
    except OSError as exc:
        raise SecretError(f"{ref}: cannot read the file ({exc.strerror})") from None
    _check_regular(ref, before)
    # O_NONBLOCK: a FIFO swapped in after the stat must not block the open.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        raise SecretError(f"{ref}: cannot read the file ({exc.strerror})") from None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise SecretError(f"{ref}: the file changed while being opened; not read")
        _check_regular(ref, opened)
        if allowed and not _inside(_opened_path(fd, real), directories):
            raise SecretError(f"{ref}: resolves through a symbolic link outside the allowed directories; not read")
        data = _read_bounded(ref, fd)
    finally:
        os.close(fd)
    try:
        # Mounted secrets often end with a newline that is not part of the value.
        value = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise SecretError(f"{ref}: the file is not UTF-8 text") from None
    if not value:
        raise SecretError(f"{ref}: the file is empty")
    return value


def _check_regular(ref: SecretRef, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise SecretError(f"{ref}: is not a regular file (a FIFO, device, directory or socket); not read")
    if info.st_size > MAX_FILE_BYTES:
        raise SecretError(f"{ref}: the file is larger than {MAX_FILE_BYTES} bytes; not read")


def _opened_path(fd: int, fallback: str) -> str:
    """Where the open descriptor really points (Linux): closes the window between realpath and open."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return fallback


def _read_bounded(ref: SecretRef, fd: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_FILE_BYTES:
        try:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
        except OSError as exc:
            raise SecretError(f"{ref}: cannot read the file ({exc.strerror})") from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    raise SecretError(f"{ref}: the file is larger than {MAX_FILE_BYTES} bytes; not read")


def _from_vault(ref: SecretRef, settings: Settings) -> str:
    mount = settings.vault_mount.strip("/")
    # The CLI form (vault kv get secret/imagegen/aws) and the path inside the mount
    # read the same secret; the allow-list compared this very path.
    path = vault_kv_path(ref, settings.vault_mount)
    data = _read_kv(ref, settings, mount, path)
    if ref.key not in data:
        raise SecretError(f"{ref}: the Vault secret has no key {ref.key!r}")
    value = data[ref.key]
    # KV values may be JSON objects (e.g. AWS keys stored as a map): hand them over as JSON text.
    return value if isinstance(value, str) else json.dumps(value)


def _read_kv(ref: SecretRef, settings: Settings, mount: str, path: str) -> dict[str, Any]:
    for attempt in (1, 2):
        client = _vault_client(ref, settings)
        try:
            response = client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=mount, raise_on_deleted_version=True
            )
            return dict(response["data"]["data"] or {})
        except hvac.exceptions.InvalidPath:
            raise SecretError(f"{ref}: no such secret in Vault (KV v2 mount {mount!r})") from None
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
            if attempt == 1 and settings.vault_k8s_role:
                _forget_client(settings)  # the Kubernetes login token may have expired: log in again once
                continue
            raise SecretError(f"{ref}: Vault denied access (check the token or role policy)") from None
        except _VAULT_TRANSIENT:
            raise TransientError(f"{ref}: Vault is unavailable") from None
        except hvac.exceptions.VaultError as exc:
            raise SecretError(f"{ref}: Vault refused the read ({type(exc).__name__})") from None
        except requests.RequestException as exc:
            raise TransientError(f"{ref}: cannot reach Vault at {client.url} ({type(exc).__name__})") from None
    raise AssertionError("unreachable")


def _client_key(settings: Settings) -> str:
    token = settings.vault_token.get_secret_value() if settings.vault_token else ""
    auth = f"k8s:{settings.vault_k8s_role}:{settings.vault_k8s_token_file}" if settings.vault_k8s_role else token
    return f"{settings.vault_addr}|{settings.vault_namespace}|{hashlib.sha256(auth.encode()).hexdigest()}"


def _forget_client(settings: Settings) -> None:
    with _lock:
        _vault.pop(_client_key(settings), None)


def _vault_client(ref: SecretRef, settings: Settings) -> hvac.Client:
    key = _client_key(settings)
    with _lock:
        client = _vault.get(key)
        if client is not None:
            return client
        # "" not None: hvac would otherwise fall back to ~/.vault-token, a developer's CLI login.
        token = settings.vault_token.get_secret_value() if settings.vault_token else ""
        client = hvac.Client(
            url=settings.vault_addr, token=token, namespace=settings.vault_namespace, timeout=settings.storage_timeout_s
        )
        if settings.vault_k8s_role:
            _kubernetes_login(client, ref, settings)
        elif not client.token:
            raise SecretError(f"{ref}: no Vault credentials in the worker (set VAULT_TOKEN or VAULT_K8S_ROLE)")
        _vault[key] = client
        return client


def _kubernetes_login(client: hvac.Client, ref: SecretRef, settings: Settings) -> None:
    try:
        jwt = Path(settings.vault_k8s_token_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretError(
            f"{ref}: VAULT_K8S_ROLE is set but the service-account token "
            f"{settings.vault_k8s_token_file} cannot be read ({exc.strerror})"
        ) from None
    try:
        client.auth.kubernetes.login(role=settings.vault_k8s_role, jwt=jwt, mount_point=settings.vault_k8s_mount)
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest, hvac.exceptions.Unauthorized):
        raise SecretError(
            f"{ref}: Vault refused the Kubernetes login for role {settings.vault_k8s_role!r} "
            f"(auth mount {settings.vault_k8s_mount!r})"
        ) from None
    except (hvac.exceptions.VaultError, requests.RequestException) as exc:
        raise TransientError(f"{ref}: Kubernetes login to Vault failed ({type(exc).__name__})") from None
