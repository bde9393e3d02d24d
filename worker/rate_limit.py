"""One quota for all workers: GCRA slot booking in a single Redis Lua script.

``rate_limit`` in Celery is per worker instance (celery#5732); a provider's
quota is per project. A call that may not go now books the next free slot and
is retried with a countdown to it (the worker slot is freed, never slept on);
each waiting task holds its own slot, so a backlog does not stampede. A slot
further away than ``max_wait_s`` is not booked: the task looks again later.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from contract.queue import KEY_PREFIX
from contract.rate_limits import RateLimit

# KEYS[1]: the model's key. ARGV: emission interval, burst tolerance, longest
# wait worth booking (seconds). Returns {booked (1/0), seconds until the slot}.
# Redis's own clock, so pods with skewed clocks share one schedule.
_BOOK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, tolerance, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = math.max(0, tat - tolerance - now)
if wait > max_wait then return {0, tostring(wait)} end
tat = tat + interval
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return {1, tostring(wait)}
"""


class QuotaWait(Exception):  # a signal to the task, not an error: waiting uses no retry
    """The project's quota has no slot now: retry in ``countdown`` s (``booked``: one is held then)."""

    def __init__(self, countdown: float, booked: bool):
        super().__init__(f"provider quota busy for {countdown:.1f} s")
        self.countdown = countdown
        self.booked = booked


@dataclass(frozen=True)
class Slot:
    booked: bool  # False: nothing booked, look again after wait_s
    wait_s: float  # 0 with booked: go now


class SharedRateLimiter:
    def __init__(self, client: redis.Redis, limits: dict[str, RateLimit], max_wait_s: float):
        self.limits = limits
        self.max_wait_s = max_wait_s
        self._book = client.register_script(_BOOK)

    def book(self, model_id: str) -> Slot:
        """A slot for one call to ``model_id``; models without a limit always go now."""
        limit = self.limits.get(model_id)
        if limit is None:
            return Slot(True, 0.0)
        tolerance = limit.interval_s * (limit.burst - 1)
        key = f"{KEY_PREFIX}:ratelimit:{model_id}"
        booked, wait = self._book(keys=[key], args=[limit.interval_s, tolerance, self.max_wait_s])
        return Slot(bool(booked), float(wait))

    def go_now(self, model_id: str, look_again_s: float) -> None:
        """Return if a call to ``model_id`` may go now; else QuotaWait until its booked slot, or
        ``look_again_s`` when none was near enough to book."""
        slot = self.book(model_id)
        if not slot.booked or slot.wait_s > 0:
            raise QuotaWait(slot.wait_s if slot.booked else look_again_s, slot.booked)
