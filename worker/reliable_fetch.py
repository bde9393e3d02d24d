"""A Redis broker that cannot lose a message to a killed worker.

kombu takes a message with ``BRPOP`` and records it as unacked (``ZADD``/``HSET``) only
after it has read the reply. In between, the message is in no Redis list or hash, only
in the worker: in its socket buffer, or held there while the worker's slots are full
(kombu parks the reply until one frees). A worker SIGKILLed then (an OOM kill, a lost node)
takes it along (celery/kombu#305). Measured in the chaos suite: 1 job of 12 ended ``lost``
in 1 of 5 runs of "SIGKILL a worker (Redis broker)".

Here a message is moved, never popped (the reliable-queue pattern of Resque's RPOPLPUSH):

* ``BLMOVE queue -> in-flight list`` of the consuming channel: one atomic step, so the
  message is always in some Redis list;
* the unacked record and the ``LREM`` from the in-flight list go in one script: from then
  on kombu's unacked hash and visibility timeout take over, as before (the ack, too, is one
  script instead of kombu's ``MULTI``: one command to pack and parse on the worker's GIL
  instead of four);
* each channel owns its list through a key with a TTL, refreshed by a thread of the worker
  (every ``redelivery_sweep_s / 3``, TTL ``2 x redelivery_sweep_s``) whatever the event
  loop is doing;
* the redelivery sweep every worker already runs (kombu's ``restore_visible``) also puts the
  messages of a list whose owner is gone back at the head of their queue: a killed worker's
  moved messages run again within ``3 x redelivery_sweep_s`` (90 s by default), far inside
  the visibility timeout's bound;
* a channel whose blocking move failed with its connection (the reply lost in a Redis
  restart) has its leftovers put back before its next move, or by the thread if it never
  moves again (the consumer reconnects on a new channel).

This serves a channel that consumes one queue key with acks, as the worker does (one queue,
and ``priority_steps`` [0], contract/queue.py); a channel with several keys (priorities, more
queues) or a ``global_keyprefix`` keeps kombu's ``BRPOP``, which ``BLMOVE`` cannot replace,
and so does one that consumes without acks (nothing to lose: no ack was ever owed).
Installed by ``worker/consumer.py``; Redis >= 6.2.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from queue import Empty
from typing import Any

import redis
from kombu.transport.redis import Channel as RedisChannel
from kombu.transport.redis import QoS as RedisQoS
from kombu.transport.virtual import QoS as VirtualQoS
from kombu.utils.json import dumps, loads
from redis.commands.core import Script

from contract.queue import KEY_PREFIX
from contract.redis_client import is_transient

log = logging.getLogger(__name__)

REGISTRY_KEY = f"{KEY_PREFIX}:inflight"  # hash: channel id -> the queue key its list feeds


def inflight_key(channel_id: str) -> str:
    return f"{KEY_PREFIX}:inflight:{channel_id}"


def owner_key(channel_id: str) -> str:
    return f"{KEY_PREFIX}:inflight-owner:{channel_id}"


def _script_keys(channel_id: str, queue: str) -> list[str]:
    """KEYS of both scripts below, for one channel's list."""
    return [REGISTRY_KEY, inflight_key(channel_id), owner_key(channel_id), queue]


# KEYS[1]: the registry hash; KEYS[2]: the channel's in-flight list; KEYS[3]: its owner key;
# KEYS[4]: the queue key it feeds. ARGV[1]: the channel id; ARGV[2]: the owner's TTL (s).
# The channel is alive: its owner key lives on and the registry names its list.
_KEEP_ALIVE = """
redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], KEYS[4])
return 1
"""

# KEYS as _KEEP_ALIVE. ARGV[1]: the channel id; ARGV[2]: "own" (the channel's own leftovers:
# it has no move outstanding) or "orphan" (only if the owner key is gone). Moves every message
# of the list back to the head of the queue (the next one popped) and returns how many; -1 when
# the owner still lives.
_PUT_BACK = """
if ARGV[2] == 'orphan' and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local moved = 0
while redis.call('LMOVE', KEYS[2], KEYS[4], 'LEFT', 'RIGHT') do moved = moved + 1 end
if ARGV[2] == 'orphan' then redis.call('HDEL', KEYS[1], ARGV[1]) end
return moved
"""


# KEYS[1]: kombu's unacked index (zset); KEYS[2]: its unacked hash; KEYS[3]: the channel's
# in-flight list. ARGV[1]: the delivery tag; ARGV[2]: the time it was taken (the score);
# ARGV[3]: the message as moved; ARGV[4]: the record's tail, ``, "exchange", "routing key"]``.
# Records the moved message as kombu does (``[message, exchange, routing key]``), from its bytes
# as moved rather than re-encoded, and takes it off the in-flight list, in one step.
_RECORD_MOVED = b"""
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], '[' .. ARGV[3] .. ARGV[4])
redis.call('LREM', KEYS[3], 1, ARGV[3])
return 1
"""

