"""Deterministic object keys: the same job and variation always land on the
same key, so a redelivered or retried task overwrites and never duplicates."""

from __future__ import annotations


def object_key(prefix: str | None, job_id: str, index: int, extension: str) -> str:
    parts = [p for p in (prefix or "").strip("/").split("/") if p]
    return "/".join([*parts, job_id, f"variation-{index}.{extension}"])
