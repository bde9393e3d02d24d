"""Producer: what the workflow engine calls to enqueue image_generation jobs.

Every error it raises derives from ``ImageGenError``."""

from contract.errors import ImageGenError, NodeValidationError
from contract.jobs import JobConflict
from producer.client import (
    ImageGenClient,
    JobCrashed,
    JobHandle,
    JobNotFound,
    JobTimeout,
    QueueUnavailable,
    SignError,
)

__all__ = [
    "ImageGenClient",
    "ImageGenError",
    "JobConflict",
    "JobCrashed",
    "JobHandle",
    "JobNotFound",
    "JobTimeout",
    "NodeValidationError",
    "QueueUnavailable",
    "SignError",
]
