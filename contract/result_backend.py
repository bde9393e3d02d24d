"""Celery's Redis result backend, riding out the Redis faults the job store rides out.

Celery's backend retries connection errors only, and its chord bookkeeping (the Lua
script each variation runs when it finishes, ``on_chord_part_return``) not even those.
A full Redis (``OOM command not allowed``, noeviction), a restarted one still loading
its AOF, or a failover (the old master answering READONLY or NOREPLICAS, a new master
that never saw the scripts) made the worker drop the variation's place in the chord:
every job in flight then waited for the lost-job deadline. Here every command retries
those faults for about half a minute (``contract.redis_client.TransientRetry``, the
job store's policy) and the chord scripts run on whichever server is master
(``FailoverSafeScript``).

``celery_config`` (contract/queue.py) selects these classes through Celery's
``module:Class+scheme://`` form of ``result_backend``; producer and worker use them alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any

from celery.backends.base import compress_payload
from celery.backends.redis import CHORD_PART_RETURN_LUA, RedisBackend, ResultConsumer, SentinelBackend
from celery.result import AsyncResult

from contract.queue import SIGN_RESULT_TTL_S, SIGN_TASK_PREFIX, job_task_id
from contract.redis_client import FailoverSafeRedis, SentinelConnection, is_transient, transient_retry

log = logging.getLogger(__name__)

PATIENCE_SETTING = "imagegen_redis_patience_s"  # a Celery conf key, read by the backend below
COMPRESS_FROM_BYTES = 1024  # smaller payloads are stored as they are (a result document is larger)


def run_document(app: Any, job_id: str, run: int) -> dict[str, Any] | None:
    """The result document stored for ``run`` of ``job_id`` (under its task id), or None while
    there is none (not finished yet, expired). The one read of it: the client's ``result``,
    a ``completed`` event's document (client, webhook delivery)."""
    outcome = AsyncResult(job_task_id(job_id, run), app=app)
    if not outcome.successful() or not isinstance(outcome.result, dict):
        return None
    return outcome.result


class WaitsNoLongerThanAsked(ResultConsumer):  # type: ignore[misc]
    """Celery's consumer of result messages, keeping ``AsyncResult.get(timeout=...)`` to its
    timeout. Celery's drainer waits for a message in fixed steps of one second (``get`` does not
    pass its ``interval`` on) and checks the timeout only between steps: ``wait(timeout=0.3)``
    took 1.0 s, ``wait(timeout=1.5)`` 2.0 s. Here each step is at most the time left, with the
    threads drainer and the greenlet ones alike."""

    def drain_events_until(
        self, p: Any, timeout: float | None = None, on_interval: Callable[[], Any] | None = None
    ) -> Iterator[Any]:
        if timeout is None:
            yield from super().drain_events_until(p, timeout=timeout, on_interval=on_interval)
            return
        deadline = time.monotonic() + timeout
        while not p.ready:  # Celery's Drainer.drain_events_until, with the step bounded
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError()
            step = min(1.0, left)
            try:
                yield self.drainer.wait_for(p, self.drain_events, timeout=step)
            except TimeoutError:
                pass
            except OSError:  # as Celery: drain_events reconnects; back off instead of spinning
                log.warning("result consumer: connection error while waiting, trying again", exc_info=True)
                time.sleep(step)
            if on_interval:
                on_interval()


class RidesOutRedisFaults:
    """The changes, for the plain and the Sentinel backend alike (a mixin: Celery picks one class)."""

    ResultConsumer = WaitsNoLongerThanAsked

    app: Any
    connparams: dict[str, Any]
    client: Any
    compression: str | None
    _encode: Any
    get_key_for_task: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per command: set, get, the chord scripts. A producer waits only as long as its callers
        # will (IMAGEGEN_CLIENT_REDIS_PATIENCE_S, set by ImageGenClient); workers ride faults out.
        patience = self.app.conf.get(PATIENCE_SETTING) or 35.0
        self.connparams["retry"] = transient_retry(float(patience))

    def encode(self, data: Any) -> Any:
        """Celery's payload, compressed (``result_compression``) only from ``COMPRESS_FROM_BYTES``:
        a variation's record for the chord is a few hundred bytes and lives seconds, and each
        zlib call lets go of the GIL (another thread's turn, in a busy worker) to save nothing.
        Readers tell the two apart by Celery's marker, whatever their own setting."""
        _, _, payload = self._encode(data)
        if self.compression and len(payload) >= COMPRESS_FROM_BYTES:
            payload = compress_payload(payload, self.compression)
        return payload

    def _set(self, key: bytes, value: Any, expires: int | None = None) -> None:
        if key.startswith(self._sign_key_prefix):  # a signed URL (contract/queue.py), any state
            expires = SIGN_RESULT_TTL_S if expires is None else min(expires, SIGN_RESULT_TTL_S)
        super()._set(key, value, expires)  # type: ignore[misc]

    @cached_property
    def _sign_key_prefix(self) -> bytes:
        return bytes(self.get_key_for_task(SIGN_TASK_PREFIX))

    def _get_client(self) -> type[FailoverSafeRedis]:
        return FailoverSafeRedis  # its register_script survives a failover

    def exception_safe_to_retry(self, exc: BaseException) -> bool:
        # ``result_backend_always_retry``: storing a result and reading one retry these too.
        return is_transient(exc)

    @cached_property
    def _chord_part_return_script(self) -> Any:
        return _ChordPartReturn(self.client)


class _ChordPartReturn:
    """Celery's chord part script, claiming the callback also when the reply of a run that
    claimed it was lost and the command ran again (the retry finds its own claim taken)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.script = client.register_script(CHORD_PART_RETURN_LUA)

    def __call__(self, keys: list[Any], args: list[Any], client: Any = None) -> Any:
        readycount, totaldiff, size, claimed = self.script(keys=keys, args=args, client=client)
        complete = size is not None and readycount == int(size) + int(totaldiff or 0)
        if complete and not claimed and _text(self.client.get(keys[5])) == str(args[7]):
            claimed = 1  # ckey holds this call's own token: an earlier try of this call claimed it
        return [readycount, totaldiff, size, claimed]


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class ImageGenRedisBackend(RidesOutRedisFaults, RedisBackend):  # type: ignore[misc]
    """``redis://``, ``rediss://`` and ``socket://``."""


class ImageGenSentinelBackend(RidesOutRedisFaults, SentinelBackend):  # type: ignore[misc]
    """``sentinel://`` (kombu's form, contract/redis_client.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A retry reconnects to the current master, not the demoted one (see SentinelConnection).
        self.connparams.setdefault("connection_class", SentinelConnection)
