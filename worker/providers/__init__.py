"""Provider registry: one instance per worker process, picked by the
catalog entry's ``provider`` field."""

from __future__ import annotations

import threading
from collections.abc import Callable

from contract.settings import Settings
from worker.errors import PermanentError
from worker.providers.base import GeneratedImage, GenerationRequest, ImageProvider
from worker.providers.offline import OfflineProvider

__all__ = ["GeneratedImage", "GenerationRequest", "ImageProvider", "provider_for"]

_instances: dict[str, ImageProvider] = {}
_lock = threading.Lock()  # the threads pool may ask from many threads at once


def _offline(settings: Settings) -> ImageProvider:
    return OfflineProvider(settings.offline_latency_s, settings.offline_failures)


def _gemini(settings: Settings) -> ImageProvider:
    # Imported on first use: google-genai is heavy and offline-only workers never need it.
    from worker.providers.gemini import GeminiProvider

    return GeminiProvider(settings)


FACTORIES: dict[str, Callable[[Settings], ImageProvider]] = {"offline": _offline, "gemini": _gemini}


def provider_for(name: str, settings: Settings) -> ImageProvider:
    """The process-wide provider instance (SDK clients are made once)."""
    instance = _instances.get(name)
    if instance is not None:  # made already: no lock for every generation of every slot
        return instance
    with _lock:
        if name not in _instances:
            factory = FACTORIES.get(name)
            if factory is None:
                raise PermanentError(
                    f"provider {name!r} named in the model catalog is not available; known: {sorted(FACTORIES)}"
                )
            _instances[name] = factory(settings)
        return _instances[name]
