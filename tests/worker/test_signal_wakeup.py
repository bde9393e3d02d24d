"""A stop signal wakes the worker's event loop at once (worker/signal_wakeup.py): the step's
socket is a reader of kombu's hub, and a signal makes it readable while the hub polls."""

from __future__ import annotations

import os
import signal
import threading
import types
from collections.abc import Iterator

import pytest
from kombu.asynchronous import Hub

from worker.signal_wakeup import SignalWakeup


@pytest.fixture
def hub() -> Iterator[Hub]:
    hub = Hub()
    yield hub
    hub.close()


def test_a_signal_makes_the_hubs_poll_return_on_the_steps_reader(hub: Hub) -> None:
    consumer = types.SimpleNamespace(hub=hub)
    step = SignalWakeup(consumer)
    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        step.register_with_event_loop(consumer, hub)
        assert step._reader is not None
        reader = step._reader.fileno()
        assert reader in hub.readers
        # Nothing ready: the poll waits out its timeout and reports nothing.
        assert not hub.poller.poll(0.05)
        timer = threading.Timer(0.2, os.kill, args=(os.getpid(), signal.SIGUSR1))
        timer.start()
        events = hub.poller.poll(30)  # returns as soon as the signal's byte arrives
        timer.join()
        assert seen == [signal.SIGUSR1]
        assert [fd for fd, _ in events or ()] == [reader]
        step._drain()
        assert not hub.poller.poll(0.05)  # drained: the next poll waits again
    finally:
        step.shutdown(consumer)
        signal.signal(signal.SIGUSR1, previous)
    assert signal.set_wakeup_fd(-1) == -1  # shutdown gave the wakeup fd back
    assert reader not in hub.readers


def test_a_loop_off_the_main_thread_is_left_alone(hub: Hub) -> None:
    consumer = types.SimpleNamespace(hub=hub)
    step = SignalWakeup(consumer)
    worker = threading.Thread(target=step.register_with_event_loop, args=(consumer, hub))
    worker.start()
    worker.join()
    assert step._reader is None
    assert hub.readers == {}
