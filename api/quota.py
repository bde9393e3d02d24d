"""The per-tenant cap on jobs in flight (``IMAGEGEN_API_MAX_JOBS_IN_FLIGHT``), the caps on
what a request holds open in one API process (event streams, signs waiting for a worker), and
each tenant's own threads for submits.

One set per tenant holds the internal ids of its jobs that may still be queued
or running. Booking a new job adds it if the tenant is below the cap; at the cap,
the members whose record says finished (or is gone) are pruned first. Both are
one Lua script: two API processes booking for the same tenant at once cannot
both take the last slot.

A slot is given back only while no job of its id is queued or running: requests
sending the same id at once share one member, and the one that enqueued nothing
must not take it from the job the other enqueued.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import anyio
import redis

from contract.queue import KEY_PREFIX, job_key

# KEYS[1]: the tenant's in-flight set; KEYS[2]: the new job's hash; KEYS[3..]: the hashes of the
# members the caller read just before (ARGV[5..] are their ids, in the same order).
# ARGV[1]: the cap; ARGV[2]: the new job's id; ARGV[3]: "1" for a rerun; ARGV[4]: the set's TTL (s).
# Returns {booked, in_flight}: booked is 1 (added), 2 (not a new job: it exists and this is no
# rerun, or it is a member already, so no slot is taken) or 0 (at the cap).
# Members added by others since the caller read the set are counted, not pruned: they are in flight.
_BOOK = """
for i = 3, #KEYS do
  local state = redis.call('HGET', KEYS[i], 'state')
  if not state or (state ~= 'queued' and state ~= 'running') then
    redis.call('SREM', KEYS[1], ARGV[i + 2])
  end
end
if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 1 or (ARGV[3] ~= '1' and redis.call('EXISTS', KEYS[2]) == 1) then
  return {2, redis.call('SCARD', KEYS[1])}
end
local count = redis.call('SCARD', KEYS[1])
if count >= tonumber(ARGV[1]) then return {0, count} end
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {1, count + 1}
"""

# KEYS[1]: the tenant's in-flight set; KEYS[2]: the job's hash. ARGV[1]: the job's id.
# Release: removes the id unless its job is queued or running. A request that booked a slot and
# then enqueued nothing may have lost to another (the same id sent twice at once, a rerun that
# found another's rerun queued): that job is in flight, and the other request took no slot for it.
# Returns 1 when removed.
_RELEASE = """
local state = redis.call('HGET', KEYS[2], 'state')
if state == 'queued' or state == 'running' then return 0 end
return redis.call('SREM', KEYS[1], ARGV[1])
"""

# KEYS[1]: the tenant's in-flight set. ARGV[1]: the job's id; ARGV[2]: the set's TTL (s).
# Keep: adds the id of a job this request enqueued without booking a slot (its booking found the
# id a member: another request's booking, whose submit then enqueued nothing and released it).
# Over the cap if need be: the job is in flight, so it is counted. Returns 1.
_KEEP = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

PRUNE_BATCH = 1000  # members read when pruning: bounded work per request
PRUNE_SLACK = 16  # a lowered cap leaves more members than it allows: read some more


def in_flight_key(tenant: str) -> str:
    return f"{KEY_PREFIX}:api:in-flight:{tenant}"


@dataclass(frozen=True)
class Booking:
    booked: bool  # False: at the cap, nothing added
    added: bool  # True: this call took a slot (release it if the submit fails)
    in_flight: int


class InFlightCap:
    def __init__(self, client: redis.Redis, cap: int, ttl_s: int):
        self.client = client
        self.cap = cap
        self.ttl_s = ttl_s
        self._book = client.register_script(_BOOK)
        self._release = client.register_script(_RELEASE)
        self._keep = client.register_script(_KEEP)

    def book(self, tenant: str, job_id: str, *, rerun: bool = False) -> Booking:
        """One round trip below the cap; at the cap, the members are read and the finished ones
        pruned before asking again (so a booking's work grows with the cap only when it is reached)."""
        key = in_flight_key(tenant)
        booking = self._run(key, job_id, rerun, [])
        if booking.booked:
            return booking
        sample: Any = self.client.srandmember(key, min(self.cap + PRUNE_SLACK, PRUNE_BATCH)) or []
        members = [m.decode() if isinstance(m, bytes) else str(m) for m in sample]
        return self._run(key, job_id, rerun, members)

    def _run(self, key: str, job_id: str, rerun: bool, members: list[str]) -> Booking:
        outcome, count = self._book(
            keys=[key, job_key(job_id), *(job_key(m) for m in members)],
            args=[self.cap, job_id, "1" if rerun else "0", self.ttl_s, *members],
        )
        return Booking(booked=int(outcome) != 0, added=int(outcome) == 1, in_flight=int(count))

    def release(self, tenant: str, job_id: str) -> None:
        """The submit did not enqueue after all (conflict, Redis error, another request's submit of the
        same id won): give the slot back, unless a job of this id is in flight (_RELEASE)."""
        self._release(keys=[in_flight_key(tenant), job_key(job_id)], args=[job_id])

    def keep(self, tenant: str, job_id: str) -> None:
        """This submit enqueued a job its booking took no slot for (_KEEP): count it."""
        self._keep(keys=[in_flight_key(tenant)], args=[job_id, self.ttl_s])


class ConcurrencyCap:
    """A cap on something each request holds open, per API process: so many per tenant and so
    many for all. Event streams (``IMAGEGEN_API_MAX_STREAMS[_PER_TENANT]``) each hold a Redis
    connection in a blocking read, and the process's async pool is sized from the total
    (api/events.py); signs (``IMAGEGEN_API_MAX_SIGNS[_PER_TENANT]``) each wait for a worker on a
    thread of their own. Either way one tenant cannot take what every other tenant, and the
    readiness probe, need."""

    def __init__(self, per_tenant: int, total: int):
        self.per_tenant = per_tenant
        self.total = total
        self._open: dict[str, int] = {}

    def open(self, tenant: str) -> Literal["opened", "tenant", "process"]:
        """Count one more for ``tenant``, or say which cap is reached (nothing counted).
        Called on the event loop only, so no lock."""
        count = self._open.get(tenant, 0)
        if count >= self.per_tenant:
            return "tenant"
        if sum(self._open.values()) >= self.total:
            return "process"
        self._open[tenant] = count + 1
        return "opened"

    def close(self, tenant: str) -> None:
        count = self._open.get(tenant, 0) - 1
        if count > 0:
            self._open[tenant] = count
        else:
            self._open.pop(tenant, None)


class TenantThreads:
    """One thread limiter per tenant, for work that may block for a while on the tenant's own
    input: a submit resolves its webhook's host (production), and a name whose DNS server does
    not answer holds a thread for seconds. On the shared pool (40 threads, every route's blocking
    calls) 45 such submits had stalled every tenant's requests; here a tenant's extra submits
    wait for its own threads. Tenants are the configured ones (IMAGEGEN_API_TOKENS), so the
    limiters are few. Created and read on the event loop only, so no lock."""

    def __init__(self, per_tenant: int):
        self.per_tenant = per_tenant
        self._limiters: dict[str, anyio.CapacityLimiter] = {}

    def of(self, tenant: str) -> anyio.CapacityLimiter:
        limiter = self._limiters.get(tenant)
        if limiter is None:
            limiter = self._limiters[tenant] = anyio.CapacityLimiter(self.per_tenant)
        return limiter
