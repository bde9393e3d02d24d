"""How much of the providers' answers one worker process reads, decodes and stores at once.

An image answer is read and decoded whole: the SDK reads the body, decodes it as text, parses
the JSON and decodes the base64 image. A 4096x4096 PNG arrives as about 35 MB of JSON and the
process's memory peaks 134 MiB higher while one is decoded; eight arriving together took it
511 MiB higher (measured, docs/pools.md). With 256 generations in flight, a few wide 4K jobs
finishing together would take a 1 GiB pod past its limit, and an OOM kill loses every generation
in flight, each of them paid for.

The gate admits an answer when its first bytes arrive (the generation is over: what waits is the
read, not the model), by its estimated size, while the answers admitted and not yet stored stay
within the limit (``IMAGEGEN_ANSWER_MEMORY_MB``). Admission is first come, first served, so a
large answer is not passed over for ever by small ones; one larger than the whole limit is
admitted alone. It holds the answer's place until the image is stored (``answer_scope``, opened
by the variation task): the decoded image, and a cloud SDK's copies of it, live that long.
``worker/providers/http_budget.py`` reports the first bytes of an answer (``answer_arriving``)
and each request sent (``request_sent``: a retry inside the SDK, or a proxy's CONNECT before the
request, is done with what it read).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

# A photo-like PNG is about 1.6 bytes a pixel (1.65 MB at 1024x1024, 26.5 MB at 4096x4096), and
# base64 makes 4 bytes of 3: the answer's JSON is about 2.1 bytes a pixel.
ANSWER_BYTES_PER_PIXEL = 2.1


def estimated_answer_bytes(width: int, height: int) -> int:
    """The size of an image answer of ``width`` x ``height`` pixels, as the gate counts it."""
    return int(width * height * ANSWER_BYTES_PER_PIXEL)


@dataclass(frozen=True)
class GateStats:
    held_bytes: int  # admitted and not yet released
    peak_bytes: int  # the most ever held at once
    waits: int  # admissions that had to wait their turn


class AnswerGate:
    """A first-come, first-served weighted semaphore over bytes (threads or greenlets)."""

    def __init__(self, limit_bytes: int):
        if limit_bytes < 1:
            raise ValueError(f"the answer memory limit must be at least 1 byte, not {limit_bytes}")
        self.limit_bytes = limit_bytes
        self._held = 0
        self._peak = 0
        self._waits = 0
        self._line: deque[object] = deque()  # tickets of the admissions waiting, in arrival order
        self._changed = threading.Condition()

    def acquire(self, size: int) -> float:
        """Hold ``size`` bytes; the seconds waited for them."""
        size = max(0, size)
        with self._changed:
            if not self._line and self._fits(size):
                self._take(size)
                return 0.0
            ticket = object()
            self._line.append(ticket)
            self._waits += 1
            started = time.monotonic()
            try:
                while self._line[0] is not ticket or not self._fits(size):
                    self._changed.wait()
            finally:
                self._line.remove(ticket)
                self._changed.notify_all()  # the next in line may fit now, or the line moved
            self._take(size)
            return time.monotonic() - started

    def release(self, size: int) -> None:
        with self._changed:
            self._held -= max(0, size)
            self._changed.notify_all()

    def stats(self) -> GateStats:
        with self._changed:
            return GateStats(self._held, self._peak, self._waits)

    def _fits(self, size: int) -> bool:
        return self._held == 0 or self._held + size <= self.limit_bytes  # too large: alone

    def _take(self, size: int) -> None:
        self._held += size
        self._peak = max(self._peak, self._held)


@dataclass
class _Admission:
    gate: AnswerGate
    size: int
    held: bool = False


_admission: ContextVar[_Admission | None] = ContextVar("imagegen_answer_admission", default=None)


@contextmanager
def answer_scope(gate: AnswerGate | None, size: int) -> Iterator[None]:
    """An answer read inside counts ``size`` bytes against ``gate`` from its first bytes until
    the scope ends. Without a gate nothing is counted."""
    if gate is None:
        yield
        return
    admission = _Admission(gate, size)
    token = _admission.set(admission)
    try:
        yield
    finally:
        _admission.reset(token)
        if admission.held:
            gate.release(size)


def answer_arriving() -> float:
    """An answer's first bytes are here: wait for its turn, once per scope; the seconds waited."""
    admission = _admission.get()
    if admission is None or admission.held:
        return 0.0
    waited = admission.gate.acquire(admission.size)
    admission.held = True
    return waited


def request_sent() -> None:
    """A request goes out: whatever the scope read before it is done with."""
    admission = _admission.get()
    if admission is not None and admission.held:
        admission.held = False
        admission.gate.release(admission.size)


_gate: AnswerGate | None = None
_gate_lock = threading.Lock()


def process_gate(limit_mb: int) -> AnswerGate | None:
    """The process's gate (created on first use with ``limit_mb``), or None when it is off (0)."""
    global _gate
    if limit_mb <= 0:
        return None
    with _gate_lock:
        if _gate is None:
            _gate = AnswerGate(limit_mb * 2**20)
        return _gate
