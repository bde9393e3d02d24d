"""Provider quotas as configuration: ``IMAGEGEN_RATE_LIMITS``.

Gemini's limits (requests and images per minute) are per Google Cloud project
and model, shared by every pod using the key, so they are enforced in Redis
for all workers at once (``worker/rate_limit.py``), not per worker.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_PER_MINUTE = 0.001  # one call in about 17 hours
MAX_PER_MINUTE = 1e6
MAX_BURST = 100_000


@dataclass(frozen=True)
class RateLimit:
    """``per_minute`` calls, at most ``burst`` of them back to back."""

    per_minute: float
    burst: int = 1

    def __post_init__(self) -> None:
        # nan, inf and rates so small that one interval overflows Redis' PX would pass "> 0" and
        # then fail every variation's booking in Redis.
        if not (MIN_PER_MINUTE <= self.per_minute <= MAX_PER_MINUTE) or not 1 <= self.burst <= MAX_BURST:
            raise ValueError(
                f"a rate limit needs {MIN_PER_MINUTE:g} <= per_minute <= {MAX_PER_MINUTE:g} "
                f"and 1 <= burst <= {MAX_BURST}"
            )

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
                f"IMAGEGEN_RATE_LIMITS item {item!r} is not MODEL_ID=PER_MINUTE[:BURST] with "
                f"{MIN_PER_MINUTE:g} <= PER_MINUTE <= {MAX_PER_MINUTE:g}, e.g. gemini-3-pro-image=20:5"
            ) from None
    return limits
