"""The write check: proof that a store takes the worker's writes, before a variation pays for
an image it could not store.

Opening a store only builds an SDK client, so a bucket that does not exist, keys that are
wrong, a wrong region or a policy without PutObject were found by the upload, after the
provider had billed the image. Before its provider call, a variation (and a job's prompt step,
before its text call) now writes a small marker object where its images go:

* ``<prefix>/.imagegen-write-check`` for the platform's own jobs;
* ``<prefix>/t/<tenant>/.imagegen-write-check`` for a tenant's job: inside the tenant's
  namespace, which is all a per-tenant policy may allow.

A write is the one permission storing images needs; HeadBucket or ListBucket may be denied to
a write-only policy that stores images fine. It is the same request as an image's upload (its
URL is signed too), so it fails as that would. The marker's name is no image's
(``variation-<i>.<ext>``): it cannot be signed (keys.check_image_key). The local store makes
the folders and a temporary file instead, and leaves nothing (LocalStore.check_writable).

One check per store and marker key per worker process, not one per image: a pass holds for
``WRITE_CHECK_TTL_S``, a permanent failure for ``FAILED_CHECK_TTL_S`` (the variations of a job
at a missing bucket fail without a request each, and a bucket that is fixed is used again
soon); a transient failure (refused connection, 5xx, throttling) is not kept, and the variation
retries it as any transient failure (a ``TransientError``). A store is rebuilt when its
credentials are read again (IMAGEGEN_SECRET_CACHE_TTL_S): a new store is checked again.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

from worker.errors import StorageError, StorageUnavailable, TransientError
from worker.storage.base import ImageStore
from worker.storage.keys import write_check_key

WRITE_CHECK_TTL_S = 300.0
FAILED_CHECK_TTL_S = 30.0
# Marker keys remembered per store (one per tenant writing to it), least recently checked evicted.
MAX_CHECKS_PER_STORE = 256


@dataclass(frozen=True)
class _Verdict:
    expires_at: float  # time.monotonic()
    failure: str | None  # a permanent failure's message; None: the store took the write


@dataclass
class _Flight:
    """A check under way: the threads that want the same one wait for its outcome."""

    done: threading.Event = field(default_factory=threading.Event)
    outcome: _Verdict | TransientError | None = None  # None: it failed unexpectedly (a bug, logged by its caller)


_lock = threading.Lock()  # guards the two maps below; never held during a check
# Weak keys: a store evicted from the store cache takes its verdicts with it, and a new store
# (rotated credentials) never finds an old one's.
_verdicts: weakref.WeakKeyDictionary[ImageStore, OrderedDict[str, _Verdict]] = weakref.WeakKeyDictionary()
_flights: dict[tuple[int, str], _Flight] = {}  # by (id(store), key): the store is alive while its check runs


def ensure_writable(store: ImageStore, prefix: str, job_id: str) -> None:
    """Return when ``store`` took (recently) a write beside ``job_id``'s images; else StorageError
    (permanent: nothing will be generated) or TransientError (retry the variation later)."""
    key = write_check_key(prefix, job_id)
    verdict = _cached(store, key) or _checked(store, key)
    if verdict.failure is not None:
        raise StorageError(verdict.failure)


def _checked(store: ImageStore, key: str) -> _Verdict:
    """The verdict of one check of ``key``, shared by the threads that ask while it runs (a job's
    variations start together): one write, and one wait for a store that does not answer."""
    flight_key = (id(store), key)
    with _lock:
        flight = _flights.get(flight_key)
        leading = flight is None
        if flight is None:
            flight = _flights[flight_key] = _Flight()
    if not leading:
        flight.done.wait()
        if isinstance(flight.outcome, TransientError):
            raise TransientError(str(flight.outcome))
        return flight.outcome or _check(store, key)
    try:
        flight.outcome = _check(store, key)
        return flight.outcome
    except TransientError as exc:
        flight.outcome = exc
        raise
    finally:
        with _lock:
            del _flights[flight_key]
        flight.done.set()


def _check(store: ImageStore, key: str) -> _Verdict:
    try:
        store.check_writable(key)
    except StorageUnavailable as exc:
        # Not kept: the next attempt checks again.
        raise TransientError(f"{exc} (in the write check, before generating)") from None
    except StorageError as exc:
        message = f"{exc} (a test write before generating failed: no image was made)"
        verdict = _Verdict(time.monotonic() + FAILED_CHECK_TTL_S, message)
    else:
        verdict = _Verdict(time.monotonic() + WRITE_CHECK_TTL_S, None)
    with _lock:
        checks = _verdicts.setdefault(store, OrderedDict())
        checks.pop(key, None)
        checks[key] = verdict
        while len(checks) > MAX_CHECKS_PER_STORE:
            checks.popitem(last=False)
    return verdict


def _cached(store: ImageStore, key: str) -> _Verdict | None:
    with _lock:
        checks = _verdicts.get(store)
        verdict = checks.get(key) if checks is not None else None
    if verdict is None or verdict.expires_at <= time.monotonic():
        return None
    return verdict


def clear_write_checks() -> None:
    with _lock:
        _verdicts.clear()
