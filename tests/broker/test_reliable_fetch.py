"""A consumer SIGKILLed after Redis handed it a message but before it recorded it as unacked
(worker/reliable_fetch.py): with kombu's BRPOP the message is gone from Redis; with the
move into the consumer's in-flight list it is put back once the consumer's owner key expires."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue

from devtools.redis_server import RedisServer, start_redis
from devtools.worker_process import ROOT
from producer.client import ImageGenClient
from tests.conftest import StartWorker, wait_for
from worker import reliable_fetch

QUEUE = "fetch-test"
SWEEP_S = 1  # owner TTL 2 s

# A consumer that starts one blocking fetch and then hangs, as a worker whose reply sits
# unread in its socket (or whose slots are full) when the kill comes.
DYING_CONSUMER = """
import json, sys, time
from kombu import Connection, Consumer, Exchange, Queue
from worker import reliable_fetch
reliable_fetch.install()
url, steps, name = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
connection = Connection(url, transport_options={"priority_steps": steps, "unacked_restore_interval": 1})
channel = connection.channel()
channel.brpop_timeout = 0  # block until a message comes
consumer = Consumer(channel, [Queue(name, Exchange(name, type="direct"), routing_key=name)], callbacks=[])
consumer.consume()
connection.transport.cycle._register_BRPOP(channel)  # sends the blocking fetch; never read
print("fetching", flush=True)
time.sleep(3600)
"""


@pytest.fixture
def server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


def _options(steps: list[int]) -> dict[str, Any]:
    return {"priority_steps": steps, "unacked_restore_interval": SWEEP_S}


def _queue() -> Queue:
    return Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE)


def _kill_while_fetching(url: str, steps: list[int], body: dict[str, str]) -> None:
    """Start the dying consumer, publish ``body`` to it, then SIGKILL it."""
    process = subprocess.Popen(
        [sys.executable, "-c", DYING_CONSUMER, url, json.dumps(steps), QUEUE],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == b"fetching"
        raw = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while not any(c.get("cmd") in ("brpop", "blmove") for c in raw.client_list()):
            assert time.monotonic() < deadline, "the consumer never blocked on the queue"
            time.sleep(0.02)
        with Connection(url, transport_options=_options(steps)) as connection:
            Producer(connection.channel()).publish(body, exchange=_queue().exchange, routing_key=QUEUE)
        time.sleep(0.2)  # Redis hands the message to the blocked consumer at once
    finally:
        process.kill()
        process.wait()


def _everything_holding(raw: redis.Redis, marker: str) -> list[str]:
    """Every key holding a message whose body carries ``marker``: a list (a queue, an in-flight
    list) or a hash (kombu's unacked records, ``[message, exchange, routing key]``)."""
    found = []
    for key in raw.scan_iter():
        kind = raw.type(key)
        values: list[bytes] = []
        if kind == b"list":
            values = raw.lrange(key, 0, -1)  # type: ignore[assignment]
        elif kind == b"hash":
            values = list(raw.hgetall(key).values())  # type: ignore[union-attr]
        if any(marker in _body(value) for value in values):
            found.append(key.decode())
    return found


def _body(value: bytes) -> str:
    """A kombu message's body as text (kombu stores it base64-encoded), else ""."""
    try:
        message = json.loads(value)
    except ValueError:
        return ""
    if isinstance(message, list) and message:
        message = message[0]  # an unacked record
    if not isinstance(message, dict) or "body" not in message:
        return ""
    return base64.b64decode(message["body"]).decode(errors="replace")


def _consume_one(url: str, timeout: float = 5.0) -> dict[str, str]:
    received: list[dict[str, str]] = []

    def on_message(body: dict[str, str], message: Any) -> None:
        received.append(body)
        message.ack()

    with (
        Connection(url, transport_options=_options([0])) as connection,
        Consumer(connection.channel(), [_queue()], callbacks=[on_message]),
    ):
        connection.drain_events(timeout=timeout)
    assert len(received) == 1
    return received[0]


def test_kombus_brpop_loses_a_message_its_consumer_was_killed_holding(server: RedisServer) -> None:
    """The control: several queue keys (kombu's default priorities) keep BRPOP, and the kill
    leaves the message in no list and no hash."""
    body = {"marker": uuid.uuid4().hex}
    _kill_while_fetching(server.url, [0, 3, 6, 9], body)
    assert _everything_holding(redis.Redis.from_url(server.url), body["marker"]) == []


def test_a_moved_message_is_put_back_when_its_consumer_dies(server: RedisServer) -> None:
    reliable_fetch.install()
    raw = redis.Redis.from_url(server.url)
    body = {"marker": uuid.uuid4().hex}
    _kill_while_fetching(server.url, [0], body)

    (holder,) = _everything_holding(raw, body["marker"])
    assert holder.startswith(f"{reliable_fetch.REGISTRY_KEY}:")  # the dead consumer's in-flight list
    assert reliable_fetch.put_back_orphans(raw) == 0  # its owner key still lives (2 s)

    time.sleep(2 * SWEEP_S + 0.5)
    assert reliable_fetch.put_back_orphans(raw) == 1
    assert _everything_holding(raw, body["marker"]) == [QUEUE]
    assert raw.hlen(reliable_fetch.REGISTRY_KEY) == 0  # the dead consumer's entry is gone
    assert _consume_one(server.url) == body


def test_a_live_consumer_records_what_it_moved_and_empties_its_list(server: RedisServer) -> None:
    """The normal path: the message is delivered, recorded as unacked and removed from the
    in-flight list in one step; the ack removes the record; nothing is left behind."""
    reliable_fetch.install()
    raw = redis.Redis.from_url(server.url)
    seen: list[list[str]] = []
    body = {"marker": uuid.uuid4().hex}

    def on_message(received: dict[str, str], message: Any) -> None:
        seen.append(_everything_holding(raw, body["marker"]))  # while the task would run
        message.ack()

    with (
        Connection(server.url, transport_options=_options([0])) as connection,
        Consumer(connection.channel(), [_queue()], callbacks=[on_message]),
    ):
        Producer(connection.channel()).publish(body, exchange=_queue().exchange, routing_key=QUEUE)
        connection.drain_events(timeout=5)
    assert seen == [["unacked"]]
    assert _everything_holding(raw, body["marker"]) == []
    lists = [k for k in raw.scan_iter(f"{reliable_fetch.REGISTRY_KEY}:*") if raw.type(k) == b"list"]
    assert lists == []


def test_the_unacked_record_is_kombus_own_and_restores_whole(server: RedisServer) -> None:
    """The script records the moved bytes in kombu's format, ``[message, exchange, routing key]``:
    kombu's restore (the visibility timeout's sweep) puts the message back whole, and the ack's
    script leaves neither the record nor its index entry."""
    reliable_fetch.install()
    raw = redis.Redis.from_url(server.url)
    body = {"marker": uuid.uuid4().hex}
    held: list[Any] = []

    with (
        Connection(server.url, transport_options=_options([0])) as connection,
        Consumer(connection.channel(), [_queue()], callbacks=[lambda _body, message: held.append(message)]) as consumer,
    ):
        Producer(connection.channel()).publish(body, exchange=_queue().exchange, routing_key=QUEUE)
        connection.drain_events(timeout=5)
        first = held[0]
        qos = consumer.channel.qos
        record = json.loads(raw.hget(qos.unacked_key, first.delivery_tag))  # type: ignore[arg-type]
        assert record == [first._raw, QUEUE, QUEUE]
        assert raw.zscore(qos.unacked_index_key, first.delivery_tag) is not None

        qos.restore_by_tag(first.delivery_tag)  # what the sweep does once the visibility timeout ends
        connection.drain_events(timeout=5)
        again = held[1]
        assert again.payload == body
        assert again.delivery_info["redelivered"] is True
        again.ack()
        assert raw.hget(qos.unacked_key, again.delivery_tag) is None
        assert raw.zscore(qos.unacked_index_key, again.delivery_tag) is None
    assert _everything_holding(raw, body["marker"]) == []


def _blocked_fetches(raw: redis.Redis) -> int:
    return sum(1 for c in raw.client_list() if c.get("cmd") == "blmove" and "b" in c.get("flags", ""))


def _moved_messages(raw: redis.Redis) -> int:
    return sum(
        int(raw.llen(reliable_fetch.inflight_key(channel.decode())))
        for channel in raw.hkeys(reliable_fetch.REGISTRY_KEY)
    )


def test_a_worker_killed_holding_a_job_loses_nothing(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], redis_url: str
) -> None:
    """A real worker frozen while Redis hands it a job's message, then SIGKILLed: the job runs on
    the next worker once the owner key expires (2 s here) and a sweep (1 s) puts it back. With
    kombu's BRPOP the message was gone and the job ended ``lost`` at its deadline."""
    raw = redis.Redis.from_url(redis_url)
    quick_sweep = {"IMAGEGEN_REDELIVERY_SWEEP_S": str(SWEEP_S)}
    a = start_worker(quick_sweep, concurrency=2)
    assert a.process is not None
    handle = None
    for _ in range(20):  # the worker's fetch blocks 1 s at a time: catch it blocked, then freeze it
        deadline = time.monotonic() + 5
        while _blocked_fetches(raw) < 1:
            assert time.monotonic() < deadline, "the worker never blocked on its queue"
            time.sleep(0.01)
        os.kill(a.process.pid, signal.SIGSTOP)
        handle = client.submit(offline_node)
        time.sleep(0.2)
        if _moved_messages(raw):
            break  # Redis handed the job to the frozen worker
        os.kill(a.process.pid, signal.SIGCONT)  # its fetch had timed out: let it run this job
        handle.wait(timeout=30)
        handle = None
    assert handle is not None, "could not hand a job to a frozen worker"
    a.kill()
    started = time.monotonic()
    start_worker(quick_sweep, concurrency=2)
    result = handle.wait(timeout=60)
    assert result.status == "succeeded", result
    assert _moved_messages(raw) == 0
    print(f"\njob handed to a killed worker finished {time.monotonic() - started:.1f} s after the kill")


