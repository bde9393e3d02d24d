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
from kombu.transport.redis import QoS as RedisQoS

log = logging.getLogger(__name__)


class ResilientConsumer(Consumer):  # type: ignore[misc]  # Celery ships no type hints
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


def _ack_through_oom(ack: Callable[..., None]) -> Callable[..., None]:
    """Redis at ``maxmemory`` (noeviction) refuses even the ack's ZREM/HDEL transaction; kombu
    does not count that as a connection error, so it ended the worker ("Unrecoverable error").
    Wait a little for memory to free up; then leave the message unacked: it is redelivered after
    the visibility timeout and skipped because its task succeeded."""

    @functools.wraps(ack)
    def ack_or_leave(self: RedisQoS, delivery_tag: Any) -> None:
        for delay in (0.2, 0.5, 1.0, 2.0):
            try:
                ack(self, delivery_tag)
                return
            except redis.OutOfMemoryError:
                time.sleep(delay)
        log.warning("Redis is out of memory: message %s left unacked (its task finished)", delivery_tag)

    return ack_or_leave


RedisQoS.ack = _ack_through_oom(RedisQoS.ack)  # type: ignore[method-assign]