# KEYS[1]: kombu's unacked index (zset); KEYS[2]: its unacked hash. ARGV[1]: the delivery tag.
# kombu's ack (its ``_remove_from_indices``) in one step.
_ACK = b"""
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

_record_moved = Script(None, _RECORD_MOVED)  # type: ignore[arg-type]  # bytes: hashed without a client; each call names one
_ack = Script(None, _ACK)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=64)
def _record_tail(exchange: str, routing_key: str) -> str:
    return f", {dumps(exchange)}, {dumps(routing_key)}]"  # type: ignore[no-untyped-call]


class InFlight:
    """One consuming channel's in-flight list, its owner key and the queue key it feeds."""

    def __init__(self, channel: Any, queue: str, sweep_s: int):
        self.id = uuid.uuid4().hex
        self.queue = queue
        self.list = inflight_key(self.id)
        self.ttl_s = max(2, 2 * sweep_s)
        self.refresh_s = max(0.5, sweep_s / 3)
        self.leftovers = False  # a move's reply was lost: put the list back before the next move
        self.moved: bytes | None = None  # the message just moved, until its unacked record takes over
        self.pool = channel.pool  # thread-safe: the refresh thread uses it too
        self.keys = _script_keys(self.id, queue)
        # Held from the leftovers check to the sent move: the refresh thread never puts the
        # list back while a move into it may be outstanding.
        self.lock = threading.Lock()

    def client(self) -> redis.Redis:
        return redis.Redis(connection_pool=self.pool)

    def keep_alive(self) -> None:
        self.client().eval(_KEEP_ALIVE, 4, *self.keys, self.id, self.ttl_s)

    def put_back_leftovers(self) -> None:
        """With the lock held and no move outstanding: put back what a lost reply left."""
        if not self.leftovers:
            return
        moved = int(self.client().eval(_PUT_BACK, 4, *self.keys, self.id, "own"))
        self.leftovers = False
        if moved:
            log.warning("put %d message(s) whose delivery was cut off back on %s", moved, self.queue)


def put_back_orphans(client: redis.Redis) -> int:
    """Move the messages of every in-flight list whose owner is gone back to their queues;
    how many. Each list is one atomic script: two sweeping workers cannot both move one."""
    moved = 0
    registry: dict[bytes, bytes] = client.hgetall(REGISTRY_KEY)  # type: ignore[assignment]
    for raw_id, raw_queue in registry.items():
        channel_id, queue = raw_id.decode(), raw_queue.decode()
        count = int(client.eval(_PUT_BACK, 4, *_script_keys(channel_id, queue), channel_id, "orphan"))
        if count > 0:
            log.warning("put %d message(s) of a dead consumer back on %s", count, queue)
            moved += count
    return moved


class _Refresher:
    """The thread that keeps every live channel's owner key alive."""

    def __init__(self) -> None:
        self.channels: weakref.WeakSet[Any] = weakref.WeakSet()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.added = threading.Event()  # a new channel: look after it now, not after a long nap

    def add(self, channel: Any) -> None:
        with self.lock:
            self.channels.add(channel)
            self.added.set()
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="imagegen-inflight-owner", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            with self.lock:
                channels = list(self.channels)
            period = 10.0
            for channel in channels:
                inflight: InFlight | None = getattr(channel, "_imagegen_inflight", None)
                if inflight is None:
                    continue
                period = min(period, inflight.refresh_s)
                try:
                    self._look_after(channel, inflight)
                except Exception as exc:  # the TTL covers a few misses; the thread must not die
                    # (besides Redis errors: kombu may disconnect a lost channel's pool under us)
                    log.warning("in-flight list not looked after: %s", type(exc).__name__)
            self.added.wait(period)
            self.added.clear()

    def _look_after(self, channel: Any, inflight: InFlight) -> None:
        closed = getattr(channel, "closed", True)
        # A channel whose connection was lost mid-move may never move again (the consumer
        # reconnects on a new channel): its leftovers go back now, not when the worker dies.
        with inflight.lock:
            if inflight.leftovers and (closed or not getattr(channel, "_imagegen_moving", False)):
                inflight.put_back_leftovers()
        if closed:
            with self.lock:
                self.channels.discard(channel)  # its owner key expires; a sweep drops the entry
        else:
            inflight.keep_alive()


_refresher = _Refresher()


