"""One redis-py client per kombu Redis channel, instead of one per command.

kombu's Redis channel builds a new ``redis.Redis`` around its connection pool
for every publish, ack and unacked record (``Channel.conn_or_acquire``). In
redis-py 8 that constructor copies the whole response-callback table: ~60 us,
about 23 times per job in a worker (measured with cProfile: 9 % of a solo
worker's busy time at L = 0), and once per publish in the producer. A ``redis.Redis``
is thread-safe (each command borrows a pool connection), so the channel keeps
the one it built and builds again only when kombu replaced its pool (after a
reconnect). Installed by contract/queue.py, so the producer and the worker both
use it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from kombu.transport.redis import Channel as RedisChannel

_CACHED = "_imagegen_command_client"


def _reuse_command_client(create: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(create)
    def create_or_reuse(self: RedisChannel, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer's blocking-pop client: kombu caches that one itself
            return create(self, asynchronous)
        client = self.__dict__.get(_CACHED)
        if client is None or client.connection_pool is not self.pool:
            client = create(self, False)
            self.__dict__[_CACHED] = client
        return client

    create_or_reuse.__imagegen_patched__ = True  # type: ignore[attr-defined]
    return create_or_reuse


def install() -> None:
    """Idempotent: a second import (tests reload modules) does not wrap twice."""
    if not getattr(RedisChannel._create_client, "__imagegen_patched__", False):
        RedisChannel._create_client = _reuse_command_client(RedisChannel._create_client)  # type: ignore[method-assign]
