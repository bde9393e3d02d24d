"""A stop signal wakes the worker's event loop at once.

Celery's SIGTERM handler only sets a flag that its event loop reads between two polls,
and kombu's hub polls for up to a second when nothing happens: an idle worker went on
waiting (and could still take a message) for up to a second after Kubernetes asked it to
stop. Python's ``signal.set_wakeup_fd`` writes a byte to a socket whenever a signal
arrives; this consumer step registers that socket's other end with the hub, so the poll
returns as soon as the signal is handled and the flag is read on the spot.

Registered again each time the consumer (re)starts its loop (a lost broker resets the
hub's readers). Pools without kombu's hub (gevent) keep Celery's own behaviour.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from typing import Any

from celery import bootsteps

log = logging.getLogger(__name__)


class SignalWakeup(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery ships no type hints
    """Consumer step: a signal's wakeup byte is a readable event of the hub."""

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None

    def register_with_event_loop(self, consumer: Any, hub: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # set_wakeup_fd works from the main thread only (a loop elsewhere is not ours)
        if self._reader is None:
            self._reader, self._writer = socket.socketpair()
            self._reader.setblocking(False)
            self._writer.setblocking(False)
            # A burst of signals may fill the socket: nothing is lost but the extra bytes.
            signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        hub.add_reader(self._reader.fileno(), self._drain)

    def _drain(self, *_: Any) -> None:
        try:
            while self._reader is not None and self._reader.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def shutdown(self, consumer: Any) -> None:
        if self._reader is None or self._writer is None:
            return
        if threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(-1)
        hub = getattr(consumer, "hub", None)
        if hub is not None:
            hub.remove_reader(self._reader.fileno())
        self._reader.close()
        self._writer.close()
        self._reader = self._writer = None
