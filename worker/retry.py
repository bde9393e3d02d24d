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

    def refusal(self, retries_done: int, countdown_s: float, elapsed_s: float) -> str | None:
        """Why another retry is not allowed, or None when it is.

        A server asking for a longer wait than ``max_delay_s`` is refused too:
        a waiting retry is an unacked message, and one held past the
        visibility timeout (checked against ``max_delay_s``) runs twice.
        """
        if retries_done >= self.max_retries:
            return f"{self.max_retries} retries used"
        if countdown_s > self.max_delay_s:
            return f"the server asked to wait {countdown_s:.0f} s, more than IMAGEGEN_RETRY_MAX_DELAY_S"
        if elapsed_s + countdown_s > self.max_total_s:
            return f"the {self.max_total_s:.0f} s retry budget would be exceeded"
        return None
