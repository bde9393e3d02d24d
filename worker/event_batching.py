"""Task events for Flower, published in batches over a short window.

Celery's consumer buffers the worker's task events (received, started, succeeded, ...) and
flushes the buffer on the hub's next turn: with tasks finishing all the time, that is a
PUBLISH on the hub's thread, between receiving messages, every few events (measured: 11 a
job of 4 variations, 18 events). Here the first buffered event opens a window of
``EVENT_WINDOW_S`` and its end flushes everything buffered by then in one publish; Flower
shows a task's state up to that much later. Celery still flushes at once when
``buffer_limit`` (24) events are waiting, and the consumer flushes what is left when it
shuts down (the hub has stopped turning by then: without it, the last tasks' events were lost).
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

EVENT_WINDOW_S = 0.05
# A safeguard: should a window's timer ever be lost (kombu's hub keeps its timer and runs
# pending callbacks when it is reset around a reconnect), the next event after this long
# opens another window, so events are never held for much longer.
STALE_WINDOW_S = 1.0


class BatchedTaskEvents:
    """Mixin for Celery's ``Consumer``: task events flushed once per ``EVENT_WINDOW_S``."""

    hub: Any
    _flush_events: Any
    _event_window_opened: float | None = None  # monotonic time of the open window's first event
    _clock = staticmethod(time.monotonic)

    def on_send_event_buffered(self) -> None:
        # Called from pool threads too. Timers belong to the hub's own thread, so the window is
        # opened from there (call_soon wakes the hub from another thread).
        now = self._clock()
        opened = self._event_window_opened
        if self.hub is not None and (opened is None or now - opened > STALE_WINDOW_S):
            self._event_window_opened = now
            self.hub.call_soon(self._open_event_window)

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