def test_a_move_whose_reply_was_lost_is_put_back_by_the_live_worker(server: RedisServer) -> None:
    """A Redis restart or a dropped socket after Redis moved a message but before its reply
    arrived: the channel is alive (its owner key too), so no sweep would take the list; the
    channel's own thread puts the message back."""
    reliable_fetch.install()
    raw = redis.Redis.from_url(server.url)
    body = {"marker": uuid.uuid4().hex}
    with Connection(server.url, transport_options=_options([0])) as connection:
        channel = connection.channel()
        consumer = Consumer(channel, [_queue()], callbacks=[])
        consumer.consume()
        channel.brpop_timeout = 0
        connection.transport.cycle._register_BRPOP(channel)  # the blocking move is sent
        with Connection(server.url, transport_options=_options([0])) as publisher:
            Producer(publisher.channel()).publish(body, exchange=_queue().exchange, routing_key=QUEUE)
        deadline = time.monotonic() + 5
        while _everything_holding(raw, body["marker"]) != [reliable_fetch.inflight_key(channel._imagegen_inflight.id)]:
            assert time.monotonic() < deadline, "the message was not moved"
            time.sleep(0.02)
        sock = channel.client.connection._sock
        sock.recv(1 << 16)  # the reply is lost (a Redis restart, a broken link) ...
        sock.shutdown(socket.SHUT_RDWR)  # ... with its connection
        with pytest.raises(redis.ConnectionError):
            channel._brpop_read()
        deadline = time.monotonic() + 5
        while _everything_holding(raw, body["marker"]) != [QUEUE]:
            assert time.monotonic() < deadline, "the live channel did not put its leftover back"
            time.sleep(0.05)
    assert _consume_one(server.url) == body


