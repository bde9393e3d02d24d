"""The shared quota, on a real Redis: every limiter instance books from one schedule."""

from __future__ import annotations

import itertools
import uuid

import pytest
import redis

from contract.rate_limits import RateLimit
from worker.rate_limit import SharedRateLimiter


@pytest.fixture
def model_id() -> str:
    return f"model-{uuid.uuid4().hex[:6]}"


def limiter(redis_url: str, limits: dict[str, RateLimit], max_wait_s: float = 60) -> SharedRateLimiter:
    return SharedRateLimiter(redis.Redis.from_url(redis_url), limits, max_wait_s)


def test_burst_goes_now_then_slots_are_booked_one_interval_apart(redis_url: str, model_id: str) -> None:
    pod_a = limiter(redis_url, {model_id: RateLimit(per_minute=60, burst=3)})  # one per second
    pod_b = limiter(redis_url, {model_id: RateLimit(per_minute=60, burst=3)})  # another pod, same quota
    first = [pod_a.book(model_id), pod_b.book(model_id), pod_a.book(model_id)]
    assert all(slot.booked and slot.wait_s == 0 for slot in first)
    waits = [pod_b.book(model_id).wait_s, pod_a.book(model_id).wait_s, pod_b.book(model_id).wait_s]
    # Each waiting task holds its own later slot, one interval after the last;
    # the clock only moves forward between calls, so gaps shrink, never grow.
    assert 0.5 < waits[0] <= 1.0
    assert all(0.5 < b - a <= 1.0 + 1e-6 for a, b in itertools.pairwise(waits))


def test_slots_beyond_the_longest_wait_are_not_booked(redis_url: str, model_id: str) -> None:
    pod = limiter(redis_url, {model_id: RateLimit(per_minute=6)}, max_wait_s=15)  # one per 10 s
    assert pod.book(model_id).wait_s == 0
    second = pod.book(model_id)
    assert second.booked and 9 < second.wait_s <= 10
    third = pod.book(model_id)
    assert not third.booked and 19 < third.wait_s <= 20
    assert not pod.book(model_id).booked  # nothing was booked by the refusal: same answer
    assert 19 < pod.book(model_id).wait_s <= 20


def test_models_without_a_limit_always_go(redis_url: str, model_id: str) -> None:
    pod = limiter(redis_url, {})
    assert all(pod.book(model_id).wait_s == 0 for _ in range(100))
