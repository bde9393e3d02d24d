"""Picks the store for a node: the node's own cloud when ``use_cloud`` is
true, otherwise the operator's platform storage (``IMAGEGEN_STORAGE_URL``)."""

from __future__ import annotations

from contract.node import NodeInputs
from contract.settings import Settings
from worker.errors import PermanentError
from worker.storage.base import ImageStore, StoredObject
from worker.storage.keys import object_key
from worker.storage.local import LocalStore

__all__ = ["ImageStore", "StoredObject", "object_key", "platform_store", "store_for"]


def platform_store(settings: Settings) -> tuple[ImageStore, str | None]:
    """The platform store and the key prefix inside it."""
    url = settings.storage_url
    if url.startswith("file://"):
        url = url.removeprefix("file://")
    if "://" not in url:
        return LocalStore(url, settings.storage_public_base_url), None
    raise PermanentError(f"IMAGEGEN_STORAGE_URL scheme of {url!r} is not supported; use a local directory")


def store_for(inputs: NodeInputs, settings: Settings) -> tuple[ImageStore, str | None]:
    if not inputs.use_cloud:
        return platform_store(settings)
    raise PermanentError(f"cloud storage on {inputs.cloud_provider} is not available in this build")