def test_the_owner_thread_outlives_any_error() -> None:
    """kombu disconnects a lost channel's pool under the thread (redis-py then raises
    AttributeError mid-read): the thread logs and keeps every other owner key alive."""
    calls: list[float] = []

    def keep_alive() -> None:
        calls.append(time.monotonic())
        raise AttributeError("'NoneType' object has no attribute 'readline'")

    class Channel:
        closed = False
        _imagegen_moving = False

    channel = Channel()
    channel._imagegen_inflight = types.SimpleNamespace(  # type: ignore[attr-defined]
        refresh_s=0.05, leftovers=False, lock=threading.Lock(), keep_alive=keep_alive
    )
    refresher = reliable_fetch._Refresher()
    refresher.add(channel)
    deadline = time.monotonic() + 5
    while len(calls) < 3:
        assert time.monotonic() < deadline, "the thread stopped looking after the channel"
        time.sleep(0.02)
    assert refresher.thread is not None and refresher.thread.is_alive()
    channel.closed = True  # type: ignore[misc]  # a closed channel is let go
    while channel in refresher.channels:
        assert time.monotonic() < deadline + 5, "a closed channel was kept"
        time.sleep(0.02)


def test_workers_started_as_deployed_find_each_other_and_run_jobs(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    """The deployed command keeps mingle and gossip on. At start a worker asks the others for
    their state and reads their answers from a reply queue that it consumes without acks: such a
    queue must keep kombu's own fetch. Moved into an in-flight list and never acked, the reply was
    put back and delivered again, thousands of times a second, and the second worker never
    became ready."""
    first = start_worker(concurrency=2, mingle=True)
    second = start_worker(concurrency=2, mingle=True)  # raises unless it logs "ready" within 60 s
    assert "mingle: sync with 1 nodes" in second.log()
    assert "whose delivery was cut off back" not in first.log() + second.log()
    results = [client.submit(offline_node).wait(timeout=60) for _ in range(4)]
    assert [r.status for r in results] == ["succeeded"] * 4


def _calls(raw: redis.Redis, command: str) -> int:
    """How often Redis ran ``command`` (``client|unblock`` for a subcommand)."""
    stats: dict[str, Any] = raw.info("commandstats")  # type: ignore[assignment]
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def _blocked_channel(url: str, received: list[dict[str, str]], timeout_s: int = 60) -> tuple[Connection, Any]:
    """A consuming channel whose move is sent and blocked (a worker's idle loop)."""
    connection = Connection(url, transport_options=_options([0]))
    channel = connection.channel()
    channel.brpop_timeout = timeout_s
    consumer = Consumer(channel, [_queue()], callbacks=[lambda body, message: received.append(body)])
    consumer.consume()
    connection.transport.cycle._register_BRPOP(channel)
    return connection, channel


def _close_in_background(channel: Any) -> threading.Thread:
    closing = threading.Thread(target=channel.close, daemon=True)
    closing.start()
    closing.join(timeout=20)  # far below the move's 60 s: it was cut short, not waited out
    return closing


def test_closing_a_channel_cuts_its_blocked_move_short(server: RedisServer) -> None:
    """A worker's stop closes its channel; kombu reads the outstanding move's reply first,
    which on an idle queue meant waiting out its timeout (every stop took a second)."""
    reliable_fetch.install()
    raw = redis.Redis.from_url(server.url)
    received: list[dict[str, str]] = []
    connection, channel = _blocked_channel(server.url, received)
    try:
        assert wait_for(lambda: _blocked_fetches(raw) == 1)
        assert not _close_in_background(channel).is_alive()
        assert _calls(raw, "client|unblock") == 1
        assert received == []
        assert _blocked_fetches(raw) == 0
    finally:
        connection.release()


def test_a_message_moved_as_its_channel_closes_is_kept(server: RedisServer) -> None:
    """Redis moved a message to the blocked channel just before the close: the unblock finds
    nothing blocked, the close reads the message, and it goes back on its queue, not lost."""
    reliable_fetch.install()
    raw = redis.Redis.from_url(server.url)
    received: list[dict[str, str]] = []
    body = {"marker": uuid.uuid4().hex}
    connection, channel = _blocked_channel(server.url, received)
    try:
        assert wait_for(lambda: _blocked_fetches(raw) == 1)
        with Connection(server.url, transport_options=_options([0])) as publisher:
            Producer(publisher.channel()).publish(body, exchange=_queue().exchange, routing_key=QUEUE)
        assert wait_for(lambda: _moved_messages(raw) == 1)  # in the channel's in-flight list
        assert not _close_in_background(channel).is_alive()
        assert received == [body]  # delivered while closing, never acked
        assert _everything_holding(raw, body["marker"]) == [QUEUE]
        assert _consume_one(server.url) == body
    finally:
        connection.release()


def test_an_id_blocked_from_another_socket_is_never_unblocked(server: RedisServer) -> None:
    """A restarted Redis (or a Sentinel's new master) gives the channel's noted id to another
    client: the close checks that the id is blocked in a move from this socket's own address,
    and otherwise waits out its move as kombu does, leaving that client blocked."""
    reliable_fetch.install()
    raw = redis.Redis.from_url(server.url)
    received: list[dict[str, str]] = []
    connection, channel = _blocked_channel(server.url, received, timeout_s=2)
    bystander = redis.Redis.from_url(server.url)
    bystander_id = int(bystander.client_id())

    def wait_in_a_move() -> None:
        with contextlib.suppress(redis.ConnectionError):  # killed at the end of the test
            bystander.blmove("other-list", "elsewhere", 30)

    waiting = threading.Thread(target=wait_in_a_move, daemon=True)
    try:
        assert wait_for(lambda: _blocked_fetches(raw) == 1)
        waiting.start()
        assert wait_for(lambda: _blocked_fetches(raw) == 2)  # the bystander blocks in a move too
        blocked = channel._in_poll
        blocked._imagegen_client_id = (blocked._sock, bystander_id)  # as after a restart
        assert not _close_in_background(channel).is_alive()
        assert _calls(raw, "client|unblock") == 0
        assert waiting.is_alive() and _blocked_fetches(raw) == 1  # the bystander still waits
    finally:
        connection.release()
        raw.client_kill_filter(_id=bystander_id)


def test_a_client_id_the_acl_refuses_is_asked_once_per_socket(server: RedisServer) -> None:
    """An ACL without CLIENT refuses CLIENT ID: the close then waits as kombu's, and the id is
    not asked again before every move (a round trip per poll and an ACL log entry each)."""
    reliable_fetch.install()
    raw = redis.Redis.from_url(server.url)
    raw.acl_setuser(
        "consumer", enabled=True, passwords=["+pw"], commands=["+@all", "-client"], keys=["*"], channels=["*"]
    )
    url = server.url.replace("redis://", "redis://consumer:pw@")
    received: list[dict[str, str]] = []
    with Connection(url, transport_options=_options([0])) as connection:
        channel = connection.channel()
        channel.brpop_timeout = 1
        with (
            Consumer(channel, [_queue()], callbacks=[lambda body, message: received.append(body)]),
            contextlib.suppress(socket.timeout),
        ):
            connection.drain_events(timeout=3.5)  # several moves, each timing out empty
    assert _calls(raw, "blmove") >= 3
    refused = [entry for entry in raw.acl_log() if entry.get("object") == "client|id"]
    assert len(refused) == 1 and int(refused[0]["count"]) == 1
