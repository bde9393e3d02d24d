"""Google Cloud Storage: bucket naming rules, project ids, and the only token
endpoints a service-account key may send the worker to."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from contract.clouds.base import CloudSpec, Target, TargetError, TargetPolicy, canonical_prefix, require

_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")


class GCSSpec(CloudSpec):
    name = "gcp"
    label = "GCS bucket"
    scheme = "gs"
    bucket_field = "gcp_bucket"
    credential_field = "gcp_credentials"
    prefix_field = "gcp_prefix"
    fields = ("gcp_bucket", "gcp_project", "gcp_prefix", "gcp_credentials")
    # Where a service-account key's token_uri may point (the worker checks it once resolved).
    public_suffixes = ("oauth2.googleapis.com", "accounts.google.com")  # exact hosts
    store = "worker.storage.gcs:GCSStore"

    def check_field(self, name: str, value: str, policy: TargetPolicy) -> None:
        if name == "gcp_project" and not _PROJECT.fullmatch(value):
            raise TargetError("must be a Google Cloud project id: 6-30 lowercase letters, digits and '-'")
        super().check_field(name, value, policy)

    def check_bucket(self, value: str) -> None:
        parts = value.split(".")
        if (
            not _BUCKET.fullmatch(value)
            or any(not 1 <= len(part) <= 63 for part in parts)
            or (len(value) > 63 and "." not in value)
            or value.startswith("goog")
            or "google" in value
            or _is_ip(value)
        ):
            raise TargetError(
                "must be a GCS bucket name: 3-63 lowercase letters, digits, '-', '_' and '.', "
                "starting and ending with a letter or digit"
            )

    def target(self, inputs: Mapping[str, Any]) -> Target:
        return Target(
            "gcp",
            require(inputs, self.bucket_field, self.name),
            prefix=canonical_prefix(inputs.get(self.prefix_field) or ""),
            project=inputs.get("gcp_project"),
            credentials=inputs.get(self.credential_field),
        )

    def platform_target(self, netloc: str, prefix: str, settings: Any) -> Target:
        return Target("gcp", netloc, prefix=prefix, project=settings.google_cloud_project, platform=True)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
