"""The one small interface every storage backend implements, and the checks
every backend makes before it touches its bucket: a key is canonical (no
``..``, no empty or dot segments, a safe alphabet) so no write or signed URL can
leave the store's root or container, whatever a job id or prefix said."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime

from worker.errors import StorageError

KEY_MAX_CHARS = 1024
# What the write check leaves at its marker key (worker/storage/write_check.py).
WRITE_CHECK_BODY = b"imagegen write check: the worker can store images here\n"
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class StoredObject:
    uri: str  # durable address: file://, s3://, https blob URL, gs://
    url: str  # what the next node fetches
    url_expires_at: datetime | None = None


def check_key(key: str) -> str:
    """``key`` if it is canonical; StorageError otherwise (checked by every store, on every call)."""
    segments = key.split("/")
    if (
        not key
        or len(key) > KEY_MAX_CHARS
        or any(segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment) for segment in segments)
    ):
        raise StorageError(
            "refused an object key outside the store's canonical form (no '..', '.', '//' or unsafe characters)"
        )
    return key


class ImageStore(ABC):
    """Writes objects under deterministic keys (a rewrite overwrites)."""

    where: str  # "S3 bucket 'x'", for messages

    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> StoredObject:
        return self._put(check_key(key), data, content_type, metadata)

    def check_writable(self, key: str) -> None:
        """Prove that this store takes a write at ``key`` as it takes an image: the same request
        and permission (a write; no HeadBucket or List, which a write-only policy may deny) and
        the same URL signing after it. StorageError as ``put`` raises it. A backend whose
        objects can be in the way of a later image (a file where a folder must go) overrides it."""
        self.put(key, WRITE_CHECK_BODY, "text/plain", {})

    def url_for(self, uri: str) -> StoredObject:
        """A fresh ``url`` for an object this store holds (re-signing)."""
        return self._object(check_key(self.key_of(uri)))

    @abstractmethod
    def key_of(self, uri: str) -> str:
        """The key of ``uri`` in this store; StorageError when the uri is not in it."""

    @abstractmethod
    def _put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> StoredObject: ...

    @abstractmethod
    def _object(self, key: str) -> StoredObject:
        """The uri and (signed, public or file) url of the object at ``key``."""
