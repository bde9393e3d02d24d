"""Per-process handles the tasks share: settings, Redis, job records."""

from __future__ import annotations

from functools import lru_cache

import redis

from contract.jobs import JobRecords
from contract.settings import get_settings


@lru_cache(maxsize=1)
def job_records() -> JobRecords:
    settings = get_settings()
    return JobRecords(redis.Redis.from_url(settings.redis_url), settings.result_ttl_s)
