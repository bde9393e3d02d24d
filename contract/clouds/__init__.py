"""Cloud storage specs: one module per cloud, registered here by its
``cloud_provider`` name. Adding a cloud is a new spec module, a store module in
``worker/storage`` and one line in ``SPECS``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import SplitResult, urlsplit

from contract.clouds.aws import S3Spec
from contract.clouds.azure import AzureBlobSpec
from contract.clouds.base import (
    AllowedTarget,
    CloudSpec,
    Target,
    TargetError,
    TargetPolicy,
    canonical_prefix,
    without_default_port,
)
from contract.clouds.gcp import GCSSpec
from contract.errors import excerpt

__all__ = [
    "SPECS",
    "AllowedTarget",
    "CloudSpec",
    "Target",
    "TargetError",
    "TargetPolicy",
    "canonical_prefix",
    "node_target",
    "parse_allowed_targets",
    "platform_target",
    "spec_for",
    "storage_problems",
    "storage_url_parts",
]

SPECS: dict[str, CloudSpec] = {spec.name: spec for spec in (S3Spec(), AzureBlobSpec(), GCSSpec())}
_BY_SCHEME = {spec.scheme: spec for spec in SPECS.values()}
CLOUD_FIELDS = frozenset(name for spec in SPECS.values() for name in spec.fields)


def spec_for(provider: str) -> CloudSpec:
    spec = SPECS.get(provider)
    if spec is None:
        raise TargetError(f"cloud_provider {excerpt(provider)!r} is not supported; allowed: {', '.join(SPECS)}")
    return spec


def storage_problems(inputs: Mapping[str, Any], policy: TargetPolicy) -> dict[str, str]:
    """Field -> message for the node's storage fields (use_cloud true; provider known)."""
    provider = inputs.get("cloud_provider")
    if not isinstance(provider, str) or provider not in SPECS:
        return {}  # reported by the field's own validator
    problems = SPECS[provider].problems(inputs, policy)
    # Another cloud's fields are a mistake the author should hear about, not ignored silently.
    for name in sorted(CLOUD_FIELDS - set(SPECS[provider].fields)):
        if inputs.get(name) is not None:
            problems.setdefault(name, f"belongs to another cloud; cloud_provider is {provider}")
    return problems


def node_target(inputs: Mapping[str, Any], policy: TargetPolicy) -> Target:
    """The node's own target, after every rule; TargetError naming the field otherwise."""
    spec = spec_for(str(inputs.get("cloud_provider")))
    problems = spec.problems(inputs, policy)
    if problems:
        field, message = next(iter(problems.items()))
        raise TargetError(f"{field} {message}")
    return spec.target(inputs)


def storage_url_parts(url: str) -> SplitResult | None:
    """``IMAGEGEN_STORAGE_URL`` split, when it names cloud storage; None for a local directory."""
    if url.startswith("file://") or "://" not in url:
        return None
    return urlsplit(url)


def platform_target(url: str, settings: Any) -> Target | None:
    """The operator's ``IMAGEGEN_STORAGE_URL`` as a target; None for a local directory."""
    parts = storage_url_parts(url)
    if parts is None:
        return None
    spec = _BY_SCHEME.get(parts.scheme)
    if spec is None or len(parts.netloc) < 3:
        raise TargetError(
            f"IMAGEGEN_STORAGE_URL {url!r} is not supported; use s3://bucket/prefix, az://container/prefix, "
            "gs://bucket/prefix or a local directory"
        )
    return spec.platform_target(parts.netloc, canonical_prefix(parts.path), settings)


def parse_allowed_targets(text: str) -> tuple[AllowedTarget, ...]:
    """``IMAGEGEN_ALLOWED_TARGETS``: comma-separated ``s3://bucket[/prefix]``, ``gs://bucket[/prefix]``,
    ``az://account-host/container[/prefix]``; ValueError naming a bad entry."""
    allowed = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        parts = urlsplit(entry)
        spec = _BY_SCHEME.get(parts.scheme)
        if spec is None or not parts.netloc:
            raise ValueError(f"IMAGEGEN_ALLOWED_TARGETS entry {entry!r}: use s3://, gs:// or az://")
        segments = [s for s in parts.path.split("/") if s]
        account = ""
        if spec.name == "azure":
            if not segments:
                raise ValueError(f"IMAGEGEN_ALLOWED_TARGETS entry {entry!r}: use az://account-host/container[/prefix]")
            account, bucket, segments = without_default_port(parts.netloc.lower(), ""), segments[0], segments[1:]
        else:
            bucket = parts.netloc
        try:
            spec.check_bucket(bucket)
            prefix = canonical_prefix("/".join(segments))
        except TargetError as exc:
            raise ValueError(f"IMAGEGEN_ALLOWED_TARGETS entry {entry!r}: {exc}") from None
        allowed.append(AllowedTarget(spec.name, bucket, tuple(prefix.split("/")) if prefix else (), account))
    return tuple(allowed)
