"""Which model providers a deployment can call, as its workers report them.

The API cannot tell by itself: in production it holds no model credentials (only
the workers do: deploy/k8s), so it would call every Gemini model "not
configured". Each worker writes the providers it is configured for into a hash
per queue (provider -> time of the report), at start and every lost-job sweep
round; the API reads the fresh entries.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis

from contract.queue import KEY_PREFIX
from contract.settings import Settings


def provider_configured(provider: str, settings: Settings) -> bool:
    """Whether this process holds what ``provider`` needs: the offline model needs nothing;
    Gemini a key or Vertex AI."""
    if provider == "offline":
        return True
    if provider == "gemini":
        return bool(settings.gemini_api_key or settings.google_api_key or settings.gemini_use_vertexai)
    return False


def providers_key(queue: str) -> str:
    return f"{KEY_PREFIX}:providers:{queue}"


def report_ttl_s(settings: Settings) -> int:
    """How long a report counts: three sweep rounds, at least five minutes."""
    return max(3 * settings.lost_sweep_s, 300)


def report_providers(client: redis.Redis, settings: Settings, providers: Iterable[str]) -> None:
    key, now = providers_key(settings.queue), int(time.time())
    with client.pipeline() as pipe:
        for provider in providers:
            pipe.hset(key, provider, now)
        pipe.expire(key, report_ttl_s(settings))
        pipe.execute()


def reported_providers(client: redis.Redis, settings: Settings) -> frozenset[str] | None:
    """The providers some worker of this queue reported lately; None when none reported."""
    entries = client.hgetall(providers_key(settings.queue))
    cutoff = time.time() - report_ttl_s(settings)
    fresh = frozenset(
        (p.decode() if isinstance(p, bytes) else str(p)) for p, at in entries.items() if float(at) >= cutoff
    )
    return fresh or None
