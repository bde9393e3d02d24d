"""Azure Blob Storage: container naming rules and account-URL host rules.

A node names its account either by a connection string (a secret reference;
its endpoint is checked in the worker once resolved) or by an account URL,
which without a connection string means the worker's own Azure identity:
that is allowed only for targets the operator listed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from contract.clouds.base import CloudSpec, Target, TargetError, TargetPolicy, canonical_prefix, require

_CONTAINER = re.compile(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]")
# The platform's connection string is read through the same resolver as a node's.
PLATFORM_CONNECTION_STRING = "env:AZURE_STORAGE_CONNECTION_STRING"


class AzureBlobSpec(CloudSpec):
    name = "azure"
    label = "Azure container"
    scheme = "az"
    bucket_field = "azure_container"
    credential_field = "azure_connection_string"
    prefix_field = "azure_prefix"
    fields = ("azure_container", "azure_account_url", "azure_connection_string", "azure_prefix")
    public_suffixes = (".blob.core.windows.net", ".blob.core.usgovcloudapi.net", ".blob.core.chinacloudapi.cn")
    store = "worker.storage.azure_blob:AzureBlobStore"

    def check_field(self, name: str, value: str, policy: TargetPolicy) -> None:
        if name == "azure_account_url":
            policy.check_endpoint(value, self.public_suffixes, "the account URL")
        super().check_field(name, value, policy)

    def check_bucket(self, value: str) -> None:
        if not _CONTAINER.fullmatch(value):
            raise TargetError(
                "must be an Azure container name: 3-63 lowercase letters, digits and single '-', "
                "starting and ending with a letter or digit"
            )

    def cross_field_problems(self, inputs: Mapping[str, Any], policy: TargetPolicy) -> dict[str, str]:
        if inputs.get("azure_account_url") and inputs.get("azure_connection_string"):
            # The connection string names its own account: the URL would be ignored without a word.
            return {"azure_account_url": "give azure_account_url or azure_connection_string, not both"}
        if inputs.get("azure_account_url") or inputs.get("azure_connection_string"):
            return {}
        if not policy.allows_identity_for(self.name):
            return {}  # only a connection string will do: the credential's own problem says so
        return {
            "azure_account_url": "is required when use_cloud is true and cloud_provider is azure, unless "
            "azure_connection_string is given (a credential reference); the URL alone writes with the "
            "worker's own identity, for a container in IMAGEGEN_ALLOWED_TARGETS"
        }

    def target(self, inputs: Mapping[str, Any]) -> Target:
        credentials = inputs.get(self.credential_field)
        account_url = inputs.get("azure_account_url")
        if not credentials and not account_url:
            raise TargetError("azure_account_url or azure_connection_string is required")
        return Target(
            "azure",
            require(inputs, self.bucket_field, self.name),
            prefix=canonical_prefix(inputs.get(self.prefix_field) or ""),
            account_url=account_url.rstrip("/") if account_url else None,
            credentials=credentials,
        )

    def platform_target(self, netloc: str, prefix: str, settings: Any) -> Target:
        if os.environ.get("AZURE_STORAGE_CONNECTION_STRING"):
            return Target("azure", netloc, prefix=prefix, credentials=PLATFORM_CONNECTION_STRING, platform=True)
        if settings.azure_storage_account_url:
            url = settings.azure_storage_account_url.rstrip("/")
            return Target("azure", netloc, prefix=prefix, account_url=url, platform=True)
        raise TargetError(
            "IMAGEGEN_STORAGE_URL is az://: set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_URL "
            "with an Azure identity for the worker"
        )
