"""Provider registry: one instance per worker process, picked by the
catalog entry's ``provider`` field. A provider that also writes text (the
prompt step) is the same instance: one SDK client, one connection pool."""

from __future__ import annotations

import threading
from collections.abc import Callable

from contract.settings import Settings
from worker.errors import PermanentError
from worker.providers.base import (
    GeneratedImage,
    GeneratedText,
    GenerationRequest,
    ImageProvider,
    TextProvider,
    TextRequest,
)
from worker.providers.offline import OfflineProvider

__all__ = [
    "GeneratedImage",
    "GeneratedText",
    "GenerationRequest",
    "ImageProvider",
    "TextProvider",
    "TextRequest",
    "provider_for",
    "text_provider_for",
]

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


def text_provider_for(name: str, settings: Settings) -> TextProvider:
    """The process-wide provider instance, as a text writer (the catalog's text model names it)."""
    instance = provider_for(name, settings)
    if not isinstance(instance, TextProvider):
        raise PermanentError(f"provider {name!r} named in the model catalog's text_models does not write text")
    return instance
