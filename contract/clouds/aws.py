"""AWS S3: bucket naming rules, region grammar, platform ``s3://bucket/prefix``.

The endpoint comes from the region (or the operator's ``AWS_ENDPOINT_URL_S3``);
a node cannot name one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from contract.clouds.base import CloudSpec, Target, TargetError, TargetPolicy, canonical_prefix, require

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP = re.compile(r"\d+\.\d+\.\d+\.\d+")
# us-east-1, eu-central-2, us-gov-west-1, cn-northwest-1, us-isob-east-1
_REGION = re.compile(r"[a-z]{2}(-[a-z]{2,10}){1,3}-\d{1,2}")


class S3Spec(CloudSpec):
    name = "aws"
    label = "S3 bucket"
    scheme = "s3"
    bucket_field = "aws_bucket"
    credential_field = "aws_credentials"
    prefix_field = "aws_prefix"
    fields = ("aws_bucket", "aws_region", "aws_prefix", "aws_credentials")
    store = "worker.storage.s3:S3Store"

    def check_field(self, name: str, value: str, policy: TargetPolicy) -> None:
        if name == "aws_region" and not _REGION.fullmatch(value):
            raise TargetError("must be an AWS region name such as us-east-1 or eu-west-3")
        super().check_field(name, value, policy)

    def check_bucket(self, value: str) -> None:
        if (
            not _BUCKET.fullmatch(value)
            or ".." in value
            or _IP.fullmatch(value)
            or value.startswith(("xn--", "sthree-"))
            or value.endswith(("-s3alias", "--ol-s3"))
        ):
            raise TargetError(
                "must be an S3 bucket name: 3-63 lowercase letters, digits, '.' and '-', "
                "starting and ending with a letter or digit, not an IP address"
            )

    def target(self, inputs: Mapping[str, Any]) -> Target:
        return Target(
            "aws",
            require(inputs, self.bucket_field, self.name),
            prefix=canonical_prefix(inputs.get(self.prefix_field) or ""),
            region=inputs.get("aws_region"),
            credentials=inputs.get(self.credential_field),
        )

    def platform_target(self, netloc: str, prefix: str, settings: Any) -> Target:
        return Target("aws", netloc, prefix=prefix, platform=True)
