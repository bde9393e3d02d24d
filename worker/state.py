"""Per-process handles the tasks share: Redis, job records, the shared rate limiter."""

from __future__ import annotations

from functools import lru_cache

import redis

from contract.jobs import JobRecords
from contract.settings import get_settings
from worker.rate_limit import SharedRateLimiter


@lru_cache(maxsize=1)
def job_records() -> JobRecords:
    settings = get_settings()
    return JobRecords(redis.Redis.from_url(settings.redis_url), settings.result_ttl_s)


@lru_cache(maxsize=1)
def rate_limiter() -> SharedRateLimiter:
    settings = get_settings()
    # A booked wait is an unacked countdown message: keep it within the retry
    # ceiling that the visibility timeout is checked against.
    return SharedRateLimiter(job_records().client, settings.rate_limit_table, settings.retry_max_delay_s)
