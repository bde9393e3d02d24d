"""Producer: what the workflow engine calls to enqueue image_generation jobs."""

from producer.client import ImageGenClient, JobCrashed, JobHandle, JobNotFound, JobTimeout

__all__ = ["ImageGenClient", "JobCrashed", "JobHandle", "JobNotFound", "JobTimeout"]
