"""Outcomes a provider or a store reports, named for what the task does next.

The variation task maps each one to a Celery retry (``TransientError``) or to
an error record in the result (everything else); it never lets one escape,
so the chord always fires.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contract.result import GenerationMetadata
    from worker.providers.base import GeneratedText


class GenerationError(Exception):
    """Base: ``str(exc)`` must be safe to show users (no secrets).

    ``spent``: what a provider call that was made, and billed, reported before its answer was
    refused (its usage and response id), so the job's cost still counts it.

    ``billed_image``: the same for an image: one that was made, and billed, before this error
    (its upload failed), so the variation's error record and the job's cost still count it."""

    spent: GeneratedText | None = None
    billed_image: GenerationMetadata | None = None


class TransientError(GenerationError):
    """Worth retrying later: 408/429/5xx, connection drops, read timeouts."""

    def __init__(self, message: str, *, retry_after_s: float | None = None, timed_out: bool = False):
        super().__init__(message)
        self.retry_after_s = retry_after_s  # the server's own delay hint, if any
        self.timed_out = timed_out


class PermanentError(GenerationError):
    """Retrying cannot help: 400/401/403/404, a retired model id."""


class BlockedError(GenerationError):
    """The provider refused or returned no image (safety, policy, text only)."""

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


class StorageError(GenerationError):
    """The image could not be stored (after storage retries), or the store failed its write check
    before any image was made (worker/storage/write_check.py)."""


class StorageUnavailable(StorageError):
    """A store that kept answering with transient errors (refused connections, 5xx, throttling)
    through the storage retries: a later attempt may succeed where a permanent cause cannot."""


class NotStoredHere(StorageError):
    """A uri or key that names no image this service stored in this store (signing refuses it).
    Its message may name the store; a tenant is told only that there is no such image."""
