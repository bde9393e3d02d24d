"""When to retry a transient failure, and after how long.

Exponential backoff with jitter, but never sooner than the server asked
(RetryInfo / Retry-After), and never past the retry budget: a daily quota
429 does not clear with short retries.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from contract.settings import Settings


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    base_delay_s: float
    max_delay_s: float
    max_total_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            settings.retry_max_retries,
            settings.retry_base_delay_s,
            settings.retry_max_delay_s,
            settings.retry_max_total_s,
        )

    def countdown(self, retries_done: int, server_delay_s: float | None = None) -> float:
        """Seconds to wait before retry number ``retries_done + 1``."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2**retries_done)
        jittered = random.uniform(ceiling / 2, ceiling)  # "equal jitter": spread, but never near zero
        return max(jittered, server_delay_s or 0.0)

    def allows(self, retries_done: int, countdown_s: float, elapsed_s: float) -> bool:
        """False once retries or the total time budget would be exceeded."""
        return retries_done < self.max_retries and elapsed_s + countdown_s <= self.max_total_s