def _single_key(channel: Any) -> str | None:
    """The one queue key this channel consumes, or None (kombu's BRPOP then): also for a queue
    consumed without acks (a control reply queue, such as mingle's at start-up), whose messages
    are never recorded as unacked, so a moved one would be put back and delivered for ever."""
    if channel.global_keyprefix:
        return None
    if set(channel.active_queues) & getattr(channel, "_imagegen_no_ack", set()):
        return None
    queues = channel._queue_cycle.consume(len(channel.active_queues))
    keys = [channel._q_for_pri(queue, pri) for pri in channel.priority_steps for queue in queues]
    return keys[0] if len(keys) == 1 else None


def _move_start(brpop_start: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(brpop_start)
    def move_start(self: Any, timeout: float | None = None) -> None:
        key = _single_key(self)
        if key is None:
            self._imagegen_moving = False
            return brpop_start(self, timeout)
        inflight: InFlight | None = getattr(self, "_imagegen_inflight", None)
        if inflight is None or inflight.queue != key:
            inflight = self._imagegen_inflight = InFlight(self, key, int(self.unacked_restore_interval))
            inflight.keep_alive()  # registered before its first move
            _refresher.add(self)
        if timeout is None:
            timeout = self.brpop_timeout
        with inflight.lock:
            if getattr(self, "_imagegen_moving", False):
                # The last move was never read: kombu dropped its connection (a stale socket, a
                # reset); Redis may have moved a message whose reply went with it.
                inflight.leftovers = True
            inflight.put_back_leftovers()
            _note_client_id(self.client.connection)
            self._imagegen_moving = True
            self._in_poll = self.client.connection
            self._brpop_sent_at = time.monotonic()
            self.client.connection.send_command("BLMOVE", key, inflight.list, "RIGHT", "LEFT", timeout or 0)
        return None

    return move_start


def _note_client_id(connection: Any) -> None:
    """Remember Redis's id for ``connection``'s socket, asked once per socket, so that closing
    the channel can end its blocking move at once (``_close_unblocking``). Without one (an
    error, an ACL without CLIENT: not asked again on this socket), closing waits out the move's
    timeout, as kombu does."""
    try:
        connection.connect()  # a no-op when connected: the id belongs to this socket
        socket_now = connection._sock
        noted = getattr(connection, "_imagegen_client_id", None)
        if noted is not None and noted[0] is socket_now:
            return
        connection._imagegen_client_id = (socket_now, None)
        connection.send_command("CLIENT", "ID")
        connection._imagegen_client_id = (socket_now, int(connection.read_response()))
    except (redis.RedisError, OSError, ValueError) as exc:
        log.debug("no client id noted: %s", type(exc).__name__)


def _tcp_address(address: Any) -> str:
    """A socket address as Redis's ``CLIENT LIST`` writes it: ``ip:port``, ``[ipv6]:port``."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _blocked_here(client: redis.Redis, client_id: int, sock: socket.socket) -> bool:
    """Whether ``client_id`` on the server ``client`` reaches is this very socket's blocked move:
    the pool's connection may reach another server (a restarted Redis reuses ids, a Sentinel
    failover moves the master), where the id may be someone else's blocking command."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    listed: list[dict[str, Any]] = client.client_list(client_id=[client_id])
    return [(entry.get("addr"), entry.get("cmd")) for entry in listed] == [(_tcp_address(sock.getsockname()), "blmove")]


def _close_unblocking(close: Callable[..., None]) -> Callable[..., None]:
    """kombu's ``Channel.close`` reads the reply of the outstanding move before closing (so a
    message moved meanwhile is not lost), which waits out its timeout (``brpop_timeout``, 1 s)
    on an idle queue: every worker's stop took that second. ``CLIENT UNBLOCK`` from another
    connection makes Redis answer the move now: "nothing" if it had not moved a message, the
    message if it had (delivered and restored as before). Only when ``CLIENT LIST`` shows the
    id blocked in a move from this socket's address; otherwise the close waits, as kombu's."""

    @functools.wraps(close)
    def close_unblocking(self: Any) -> None:
        connection = self._in_poll if getattr(self, "_imagegen_moving", False) else None
        sock = getattr(connection, "_sock", None)
        noted = getattr(connection, "_imagegen_client_id", None)
        inflight: InFlight | None = getattr(self, "_imagegen_inflight", None)
        if sock is not None and noted is not None and noted[0] is sock and noted[1] is not None and inflight:
            try:
                client = inflight.client()
                if _blocked_here(client, noted[1], sock):
                    client.client_unblock(noted[1])
            except (redis.RedisError, OSError) as exc:
                log.info("blocked move not cut short at close: %s", type(exc).__name__)
        close(self)

    return close_unblocking


