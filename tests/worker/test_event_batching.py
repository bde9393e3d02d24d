"""Task events reach Flower in batches, one publish per window, and none is lost at shutdown."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from typing import Any

import redis

from producer.client import ImageGenClient
from tests.conftest import StartWorker
from worker.event_batching import EVENT_WINDOW_S, FLUSH_AT, STALE_WINDOW_S, BatchedTaskEvents


class FakeHub:
    def __init__(self) -> None:
        self.soon: list[Any] = []
        self.later: list[tuple[float, Any]] = []

    def call_soon(self, callback: Any) -> None:
        self.soon.append(callback)

    def call_later(self, delay: float, callback: Any) -> None:
        self.later.append((delay, callback))

    def turn(self) -> None:
        soon, self.soon = self.soon, []
        for callback in soon:
            callback()

    def fire_timers(self) -> None:
        later, self.later = self.later, []
        for _, callback in later:
            callback()


class Base:
    shut_down = 0

    def shutdown(self) -> None:
        self.shut_down += 1


class Consumer(BatchedTaskEvents, Base):
    def __init__(self) -> None:
        self.hub = FakeHub()
        self.flushes = 0

    def _flush_events(self) -> None:
        self.flushes += 1


def test_events_buffered_within_a_window_are_flushed_once_at_its_end() -> None:
    consumer = Consumer()
    for _ in range(10):
        consumer.on_send_event_buffered()
    assert len(consumer.hub.soon) == 1  # one window, opened on the hub's thread
    consumer.hub.turn()
    assert [delay for delay, _ in consumer.hub.later] == [EVENT_WINDOW_S] and consumer.flushes == 0
    consumer.on_send_event_buffered()  # still inside the window
    assert consumer.hub.soon == []
    consumer.hub.fire_timers()
    assert consumer.flushes == 1
    consumer.on_send_event_buffered()  # the next event opens the next window
    assert len(consumer.hub.soon) == 1


def test_a_window_whose_timer_was_lost_is_replaced() -> None:
    consumer = Consumer()
    consumer.on_send_event_buffered()
    consumer.hub = FakeHub()  # a reset hub dropped the window's callback
    consumer.on_send_event_buffered()
    assert consumer.hub.soon == []  # not stale yet
    later = time.monotonic() + STALE_WINDOW_S + 0.1
    consumer._clock = lambda: later  # type: ignore[method-assign]
    consumer.on_send_event_buffered()
    consumer.hub.turn()
    consumer.hub.fire_timers()
    assert consumer.flushes == 1


def test_shutdown_flushes_then_shuts_down_even_when_the_flush_fails() -> None:
    consumer = Consumer()
    consumer.shutdown()
    assert (consumer.flushes, consumer.shut_down) == (1, 1)

    def broken() -> None:
        raise ConnectionError("broker gone")

    consumer._flush_events = broken  # type: ignore[method-assign]
    consumer.shutdown()
    assert consumer.shut_down == 2


class Dispatcher:
    """What the mixin touches of Celery's EventDispatcher: its limit and its buffers."""

    def __init__(self) -> None:
        self.buffer_limit = 24
        self._group_buffer: dict[str, list[dict[str, Any]]] = {"task": []}


def _flush_requests(hub: FakeHub) -> int:
    """How many full-buffer flushes wait for the hub's next turn."""
    return [getattr(callback, "__name__", "") for callback in hub.soon].count("_flush_full_buffer")


def test_a_full_buffer_is_flushed_on_the_hubs_thread_not_the_senders() -> None:
    consumer = Consumer()
    dispatcher = Dispatcher()
    consumer.event_dispatcher = dispatcher  # as Celery's Events bootstep sets it
    assert consumer.event_dispatcher is dispatcher
    assert dispatcher.buffer_limit > 10**9  # Celery's own flush on the sending thread: never

    for n in range(FLUSH_AT + 5):
        dispatcher._group_buffer["task"].append({"n": n})
        consumer.on_send_event_buffered()
    assert consumer.flushes == 0  # nothing published on the sending (pool) thread
    assert _flush_requests(consumer.hub) == 1  # one request while it waits for the hub
    consumer.hub.turn()
    assert consumer.flushes == 1

    consumer.on_send_event_buffered()  # still full: asked again
    consumer.hub = FakeHub()  # a reconnect resets the hub, and the request with it
    consumer.event_dispatcher = None  # the Events bootstep stopping ...
    assert consumer.event_dispatcher is None
    consumer.event_dispatcher = dispatcher  # ... and starting again on the new connection
    consumer.on_send_event_buffered()
    assert _flush_requests(consumer.hub) == 1


def test_a_real_workers_task_events_arrive_batched_and_whole_after_it_stops(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], job_env: dict[str, str]
) -> None:
    """Four jobs of 4 (24 tasks, 72 task events) and the worker stopped right after the last:
    every event arrives, in fewer publishes than tasks (Celery's per-turn flush took ~12 a job)."""
    offline_node["inputs"]["variations"] = 4
    events = redis.Redis.from_url(job_env["REDIS_URL"]).pubsub()
    events.psubscribe("*celeryev*")  # kombu's fanout channel, shared by every worker on this Redis
    assert events.get_message(timeout=5)["type"] == "psubscribe"  # type: ignore[index]
    worker = start_worker()
    for _ in range(4):
        client.submit(offline_node).wait(timeout=60)
    worker.stop()

    node = worker.name.split("@")[0]  # the name is "<node>@%h"
    publishes, kinds = 0, Counter[str]()
    while (message := events.get_message(timeout=1)) is not None:
        envelope = json.loads(message["data"])
        body = json.loads(base64.b64decode(envelope["body"]))
        batch = [e for e in (body if isinstance(body, list) else [body]) if e.get("hostname", "").split("@")[0] == node]
        if batch and batch[0]["type"].startswith("task-"):
            publishes += 1
            kinds.update(e["type"] for e in batch)
    events.close()
    assert kinds == {"task-received": 24, "task-started": 24, "task-succeeded": 24}
    assert publishes < 24, publishes
