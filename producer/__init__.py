"""Producer: what the workflow engine calls to enqueue image_generation jobs."""

from producer.client import ImageGenClient, JobHandle, JobNotFound, JobTimeout

__all__ = ["ImageGenClient", "JobHandle", "JobNotFound", "JobTimeout"]
