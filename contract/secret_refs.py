"""Secret references: how a node names a credential without containing it.

A credential field holds ``vault:<path>#<key>``, ``env:<NAME>`` or
``file:<path>``; only the worker resolves it. A raw secret in node JSON is
refused at submit time, so it never reaches the broker, Flower or logs.

Node JSON is written by tenants and the worker holds the platform's
credentials, so references are *canonicalised* before anything compares them
(the producer and the worker both call :func:`parse_secret_ref`):

* at most ``MAX_REF_CHARS`` characters; no whitespace or control characters;
* ``vault:<path>#<key>``: the path is split on ``/``, empty segments are
  dropped (``a//b`` is ``a/b``, leading/trailing ``/`` ignored), every segment
  and the key use only ``A-Z a-z 0-9 _ . @ + = -`` and a segment made only of
  dots (``.``, ``..``, ``...``) is refused, not resolved. So ``%2e%2e``,
  ``\\``, ``?``, a second ``#`` are refused as well;
* ``env:<NAME>``: ``[A-Za-z_][A-Za-z0-9_]*``;
* ``file:<path>``: absolute, same segment rules as vault (``//`` collapsed,
  dot-only segments refused). Symbolic links are the worker's business: it
  resolves the real path and requires it inside an allowed directory.

The operator's allow-list (``IMAGEGEN_ALLOWED_SECRET_REFS``) is matched by
*structure*, never as a string prefix (:func:`parse_allow_list`,
:func:`check_allowed`):

* ``vault:<path>`` allows references whose path *inside the KV mount* (the
  mount name stripped as the worker does when reading, see
  :func:`vault_kv_path`) starts with the entry's whole segments:
  ``vault:secret/imagegen/tenants`` allows ``vault:secret/imagegen/tenants/acme#k``
  and ``vault:imagegen/tenants/acme#k`` but not ``.../tenants-evil/x#k``.
  ``vault:<mount>`` alone allows the whole mount. ``vault:<path>#<key>``
  allows exactly that secret and key;
* ``file:<dir>`` allows files whose path starts with the entry's segments
  (the worker also requires the real path inside the entry's real path);
* ``env:<PREFIX>`` allows variable names starting with ``PREFIX`` (names have
  no structure; end a prefix with ``_`` to scope it: ``env:TENANT_``).

A trailing ``/`` on an entry makes no difference. An invalid entry fails
``Settings`` validation at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

SCHEMES = ("vault", "env", "file")
HOW_TO = (
    "use a secret reference instead: 'vault:<path>#<key>' (e.g. vault:secret/imagegen/aws#credentials), "
    "'env:<NAME>' or 'file:</mounted/secret/path>'"
)
MAX_REF_CHARS = 512
DEFAULT_VAULT_MOUNT = "secret"

Scheme = Literal["vault", "env", "file"]

_SEGMENT = re.compile(r"[A-Za-z0-9_.@+=-]+")  # ASCII only: no %, \, ?, #, whitespace, control characters
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEGMENT_RULE = "path segments and keys may use only A-Z a-z 0-9 _ . @ + = - and a segment of dots only is refused"


@dataclass(frozen=True)
class SecretRef:
    scheme: Scheme
    target: str  # canonical vault path (a/b/c), variable name or absolute file path (/a/b/c)
    key: str | None = None  # vault only

    def __str__(self) -> str:
        suffix = f"#{self.key}" if self.key else ""
        return f"{self.scheme}:{self.target}{suffix}"

    @property
    def segments(self) -> tuple[str, ...]:
        """The path's segments (vault, file); empty for env."""
        return () if self.scheme == "env" else tuple(s for s in self.target.split("/") if s)


@dataclass(frozen=True)
class AllowedRef:
    """One allow-list entry, parsed (see the module docstring for the rules)."""

    text: str  # as the operator wrote it (for messages; the allow-list is not secret)
    scheme: Scheme
    segments: tuple[str, ...] = ()  # vault: path inside the KV mount; file: absolute path's segments
    key: str | None = None  # vault: an entry naming a key allows exactly that path and key
    name_prefix: str = ""  # env

    @property
    def path(self) -> str:
        """file: the allowed directory (or file) as an absolute path."""
        return "/" + "/".join(self.segments)


def _safe_segment(segment: str) -> bool:
    return _SEGMENT.fullmatch(segment) is not None and segment.strip(".") != ""


def _split_path(path: str) -> tuple[str, ...] | None:
    """Segments with empty ones dropped; None when any segment is unsafe."""
    segments = tuple(s for s in path.split("/") if s)
    return segments if all(_safe_segment(s) for s in segments) else None


def parse_secret_ref(text: str) -> SecretRef:
    """The canonical reference; ValueError (never echoing the text: it may be a
    raw secret) when ``text`` is not one."""
    if not isinstance(text, str):
        raise ValueError(f"is not a secret reference; {HOW_TO}")
    if len(text) > MAX_REF_CHARS:
        raise ValueError(f"is longer than {MAX_REF_CHARS} characters, too long for a secret reference")
    scheme, colon, rest = text.partition(":")
    if not colon or scheme not in SCHEMES:
        raise ValueError(f"is not a secret reference; {HOW_TO}")
    if scheme == "env":
        if _ENV_NAME.fullmatch(rest) is None:
            raise ValueError("is not a valid env: reference; the name must match [A-Za-z_][A-Za-z0-9_]*")
        return SecretRef("env", rest)
    if scheme == "file":
        segments = _split_path(rest) if rest.startswith("/") else None
        if not segments:
            raise ValueError(f"is not a valid file: reference; it must be an absolute file path and {_SEGMENT_RULE}")
        return SecretRef("file", "/" + "/".join(segments))
    path, hash_sign, key = rest.partition("#")
    segments = _split_path(path)
    if not hash_sign or not segments or not _safe_segment(key):
        raise ValueError(f"is not a valid vault: reference; it must be vault:<path>#<key> and {_SEGMENT_RULE}")
    return SecretRef("vault", "/".join(segments), key)


