"""What every cloud storage spec provides, and the rules they share.

A ``CloudSpec`` owns one cloud's node fields, their validation at submit, the
``Target`` they describe and the name of the worker's store class that builds
the client and signs URLs. The rules about *who may write where* live here
once, so every cloud obeys them alike:

* the worker's own identity (its default credential chain) writes only to the
  platform storage and to targets the operator allow-listed
  (``IMAGEGEN_ALLOWED_TARGETS``); any other target needs the node's own
  credential reference;
* endpoints (an account URL, an endpoint inside a referenced secret) must be
  http(s) without user info, query or fragment; in production https on the
  cloud's public host suffixes or ``IMAGEGEN_ALLOWED_ENDPOINT_HOSTS``.
"""

from __future__ import annotations

import ipaddress
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from urllib3.util import parse_url

from contract.job_ids import NAMESPACE_ROOT

PREFIX_MAX_CHARS = 256
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_ENDPOINT_PATH = re.compile(r"(/[A-Za-z0-9-]{1,64})?/?")


class TargetError(ValueError):
    """A storage target or endpoint that a rule refuses; the message is safe to show."""


@dataclass(frozen=True)
class Target:
    """Where images go: hashable (it keys the worker's store cache), references only, never secrets."""

    provider: str
    bucket: str  # the Azure container for azure
    prefix: str = ""  # canonical: segments joined by "/", no leading or trailing "/"
    region: str | None = None
    account_url: str | None = None  # azure only: https://<account>.blob.core.windows.net
    project: str | None = None
    credentials: str | None = None  # a secret reference; None: the worker's default credential chain
    platform: bool = False  # the operator's IMAGEGEN_STORAGE_URL

    @property
    def where(self) -> str:
        from contract.clouds import spec_for  # the registry imports this module

        return f"{spec_for(self.provider).label} {self.bucket!r}"

    @property
    def account_host(self) -> str:
        """The account URL's host and port, as ``IMAGEGEN_ALLOWED_TARGETS`` names it; with a
        path-style account (an IP, an emulator) also its path, which no entry can name."""
        if not self.account_url:
            return ""
        parts = urlsplit(self.account_url)
        return without_default_port(parts.netloc.lower(), parts.scheme) + parts.path.rstrip("/")


def without_default_port(netloc: str, scheme: str = "https") -> str:
    """``host:443`` is ``host`` (``:80`` for http, and for an az:// entry, which names no scheme)."""
    for default in {"https": (":443",), "http": (":80",)}.get(scheme, (":443", ":80")):
        if netloc.endswith(default):
            return netloc[: -len(default)]
    return netloc


@dataclass(frozen=True)
class AllowedTarget:
    """One ``IMAGEGEN_ALLOWED_TARGETS`` entry: ``s3://bucket[/prefix]``, ``gs://bucket[/prefix]``,
    ``az://account-host/container[/prefix]``."""

    provider: str
    bucket: str
    prefix: tuple[str, ...] = ()
    account_host: str = ""

    def covers(self, target: Target) -> bool:
        if (target.provider, target.bucket) != (self.provider, self.bucket):
            return False
        if self.provider == "azure" and target.account_host != self.account_host:
            return False
        segments = tuple(target.prefix.split("/")) if target.prefix else ()
        return segments[: len(self.prefix)] == self.prefix


@dataclass(frozen=True)
class TargetPolicy:
    """The operator's rules for node targets and endpoints (from Settings)."""

    production: bool = False
    allowed_targets: tuple[AllowedTarget, ...] = ()
    allowed_endpoint_hosts: tuple[str, ...] = ()  # "host" exact, ".suffix" any subdomain

    def allows_identity_for(self, provider: str) -> bool:
        """Whether any node target of ``provider`` may be written with the worker's own identity."""
        return any(allowed.provider == provider for allowed in self.allowed_targets)

    def check_identity(self, target: Target) -> None:
        """The worker's own identity serves only the platform and allow-listed targets."""
        if target.credentials or target.platform:
            return
        if any(allowed.covers(target) for allowed in self.allowed_targets):
            return
        raise TargetError(
            f"is required for {target.where}: without a credential reference the worker would write with the "
            "platform's own identity, which serves only the platform storage and IMAGEGEN_ALLOWED_TARGETS"
        )

    def check_endpoint(self, url: str, public_hosts: tuple[str, ...], what: str, *, any_path: bool = False) -> str:
        """``url`` if it is an endpoint the worker may contact; TargetError otherwise.
        ``public_hosts``: "host" exactly, ".suffix" any name under it."""
        if not _URL_TEXT.fullmatch(url):
            # A backslash, a %-escape or a space parses differently in urllib and in urllib3:
            # "https://10.0.0.2\.blob.core.windows.net" names a public host to the one and
            # connects to 10.0.0.2 with the other.
            raise TargetError(f"{what} must not hold a backslash, a %-escape, spaces or control characters")
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower().rstrip(".")
            _ = parts.port  # raises on a non-numeric port
            connects_to = (parse_url(url).host or "").lower().strip("[]").rstrip(".")
        except ValueError:
            raise TargetError(f"{what} is not a valid URL") from None
        if connects_to != host:  # what we check must be what the HTTP client dials
            raise TargetError(f"{what} is not a valid URL")
        if parts.scheme not in ("https", "http") or not host:
            raise TargetError(f"{what} must be an https:// URL with a host")
        if parts.username or parts.password or "@" in parts.netloc:
            raise TargetError(f"{what} must not carry user info")
        if parts.query or parts.fragment:
            raise TargetError(f"{what} must be the endpoint alone, without a query or fragment")
        if not any_path and not _ENDPOINT_PATH.fullmatch(parts.path):  # emulators put the account name in the path
            raise TargetError(f"{what} may have at most an account name as its path")
        if _host_listed(host, self.allowed_endpoint_hosts):
            return url
        if self.production:
            if parts.scheme != "https":
                raise TargetError(f"{what} must use https in production")
            if not _is_name(host) or not _host_listed(host, public_hosts):
                raise TargetError(
                    f"{what} host {host!r} is not a public endpoint of this cloud ({', '.join(public_hosts)}) "
                    "nor in IMAGEGEN_ALLOWED_ENDPOINT_HOSTS"
                )
        return url


