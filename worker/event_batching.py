"""Task events for Flower, published in batches over a short window.

Celery's consumer buffers the worker's task events (received, started, succeeded, ...) and
flushes the buffer on the hub's next turn: with tasks finishing all the time, that is a
PUBLISH on the hub's thread, between receiving messages, every few events (measured: 11 a
job of 4 variations, 18 events). Here the first buffered event opens a window of
``EVENT_WINDOW_S`` and its end flushes everything buffered by then in one publish; Flower
shows a task's state up to that much later. ``FLUSH_AT`` (24) waiting events are flushed at
once, and the consumer flushes what is left when it shuts down (the hub has stopped turning by
then: without it, the last tasks' events were lost).

Every flush runs on the hub's thread. Celery's dispatcher flushes in whichever thread buffers
its ``buffer_limit``-th event: with the threads pool, that is a pool thread (task-succeeded,
task-retried), which then publishes, and on RabbitMQ waits for the publisher confirm on the
events connection, holding the dispatcher's lock, while the hub waits for that lock. Seen in
the chaos suite's "SIGKILL a worker (RabbitMQ broker)" (the retries of the dead worker's
variations fill the buffer): that confirm never came, and both surviving workers stopped taking
messages until RabbitMQ dropped the connection a minute later, too late for 1 to 12 of their
jobs (ended lost). So the dispatcher's own limit is set out of reach, and the hub is asked to
flush instead.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)

EVENT_WINDOW_S = 0.05
FLUSH_AT = 24  # Celery's buffer_limit: this many waiting events go out without waiting for the window
# A safeguard: should a window's timer ever be lost (kombu's hub keeps its timer and runs
# pending callbacks when it is reset around a reconnect), the next event after this long
# opens another window, so events are never held for much longer.
STALE_WINDOW_S = 1.0


class BatchedTaskEvents:
    """Mixin for Celery's ``Consumer``: task events flushed once per ``EVENT_WINDOW_S``."""

    hub: Any
    _flush_events: Any
    _event_window_opened: float | None = None  # monotonic time of the open window's first event
    _flush_asked = False  # a flush of a full buffer is waiting for the hub's next turn
    _dispatcher: Any = None
    _clock = staticmethod(time.monotonic)

    @property
    def event_dispatcher(self) -> Any:
        return self._dispatcher

    @event_dispatcher.setter
    def event_dispatcher(self, dispatcher: Any) -> None:
        # Celery's Events bootstep sets it (and None when it stops): its own flush-when-full
        # would run on the sending thread, so its limit is put out of reach (FLUSH_AT instead).
        if dispatcher is not None:
            dispatcher.buffer_limit = sys.maxsize
        self._dispatcher = dispatcher
        self._flush_asked = False  # a request lost with a reset hub (a reconnect) must not block the next

    def on_send_event_buffered(self) -> None:
        # Called from pool threads too. Timers belong to the hub's own thread, so the window is
        # opened from there (call_soon wakes the hub from another thread), and so is a flush.
        if self.hub is None:
            return
        now = self._clock()
        opened = self._event_window_opened
        if opened is None or now - opened > STALE_WINDOW_S:
            self._event_window_opened = now
            self.hub.call_soon(self._open_event_window)
        if not self._flush_asked and self._buffered_events() >= FLUSH_AT:
            self._flush_asked = True
            self.hub.call_soon(self._flush_full_buffer)

    def _buffered_events(self) -> int:
        dispatcher = self._dispatcher
        return 0 if dispatcher is None else sum(len(events) for events in dispatcher._group_buffer.values())

    def _flush_full_buffer(self) -> None:
        self._flush_asked = False
        self._flush_events()

    def _open_event_window(self) -> None:
        self.hub.call_later(EVENT_WINDOW_S, self._close_event_window)

    def _close_event_window(self) -> None:
        self._event_window_opened = None
        self._flush_events()

    def shutdown(self) -> None:
        try:
            self._flush_events()  # the last window's events: Flower's last word on those tasks
        except Exception as exc:  # the broker may be gone already; Celery keeps them buffered
            log.info("task events not flushed at shutdown: %s", type(exc).__name__)
        super().shutdown()  # type: ignore[misc]
