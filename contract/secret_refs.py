"""Secret references: how a node names a credential without containing it.

A credential field holds ``vault:<path>#<key>``, ``env:<NAME>`` or
``file:<path>``; only the worker resolves it. A raw secret in node JSON is
refused at submit time, so it never reaches the broker, Flower or logs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

SCHEMES = ("vault", "env", "file")
HOW_TO = (
    "use a secret reference instead: 'vault:<path>#<key>' (e.g. vault:secret/imagegen/aws#credentials), "
    "'env:<NAME>' or 'file:</mounted/secret/path>'"
)

_VAULT = re.compile(r"^vault:(?P<path>[^#\s]+)#(?P<key>[^#\s]+)$")
_ENV = re.compile(r"^env:(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")
_FILE = re.compile(r"^file:(?P<path>/\S+)$")


@dataclass(frozen=True)
class SecretRef:
    scheme: Literal["vault", "env", "file"]
    target: str  # vault path, variable name or file path
    key: str | None = None  # vault only

    def __str__(self) -> str:
        suffix = f"#{self.key}" if self.key else ""
        return f"{self.scheme}:{self.target}{suffix}"


def parse_secret_ref(text: str) -> SecretRef:
    """Parse a reference; ValueError (never echoing the text) when it is not one."""
    if m := _VAULT.match(text):
        return SecretRef("vault", m["path"], m["key"])
    if m := _ENV.match(text):
        return SecretRef("env", m["name"])
    if m := _FILE.match(text):
        return SecretRef("file", m["path"])
    raise ValueError(f"is not a secret reference; {HOW_TO}")


def check_allowed(reference: SecretRef, prefixes: tuple[str, ...]) -> None:
    """ValueError unless ``reference`` starts with one of the operator's allowed
    prefixes (none configured: any). Without this, a node author could point a
    credential field at any secret the worker can read (``env:`` of the
    platform's own keys, any mounted file)."""
    if prefixes and not str(reference).startswith(prefixes):
        raise ValueError(f"names {reference}, which is outside the allowed references: {', '.join(prefixes)}")
