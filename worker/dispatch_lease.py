"""Keeping a run's dispatch claim alive while its chord is published.

The job task claims a run's dispatch with a short lease (``_BEGIN_DISPATCH`` in
contract/jobs.py): a copy of the task that arrives meanwhile (a chain link sent twice, a
message delivered twice) waits instead of publishing a second chord, and if this worker dies
mid-dispatch its redelivery claims the run again within one lease. Publishing takes
milliseconds, but each message may wait out a Redis failover (~35 s: ``task_publish_retry_policy``
in contract/queue.py), so one thread per process renews every claim it holds, every third of a
lease, until the claim is released.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

log = logging.getLogger(__name__)

# Short, so that a dead holder's claim runs out soon after it died (its redelivery waits at most
# this long); long beside the renewal period, so that a busy process renews in time.
DISPATCH_LEASE_S = 10.0

Renew = Callable[[str, int, str, float], bool]  # (job id, run, token, lease) -> still held


class LeaseKeeper:
    """Renews the dispatch claims this process holds (``holding``) until each is released."""

    def __init__(self, renew: Renew, lease_s: float = DISPATCH_LEASE_S):
        self.lease_s = lease_s
        self._renew = renew
        self._held: set[tuple[str, int, str]] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def holding(self, job_id: str, run: int, token: str) -> Iterator[None]:
        claim = (job_id, run, token)
        with self._lock:
            self._held.add(claim)
            if self._thread is None:  # started in the process that uses it (after a prefork fork)
                self._thread = threading.Thread(
                    target=self._renew_forever, name="imagegen-dispatch-leases", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(claim)

    def _renew_forever(self) -> None:
        while True:
            time.sleep(self.lease_s / 3)
            with self._lock:
                held = list(self._held)
            for job_id, run, token in held:
                try:
                    self._renew(job_id, run, token, self.lease_s)
                except (redis.RedisError, OSError) as exc:  # Redis away: the publish waits it out too
                    log.warning("job %s run %d: dispatch lease not renewed: %s", job_id, run, type(exc).__name__)
