"""kombu's Redis channel keeps one command client (contract/broker_clients.py), over a real Redis."""

from __future__ import annotations

import uuid

from kombu import Connection

import contract.queue  # noqa: F401  # installs the patch, as for every user of the Celery app
from contract import broker_clients


def test_a_channel_reuses_its_command_client_and_messages_still_flow(redis_url: str) -> None:
    queue = f"test-broker-clients-{uuid.uuid4().hex[:8]}"
    with Connection(redis_url) as connection:
        channel = connection.default_channel
        first = channel._create_client()
        assert channel._create_client() is first  # no new redis.Redis per command
        assert channel._create_client(asynchronous=True) is not first  # the blocking pop keeps its own

        with connection.SimpleQueue(queue) as simple:
            for number in range(3):
                simple.put({"n": number})
            got = [simple.get(timeout=5) for _ in range(3)]
            for message in got:
                message.ack()
        assert [m.payload["n"] for m in got] == [0, 1, 2]


def test_a_replaced_pool_gets_a_new_client(redis_url: str) -> None:
    with Connection(redis_url) as connection:
        channel = connection.default_channel
        first = channel._create_client()
        channel._pool = None  # what kombu does when it drops a broken connection's pool
        second = channel._create_client()
        assert second is not first
        assert second.connection_pool is channel.pool
        assert second.ping()


def test_installing_twice_wraps_once() -> None:
    from kombu.transport.redis import Channel

    wrapped = Channel._create_client
    broker_clients.install()
    assert Channel._create_client is wrapped
