"""The worker's broker consumer: Celery's, surviving a lost Redis with tasks in flight.

With Celery 5.7 and kombu 5.7, when the Redis broker goes away while tasks are
running (a restart, a Sentinel failover), the consumer closes the broken
connection: its Redis channel then tries to requeue the unacked messages, and
later to ack the ones whose tasks finish, through a transport that is already
gone. ``AttributeError: 'NoneType' object has no attribute 'hostname'`` escapes
and the worker process exits ("Unrecoverable error"), taking every running task
with it.

Here, before Celery closes that channel, its messages are left as they are in
Redis's unacked set: no requeue (the tasks are still running here; a requeued
copy would run a second time at once), and a late ack that cannot reach the
closed channel is dropped with a log line. The consumer reconnects as after
any connection loss, the running tasks finish and store their results, and the
copy Redis redelivers after the visibility timeout is skipped because the task
already finished (a variation: the job record remembers it per run; other tasks:
``worker_deduplicate_successful_tasks``). RabbitMQ never
takes this path (the broker requeues a dropped connection's messages itself).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from celery.worker.consumer import Consumer
from kombu.transport.redis import Channel as RedisChannel
from kombu.transport.redis import QoS as RedisQoS
from kombu.transport.virtual import QoS as VirtualQoS
from redis.sentinel import SentinelManagedConnection

from contract.redis_client import SentinelConnection, is_transient, transient_retry
from worker import reliable_fetch
from worker.event_batching import BatchedTaskEvents

log = logging.getLogger(__name__)


class ResilientConsumer(BatchedTaskEvents, Consumer):  # type: ignore[misc]  # Celery ships no type hints
    def on_connection_error_after_connected(self, exc: Exception) -> None:
        qos = getattr(getattr(self.task_consumer, "channel", None), "_qos", None)
        if isinstance(qos, RedisQoS):
            in_flight = len(qos._delivered)
            qos.restore_at_shutdown = False  # this instance only: the closing channel's
            qos.ack = _tolerant_ack(qos.ack)  # type: ignore[method-assign]
            if in_flight:
                log.warning(
                    "broker connection lost with %d message(s) in flight: they stay unacked in Redis, "
                    "and a copy redelivered after the visibility timeout is skipped if its task succeeded",
                    in_flight,
                )
        super().on_connection_error_after_connected(exc)


def _tolerant_ack(ack: Callable[[Any], None]) -> Callable[[Any], None]:
    def ack_on_closed_channel(delivery_tag: Any) -> None:
        try:
            ack(delivery_tag)
        except AttributeError:  # the channel's transport was collected with the lost connection
            log.info("message %s finished after its connection was lost; left unacked in Redis", delivery_tag)

    return ack_on_closed_channel


def _refused_for_now(exc: Exception) -> bool:
    """A write Redis refused without running it (OOM at maxmemory, READONLY or NOREPLICAS around
    a failover, LOADING after a restart); kombu does not count those as connection errors and
    ended the worker ("Unrecoverable error")."""
    return isinstance(exc, redis.ResponseError) and is_transient(exc)


def _ack_through_oom(ack: Callable[..., None]) -> Callable[..., None]:
    """Redis at ``maxmemory`` (noeviction) refuses even the ack's ZREM/HDEL transaction; the
    connection retries that for about half a minute (``_with_transient_retry`` below). If Redis
    still refuses, leave the message unacked: it is redelivered after the visibility timeout and
    skipped because its task succeeded."""

    @functools.wraps(ack)
    def ack_or_leave(self: RedisQoS, delivery_tag: Any) -> None:
        try:
            ack(self, delivery_tag)
        except redis.ResponseError as exc:
            if not _refused_for_now(exc):
                raise
            log.warning("Redis refuses writes: message %s left unacked (its task finished)", delivery_tag)

    return ack_or_leave


def _append_through_oom(append: Callable[..., None]) -> Callable[..., None]:
    """A message taken from the queue (BRPOP) is recorded as unacked before its task starts; under
    ``maxmemory`` that ZADD/HSET was refused and kombu ended the worker, and with it the message,
    which was in no Redis list any more (measured: 1 job of 12 lost, 1 worker death). The
    connection now retries for about half a minute; if Redis still refuses, the task runs anyway,
    untracked: only this worker's death before the ack could then lose it."""

    @functools.wraps(append)
    def append_or_run_untracked(self: RedisQoS, message: Any, delivery_tag: Any) -> None:
        try:
            append(self, message, delivery_tag)
        except redis.ResponseError as exc:
            if not _refused_for_now(exc):
                raise
            log.warning("Redis refuses writes: message %s runs without its unacked record", delivery_tag)
            VirtualQoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]  # the record its ack needs

    return append_or_run_untracked


def _with_transient_retry(connparams: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """The broker's command connections (publish, ack, the unacked records, the redelivery sweep)
    retry what the job store retries (contract.redis_client.TransientRetry): a publish refused
    with OOM, READONLY or NOREPLICAS waits and runs again instead of failing its task, or the
    chord's callback; the consumer's loop waits meanwhile (every write it could do would be
    refused too). The blocking pop's connection is left alone (kombu drives it itself), and
    on Sentinel a retry reconnects to the current master (SentinelConnection)."""

    @functools.wraps(connparams)
    def with_retry(self: RedisChannel, asynchronous: bool = False) -> dict[str, Any]:
        params = connparams(self, asynchronous)
        if not asynchronous:
            params["retry"] = transient_retry()
        if params.get("connection_class") is SentinelManagedConnection:
            params["connection_class"] = SentinelConnection  # a retry reconnects to the current master
        return params

    return with_retry


def _pop_through_refusals(brpop_read: Callable[..., Any]) -> Callable[..., Any]:
    """BRPOP writes (it removes the message), so a demoted master answers READONLY and one short of
    ``min-replicas-to-write`` NOREPLICAS: kombu took that for a broken channel and ended the worker.
    Take it as the connection error it amounts to: the consumer reconnects (through the sentinels,
    to the current master) as after a lost connection (ResilientConsumer above)."""

    @functools.wraps(brpop_read)
    def brpop_or_reconnect(self: RedisChannel, **options: Any) -> Any:
        try:
            return brpop_read(self, **options)
        except redis.ResponseError as exc:
            if not _refused_for_now(exc):
                raise
            self.client.connection.disconnect()
            time.sleep(0.5)  # the refusal lasts seconds: do not spin on it
            raise redis.ConnectionError(f"broker refused the blocking pop: {exc}") from exc

    return brpop_or_reconnect


reliable_fetch.install()  # BLMOVE instead of BRPOP; the wrappers below go around it
RedisQoS.ack = _ack_through_oom(RedisQoS.ack)  # type: ignore[method-assign]
RedisQoS.append = _append_through_oom(RedisQoS.append)  # type: ignore[method-assign]
RedisChannel._connparams = _with_transient_retry(RedisChannel._connparams)  # type: ignore[method-assign]
RedisChannel._brpop_read = _pop_through_refusals(RedisChannel._brpop_read)  # type: ignore[method-assign]
