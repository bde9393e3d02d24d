"""Keeping short leases alive while their holder works: a run's dispatch, a variation's attempt.

The job task claims a run's dispatch with a short lease (``_BEGIN_DISPATCH`` in
contract/jobs.py): a copy of the task that arrives meanwhile (a chain link sent twice, a
message delivered twice) waits instead of publishing a second chord, and if this worker dies
mid-dispatch its redelivery claims the run again within one lease. Publishing takes
milliseconds, but each message may wait out a Redis failover (~35 s: ``task_publish_retry_policy``
in contract/queue.py).

A variation's attempt leases the variation the same way (``_BEGIN_VARIATION``): a copy of its
message delivered while it generates (RabbitMQ requeues an unacked message when the worker's
connection drops, and Celery keeps running the task) retries later instead of paying for the
image a second time; the provider call takes 10-35 s or more.

One thread per process and kind renews every lease of that kind it holds, every third of a
lease, in one round trip per pass, until each is released. A process that dies stops renewing,
so its leases run out within one lease and a redelivered copy starts then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar

import redis

log = logging.getLogger(__name__)

# Short, so that a dead holder's claim runs out soon after it died (its redelivery waits at most
# this long); long beside the renewal period, so that a busy process renews in time.
DISPATCH_LEASE_S = 10.0
# The same trade for a variation: a copy of a SIGKILLed worker's variation starts at most this
# long after the worker's last renewal (the chaos settings give a job 60 s to make progress).
VARIATION_LEASE_S = 10.0

Lease = TypeVar("Lease", bound=Hashable)
# (the leases held, the lease length) -> whether each is still held; one round trip for them all.
RenewAll = Callable[[Sequence[Lease], float], object]


class LeaseKeeper(Generic[Lease]):
    """Renews the leases of one kind this process holds (``holding``) until each is released.

    ``renew_all`` gets every held lease at once (e.g. ``JobRecords.renew_dispatches`` or
    ``renew_variations``): a process with 512 variations running renews them in one call."""

    def __init__(self, renew_all: RenewAll[Lease], lease_s: float = DISPATCH_LEASE_S, kind: str = "dispatch"):
        self.lease_s = lease_s
        self.kind = kind
        self._renew_all = renew_all
        self._held: set[Lease] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def holding(self, lease: Lease) -> Iterator[None]:
        with self._lock:
            self._held.add(lease)
            if self._thread is None:  # started in the process that uses it (after a prefork fork)
                self._thread = threading.Thread(
                    target=self._renew_forever, name=f"imagegen-{self.kind}-leases", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(lease)

    def _renew_forever(self) -> None:
        while True:
            time.sleep(self.lease_s / 3)
            with self._lock:
                held = list(self._held)
            if not held:
                continue
            try:
                self._renew_all(held, self.lease_s)
            except (redis.RedisError, OSError) as exc:  # Redis away: the holders' own writes wait it out too
                log.warning("%d %s lease(s) not renewed: %s", len(held), self.kind, type(exc).__name__)
