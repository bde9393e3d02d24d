"""Per-process handles the tasks share: Redis, job records, the shared rate limiter, the dispatch and
variation leases."""

from __future__ import annotations

from functools import lru_cache

from contract.jobs import JobRecords
from contract.redis_client import redis_client
from contract.settings import get_settings
from worker.dispatch_lease import DISPATCH_LEASE_S, VARIATION_LEASE_S, LeaseKeeper
from worker.rate_limit import SharedRateLimiter


@lru_cache(maxsize=1)
def job_records() -> JobRecords:
    settings = get_settings()
    # One connection per slot at most (redis-py's default cap of 100 raises MaxConnectionsError past it).
    return JobRecords(redis_client(settings.redis_url, max_connections=settings.pool_size), settings.result_ttl_s)


@lru_cache(maxsize=1)
def rate_limiter() -> SharedRateLimiter:
    settings = get_settings()
    # A booked wait is an unacked countdown message: keep it within the retry
    # ceiling that the visibility timeout is checked against.
    return SharedRateLimiter(job_records().client, settings.rate_limit_table, settings.retry_max_delay_s)


@lru_cache(maxsize=1)
def dispatch_leases() -> LeaseKeeper[tuple[str, int, str]]:
    """(job id, run, token) claims on runs' dispatches."""
    return LeaseKeeper(job_records().renew_dispatches, DISPATCH_LEASE_S, kind="dispatch")


@lru_cache(maxsize=1)
def variation_leases() -> LeaseKeeper[tuple[str, int, int, str]]:
    """(job id, run, index, token) leases on variations being generated."""
    return LeaseKeeper(job_records().renew_variations, VARIATION_LEASE_S, kind="variation")