def _mount_segments(vault_mount: str) -> tuple[str, ...]:
    return tuple(s for s in vault_mount.split("/") if s)


def _inside_mount(segments: tuple[str, ...], mount: tuple[str, ...]) -> tuple[str, ...]:
    # The worker accepts the CLI form (vault kv get secret/imagegen/aws) and the
    # path inside the mount: "<mount>/" is stripped when something follows it.
    if mount and len(segments) > len(mount) and segments[: len(mount)] == mount:
        return segments[len(mount) :]
    return segments


def vault_kv_path(reference: SecretRef, vault_mount: str = DEFAULT_VAULT_MOUNT) -> str:
    """The path inside the KV v2 mount that the worker reads for ``reference``:
    ``vault:secret/a#k`` and ``vault:a#k`` both give ``a`` (mount ``secret``)."""
    return "/".join(_inside_mount(reference.segments, _mount_segments(vault_mount)))


def parse_allowed_ref(
    entry: str, vault_mount: str = DEFAULT_VAULT_MOUNT, fill: Callable[[str], str] | None = None
) -> AllowedRef:
    """One allow-list entry; ValueError naming the entry and what is wrong. ``fill`` rewrites the
    entry's path segments, key or name after the mount is resolved (a tenant template's
    ``{tenant}``, contract/tenancy.py)."""
    text = entry.strip()
    scheme, colon, rest = text.partition(":")
    put = fill or (lambda value: value)
    problem = ""
    if len(text) > MAX_REF_CHARS:
        problem = f"is longer than {MAX_REF_CHARS} characters"
    elif not colon or scheme not in SCHEMES:
        problem = "must start with vault:, env: or file:"
    elif scheme == "env":
        if _ENV_NAME.fullmatch(put(rest)) is not None:
            return AllowedRef(text, "env", name_prefix=put(rest))
        problem = "must be env:<NAME PREFIX> with a non-empty prefix matching [A-Za-z_][A-Za-z0-9_]*"
    elif scheme == "file":
        segments = _split_path(put(rest)) if rest.startswith("/") else None
        if segments:
            return AllowedRef(text, "file", segments)
        problem = f"must be file:</absolute/directory> (not /) and {_SEGMENT_RULE}"
    else:
        path, hash_sign, key = rest.partition("#")
        written = tuple(s for s in path.split("/") if s)
        mount = _mount_segments(vault_mount)
        # The mount is resolved on the entry as written, before anything is filled in: a tenant
        # named like the mount (or like the segment after it) stays a segment inside the mount,
        # never read as the mount itself, so "vault:{tenant}" cannot become the whole mount.
        inside = () if written == mount and not hash_sign else _inside_mount(written, mount)
        valid = _split_path("/".join(put(s) for s in written))
        segments = _split_path("/".join(put(s) for s in inside))
        if valid and segments is not None and not hash_sign:
            return AllowedRef(text, "vault", segments)
        if valid and segments and _safe_segment(put(key)):
            return AllowedRef(text, "vault", segments, key=put(key))
        problem = f"must be vault:<path> or vault:<path>#<key> with a non-empty path and {_SEGMENT_RULE}"
    raise ValueError(f"entry {text!r} {problem}")


def parse_allow_list(
    entries: str | Iterable[str | AllowedRef], vault_mount: str = DEFAULT_VAULT_MOUNT
) -> tuple[AllowedRef, ...]:
    """Comma-separated text (or entries) into parsed entries; ValueError on the first invalid one."""
    items = entries.split(",") if isinstance(entries, str) else entries
    return tuple(
        item if isinstance(item, AllowedRef) else parse_allowed_ref(item, vault_mount)
        for item in items
        if isinstance(item, AllowedRef) or item.strip()
    )


def is_allowed(reference: SecretRef, entry: AllowedRef, vault_mount: str = DEFAULT_VAULT_MOUNT) -> bool:
    """Whether ``entry`` allows the canonical ``reference`` (whole segments, never a string prefix)."""
    if reference.scheme != entry.scheme:
        return False
    if reference.scheme == "env":
        return reference.target.startswith(entry.name_prefix)
    if reference.scheme == "file":
        return reference.segments[: len(entry.segments)] == entry.segments
    path = _inside_mount(reference.segments, _mount_segments(vault_mount))
    if entry.key is not None:
        return path == entry.segments and reference.key == entry.key
    return path[: len(entry.segments)] == entry.segments


def check_allowed(
    reference: SecretRef,
    prefixes: Sequence[str | AllowedRef],
    vault_mount: str = DEFAULT_VAULT_MOUNT,
) -> None:
    """ValueError unless one of the operator's allow-list entries allows
    ``reference`` (none configured: any). Without this, a node author could
    point a credential field at any secret the worker can read (``env:`` of the
    platform's own keys, any mounted file). The reference is canonicalised
    again here, so a hand-built ``SecretRef`` cannot smuggle ``..`` past it."""
    if not prefixes:
        return
    allowed = parse_allow_list(prefixes, vault_mount)
    canonical = parse_secret_ref(str(reference))
    if not any(is_allowed(canonical, entry, vault_mount) for entry in allowed):
        listed = ", ".join(entry.text for entry in allowed)
        raise ValueError(f"names {canonical}, which is outside the allowed references: {listed}")
