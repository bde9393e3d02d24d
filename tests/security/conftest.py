"""The emulator fixtures of the cloud tests and the HTTP API's, reused here (a non-root conftest
cannot use ``pytest_plugins``): importing them registers them for this folder."""

from __future__ import annotations

from tests.api.conftest import start_api
from tests.cloud.conftest import (
    aws_keys_json,
    azure_admin,
    azure_container,
    azurite,
    cloud_env,
    cloud_settings,
    gcs_admin,
    gcs_bucket,
    gcs_emulator,
    moto,
    openbao,
    put_secret,
    s3_admin,
    s3_bucket,
    sa_json,
    vault,
)

__all__ = [
    "aws_keys_json",
    "azure_admin",
    "azure_container",
    "azurite",
    "cloud_env",
    "cloud_settings",
    "gcs_admin",
    "gcs_bucket",
    "gcs_emulator",
    "moto",
    "openbao",
    "put_secret",
    "s3_admin",
    "s3_bucket",
    "sa_json",
    "start_api",
    "vault",
]
