"""Provider quotas as configuration: ``IMAGEGEN_RATE_LIMITS``.

Gemini's limits (requests and images per minute) are per Google Cloud project
and model, shared by every pod using the key, so they are enforced in Redis
for all workers at once (``worker/rate_limit.py``), not per worker.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimit:
    """``per_minute`` calls, at most ``burst`` of them back to back."""

    per_minute: float
    burst: int = 1

    def __post_init__(self) -> None:
        if self.per_minute <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs per_minute > 0 and burst >= 1")

    @property
    def interval_s(self) -> float:
        return 60.0 / self.per_minute


def parse_rate_limits(spec: str) -> dict[str, RateLimit]:
    """``"gemini-3-pro-image=20:5,gemini-2.5-flash-image=100"``: API model id =
    calls per minute, optionally ``:burst`` (default 1, evenly spaced)."""
    limits = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        model_id, sep, rule = item.partition("=")
        per_minute, _, burst = rule.partition(":")
        try:
            if not sep or not model_id.strip():
                raise ValueError
            limits[model_id.strip()] = RateLimit(float(per_minute), int(burst or 1))
        except ValueError:
            raise ValueError(
                f"IMAGEGEN_RATE_LIMITS item {item!r} is not MODEL_ID=PER_MINUTE[:BURST], e.g. gemini-3-pro-image=20:5"
            ) from None
    return limits
