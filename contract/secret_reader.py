"""Read the value a secret reference names: the one reader of ``env:``, ``file:`` and
``vault:`` values, shared by the worker (storage credentials, webhook signing keys,
worker/secrets.py) and the API (tenant tokens, api/tenants.py).

Every error names the reference and never the value. A ``file:`` reference is read only
if it is a regular file of at most ``MAX_FILE_BYTES``, opened with ``O_NOFOLLOW``, and,
when ``directories`` are given, its real path (symbolic links resolved, checked again on
the open descriptor) lies inside one of them. Vault is read through one logged-in
client per (address, namespace, identity) per process. Callers map the two errors to
their own families: ``SecretUnavailable`` is worth another try later, any other
``SecretReadError`` is not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests

from contract.errors import ImageGenError
from contract.secret_refs import SecretRef, vault_kv_path
from contract.settings import Settings

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 64 * 1024  # a credential (a file's, a Vault value) is small; bigger is a mistake or an attack


class SecretReadError(ImageGenError):
    """The reference names no usable value (missing, denied, malformed); retrying cannot help."""


class SecretUnavailable(SecretReadError):
    """Vault is down or unreachable: worth another try later."""


# Worth another try later.
_VAULT_TRANSIENT = (
    hvac.exceptions.VaultDown,
    hvac.exceptions.InternalServerError,
    hvac.exceptions.BadGateway,
    hvac.exceptions.RateLimitExceeded,
)

_lock = threading.Lock()
_vault: dict[str, hvac.Client] = {}


def read_secret(ref: SecretRef, settings: Settings, directories: Sequence[str] = ()) -> str:
    """The value ``ref`` names, read now (no cache). ``directories``: where a ``file:`` reference
    must really lie (empty: anywhere; the caller decides whose references these are)."""
    if ref.scheme == "env":
        return _from_env(ref)
    if ref.scheme == "file":
        return _from_file(ref, [os.path.realpath(directory) for directory in directories])
    return _from_vault(ref, settings)


def vault_identity(settings: Settings) -> str:
    """Who reads from Vault (address, namespace, a digest of the token or Kubernetes role): a cached
    value read under one identity is never handed out under another."""
    token = settings.vault_token.get_secret_value() if settings.vault_token else ""
    auth = f"k8s:{settings.vault_k8s_role}:{settings.vault_k8s_token_file}" if settings.vault_k8s_role else token
    return f"{settings.vault_addr}|{settings.vault_namespace}|{hashlib.sha256(auth.encode()).hexdigest()}"


def forget_vault_clients() -> None:
    """Log in to Vault again on the next read (tests; a forced rotation)."""
    with _lock:
        _vault.clear()


def _from_env(ref: SecretRef) -> str:
    value = os.environ.get(ref.target)
    if not value:
        raise SecretReadError(f"{ref}: the variable is not set in this process's environment")
    return value


def _inside(path: str, directories: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in directories)


def _from_file(ref: SecretRef, directories: list[str]) -> str:
    real = os.path.realpath(ref.target)
    if directories and not _inside(real, directories):
        # The real path is not shown: it describes this machine's filesystem.
        raise SecretReadError(f"{ref}: resolves through a symbolic link outside the allowed directories; not read")
    try:
        before = os.stat(real, follow_symlinks=False)
    except OSError as exc:
        raise SecretReadError(f"{ref}: cannot read the file ({exc.strerror})") from None
    _check_regular(ref, before)
    # O_NONBLOCK: a FIFO swapped in after the stat must not block the open.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        raise SecretReadError(f"{ref}: cannot read the file ({exc.strerror})") from None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise SecretReadError(f"{ref}: the file changed while being opened; not read")
        _check_regular(ref, opened)
        if directories and not _inside(_opened_path(fd, real), directories):
            raise SecretReadError(f"{ref}: resolves through a symbolic link outside the allowed directories; not read")
        data = _read_bounded(ref, fd)
    finally:
        os.close(fd)
    try:
        # Mounted secrets often end with a newline that is not part of the value.
        value = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise SecretReadError(f"{ref}: the file is not UTF-8 text") from None
    if not value:
        raise SecretReadError(f"{ref}: the file is empty")
    return value


def _check_regular(ref: SecretRef, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise SecretReadError(f"{ref}: is not a regular file (a FIFO, device, directory or socket); not read")
    if info.st_size > MAX_FILE_BYTES:
        raise SecretReadError(f"{ref}: the file is larger than {MAX_FILE_BYTES} bytes; not read")


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
            raise SecretReadError(f"{ref}: cannot read the file ({exc.strerror})") from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    raise SecretReadError(f"{ref}: the file is larger than {MAX_FILE_BYTES} bytes; not read")


def _from_vault(ref: SecretRef, settings: Settings) -> str:
    mount = settings.vault_mount.strip("/")
    # The CLI form (vault kv get secret/imagegen/aws) and the path inside the mount
    # read the same secret; an allow-list compares this very path.
    data = _read_kv(ref, settings, mount, vault_kv_path(ref, settings.vault_mount))
    if ref.key not in data:
        raise SecretReadError(f"{ref}: the Vault secret has no key {ref.key!r}")
    value = data[ref.key]
    # KV values may be JSON objects (e.g. AWS keys stored as a map): hand them over as JSON text.
    text = value if isinstance(value, str) else json.dumps(value)
    if len(text) > MAX_FILE_BYTES:  # cached and handed to the SDKs: bounded as a file's is
        raise SecretReadError(f"{ref}: the Vault value is larger than {MAX_FILE_BYTES} characters; not used")
    return text


def _read_kv(ref: SecretRef, settings: Settings, mount: str, path: str) -> dict[str, Any]:
    for attempt in (1, 2):
        client = _vault_client(ref, settings)
        try:
            response = client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=mount, raise_on_deleted_version=True
            )
            return dict(response["data"]["data"] or {})
        except hvac.exceptions.InvalidPath:
            raise SecretReadError(f"{ref}: no such secret in Vault (KV v2 mount {mount!r})") from None
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
            if attempt == 1 and settings.vault_k8s_role and not _token_alive(client):
                _forget_client(settings)  # the Kubernetes login token expired or was revoked: log in again once
                continue
            raise SecretReadError(f"{ref}: Vault denied access (check the token or role policy)") from None
        except _VAULT_TRANSIENT:
            raise SecretUnavailable(f"{ref}: Vault is unavailable") from None
        except hvac.exceptions.VaultError as exc:
            raise SecretReadError(f"{ref}: Vault refused the read ({type(exc).__name__})") from None
        except requests.RequestException as exc:
            # The address is the operator's business: logged, not put in an error a tenant reads.
            log.warning("cannot reach Vault at %s: %s", client.url, type(exc).__name__)
            raise SecretUnavailable(f"{ref}: cannot reach Vault ({type(exc).__name__})") from None
    raise AssertionError("unreachable")


def _token_alive(client: hvac.Client) -> bool:
    """Whether Vault still accepts the client's token. A denial with a live token is the policy's
    answer, which a new login would not change: logging in again on every denied path would let a
    node naming such paths make the worker log in to Vault once per attempt."""
    try:
        client.auth.token.lookup_self()
    except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
        return False
    except (hvac.exceptions.VaultError, requests.RequestException):
        return True  # cannot tell: the denial stands
    return True


def _forget_client(settings: Settings) -> None:
    with _lock:
        _vault.pop(vault_identity(settings), None)


def _vault_client(ref: SecretRef, settings: Settings) -> hvac.Client:
    key = vault_identity(settings)
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
            raise SecretReadError(f"{ref}: no Vault credentials in this process (set VAULT_TOKEN or VAULT_K8S_ROLE)")
        _vault[key] = client
        return client


def _kubernetes_login(client: hvac.Client, ref: SecretRef, settings: Settings) -> None:
    try:
        jwt = Path(settings.vault_k8s_token_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretReadError(
            f"{ref}: VAULT_K8S_ROLE is set but the service-account token "
            f"{settings.vault_k8s_token_file} cannot be read ({exc.strerror})"
        ) from None
    try:
        client.auth.kubernetes.login(role=settings.vault_k8s_role, jwt=jwt, mount_point=settings.vault_k8s_mount)
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest, hvac.exceptions.Unauthorized):
        raise SecretReadError(
            f"{ref}: Vault refused the Kubernetes login for role {settings.vault_k8s_role!r} "
            f"(auth mount {settings.vault_k8s_mount!r})"
        ) from None
    except (hvac.exceptions.VaultError, requests.RequestException) as exc:
        raise SecretUnavailable(f"{ref}: Kubernetes login to Vault failed ({type(exc).__name__})") from None