_URL_TEXT = re.compile(r"[A-Za-z0-9\-._~:/\[\]@?#=&]+")


def _host_listed(host: str, listed: tuple[str, ...]) -> bool:
    return any(host == entry or (entry.startswith(".") and host.endswith(entry)) for entry in listed)


def _is_name(host: str) -> bool:
    """A DNS name, not an IP literal (internal hosts are usually reached by address)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return True
    return False


def canonical_prefix(value: str) -> str:
    """``/a//b/`` -> ``a/b``; TargetError on ``.``/``..`` segments, unsafe characters, or a
    ``t`` segment: it starts a tenant's namespace (``t/<tenant>/...``, contract/tenancy.py), and a
    prefix ``x/t/acme`` would put another tenant's images under acme's keys, where acme signs them."""
    if len(value) > PREFIX_MAX_CHARS:
        raise TargetError(f"is {len(value)} characters; at most {PREFIX_MAX_CHARS} are allowed")
    segments = [s for s in value.split("/") if s]
    for segment in segments:
        if segment in (".", "..") or not _SEGMENT.fullmatch(segment):
            raise TargetError(
                "must be path segments of letters, digits, '.', '_' and '-' separated by '/' (no '.' or '..' segments)"
            )
        if segment == NAMESPACE_ROOT:
            raise TargetError(
                f"has the segment {NAMESPACE_ROOT!r}, which is reserved: images of the HTTP API's tenants are "
                f"stored under {NAMESPACE_ROOT}/<tenant>/ keys, and only there"
            )
    return "/".join(segments)


class CloudSpec(ABC):
    """One cloud: its node fields, their validation, its target and its store."""

    name: ClassVar[str]  # the cloud_provider value: aws, azure, gcp
    label: ClassVar[str]  # "S3 bucket", for messages
    scheme: ClassVar[str]  # platform IMAGEGEN_STORAGE_URL scheme: s3, az, gs
    bucket_field: ClassVar[str]
    credential_field: ClassVar[str]
    prefix_field: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]  # every node input this cloud owns
    public_suffixes: ClassVar[tuple[str, ...]] = ()  # hosts an endpoint may have in production
    store: ClassVar[str]  # "module:Class" of the worker's store (client construction and signing)

    def problems(self, inputs: Mapping[str, Any], policy: TargetPolicy) -> dict[str, str]:
        """Field -> message for every problem of this cloud's fields (submit time)."""
        found: dict[str, str] = {}
        for name in self.fields:
            value = inputs.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                found[name] = "must be a string"
                continue
            try:
                self.check_field(name, value, policy)
            except TargetError as exc:
                found[name] = str(exc)
        if not inputs.get(self.bucket_field):
            found.setdefault(self.bucket_field, f"is required when use_cloud is true and cloud_provider is {self.name}")
        found.update(self.cross_field_problems(inputs, policy))
        if self.credential_field not in found and not (found.keys() & {self.bucket_field, self.prefix_field}):
            try:
                policy.check_identity(self.target(inputs))
            except TargetError as exc:
                found[self.credential_field] = str(exc)
        elif not (self.credential_field in found or inputs.get(self.credential_field)) and not (
            policy.allows_identity_for(self.name)
        ):
            # No target to check yet; with no allow-listed one of this cloud, a credential is
            # required whatever the bucket: said now, not after the bucket is mended.
            found[self.credential_field] = (
                f"is required when use_cloud is true and cloud_provider is {self.name}: a credential "
                "reference (the worker's own identity serves only the platform storage and "
                "IMAGEGEN_ALLOWED_TARGETS, which lists none here)"
            )
        return found

    def check_field(self, name: str, value: str, policy: TargetPolicy) -> None:
        """TargetError when one field's value breaks this cloud's rules."""
        if name == self.prefix_field:
            canonical_prefix(value)
        elif name == self.bucket_field:
            self.check_bucket(value)

    def cross_field_problems(self, inputs: Mapping[str, Any], policy: TargetPolicy) -> dict[str, str]:
        return {}

    @abstractmethod
    def check_bucket(self, value: str) -> None:
        """TargetError unless ``value`` follows the cloud's bucket (container) naming rules."""

    @abstractmethod
    def target(self, inputs: Mapping[str, Any]) -> Target:
        """The target the node's (valid) fields describe."""

    @abstractmethod
    def platform_target(self, netloc: str, prefix: str, settings: Any) -> Target:
        """The operator's platform target for ``<scheme>://netloc/prefix``."""


def require(inputs: Mapping[str, Any], name: str, provider: str) -> str:
    value = inputs.get(name)
    if not value or not isinstance(value, str):
        raise TargetError(f"{name} is required when use_cloud is true and cloud_provider is {provider}")
    return value