def _move_read(brpop_read: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(brpop_read)
    def move_read(self: Any, **options: Any) -> Any:
        if not getattr(self, "_imagegen_moving", False):
            return brpop_read(self, **options)
        inflight: InFlight = self._imagegen_inflight
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except BaseException as exc:
                inflight.leftovers = True  # Redis may have moved a message whose reply is lost
                if isinstance(exc, self.connection_errors):
                    self.client.connection.disconnect()  # as kombu does: the next poll reconnects
                raise
            if not item:
                raise Empty()
            queue = inflight.queue.rsplit(self.sep, 1)[0]  # as kombu names a priority's key
            self._queue_cycle.rotate(queue)
            inflight.moved = item
            try:
                payload = loads(item.decode() if isinstance(item, bytes) else item)  # type: ignore[no-untyped-call]
                self.connection._deliver(payload, queue)
            finally:
                if inflight.moved is not None:  # not recorded as unacked: leave it to be put back
                    inflight.moved = None
                    inflight.leftovers = True
            return True
        finally:
            self._in_poll = None
            self._imagegen_moving = False
            self._flush_brpop_reauth()

    return move_read


def _consume_noting_no_ack(basic_consume: Callable[..., Any]) -> Callable[..., Any]:
    """kombu's ``basic_consume``, remembering which queues are consumed without acks."""

    @functools.wraps(basic_consume)
    def consume(self: Any, queue: str, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("no_ack", args[0] if args else False):
            self.__dict__.setdefault("_imagegen_no_ack", set()).add(queue)
        return basic_consume(self, queue, *args, **kwargs)

    return consume


def _append_moved(append: Callable[..., None]) -> Callable[..., None]:
    """kombu's unacked record, plus the ``LREM`` from the in-flight list in the same MULTI."""

    @functools.wraps(append)
    def append_moved(self: RedisQoS, message: Any, delivery_tag: Any) -> None:
        inflight: InFlight | None = getattr(self.channel, "_imagegen_inflight", None)
        raw = inflight.moved if inflight is not None else None
        if inflight is None or raw is None:
            return append(self, message, delivery_tag)
        inflight.moved = None
        delivery = message.delivery_info
        keys = [self.unacked_index_key, self.unacked_key, inflight.list]
        tail = _record_tail(delivery["exchange"], delivery["routing_key"])
        with self.channel.conn_or_acquire() as client:
            try:
                _record_moved(keys, [delivery_tag, time.time(), raw, tail], client=client)
            except redis.ResponseError as exc:
                # OOM refuses the script's first write, so nothing of it ran, but not a lone
                # LREM: the message leaves the list and runs untracked
                if is_transient(exc):
                    client.lrem(inflight.list, 1, raw)
                raise
        VirtualQoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]
        return None

    return append_moved


def _ack_in_one_script(ack: Callable[..., None]) -> Callable[..., None]:
    """kombu's ack (ZREM and HDEL in a ``MULTI``) as one script; kombu's own where keys are
    prefixed (``global_keyprefix``: its client prefixes commands' keys, not a script's)."""

    @functools.wraps(ack)
    def ack_in_one_script(self: RedisQoS, delivery_tag: Any) -> None:
        if self.channel.global_keyprefix:
            return ack(self, delivery_tag)
        with self.channel.conn_or_acquire() as client:
            _ack([self.unacked_index_key, self.unacked_key], [delivery_tag], client=client)
        VirtualQoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
        return None

    return ack_in_one_script


def _restore_visible_and_orphans(restore_visible: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(restore_visible)
    def restore(self: RedisQoS, start: int = 0, num: int = 10, interval: int = 10) -> Any:
        result = restore_visible(self, start, num, interval)
        if (self._vrestore_count - 1) % (interval or 1):
            return result  # throttled, as kombu's own sweep
        try:
            with self.channel.conn_or_acquire() as client:
                put_back_orphans(client)
        except (redis.RedisError, OSError) as exc:
            log.warning("in-flight sweep skipped: %s", type(exc).__name__)
        return result

    return restore


def install() -> None:
    """Patch kombu's Redis channel and QoS (once)."""
    if getattr(RedisChannel, "_imagegen_reliable_fetch", False):
        return
    RedisChannel.basic_consume = _consume_noting_no_ack(RedisChannel.basic_consume)  # type: ignore[method-assign]
    RedisChannel._brpop_start = _move_start(RedisChannel._brpop_start)  # type: ignore[method-assign]
    RedisChannel._brpop_read = _move_read(RedisChannel._brpop_read)  # type: ignore[method-assign]
    RedisChannel.close = _close_unblocking(RedisChannel.close)  # type: ignore[method-assign]
    RedisQoS.append = _append_moved(RedisQoS.append)  # type: ignore[method-assign]
    RedisQoS.ack = _ack_in_one_script(RedisQoS.ack)  # type: ignore[method-assign]
    RedisQoS.restore_visible = _restore_visible_and_orphans(RedisQoS.restore_visible)  # type: ignore[method-assign]
    RedisChannel._imagegen_reliable_fetch = True  # type: ignore[attr-defined]
