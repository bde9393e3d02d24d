"""The one small interface every storage backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class StoredObject:
    uri: str  # durable address: file://, s3://, https blob URL, gs://
    url: str  # what the next node fetches
    url_expires_at: datetime | None = None


class ImageStore(Protocol):
    """Writes objects under deterministic keys (a rewrite overwrites)."""

    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> StoredObject: ...

    def url_for(self, uri: str) -> StoredObject:
        """A fresh ``url`` for an object this store holds (re-signing)."""
        ...
