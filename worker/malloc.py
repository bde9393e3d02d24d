"""Keep image-sized buffers in the heap: no page faults per image (glibc only).

Every Gemini image passes through a few multi-megabyte buffers (the HTTP body, its
text, the parsed JSON string, the decoded bytes). glibc serves each from a fresh
``mmap`` (its threshold adapts only so far) or trims the heap after freeing one, so
the next image faults the same memory in again, page by page: measured 1,600 page
faults and 5 ms of system CPU per 1.65 MB PNG. With a fixed mmap threshold of 32 MiB
(glibc's maximum) and a trim threshold of 64 MiB, those buffers are reused; with two
arenas instead of glibc's eight per core, memory freed by one slot serves the next
(peak RSS at 256 slots of 1.65 MB PNGs: 637 MiB instead of 753). Python's GIL already
serializes most allocations, so two arenas cost no contention (docs/pools.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENA_MAX = 2
MMAP_THRESHOLD = 32 * 1024 * 1024  # allocations above this still get their own mapping (4K images)
TRIM_THRESHOLD = 64 * 1024 * 1024  # free memory a heap keeps before giving it back


def keep_image_buffers() -> bool:
    """Apply the settings (before the pool's threads start: a thread takes its arena when it
    first allocates); False where there is no glibc ``mallopt`` (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    applied = all(
        mallopt(option, value)
        for option, value in (
            (M_ARENA_MAX, ARENA_MAX),
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        )
    )
    if not applied:
        log.warning("mallopt refused the image buffer thresholds; each image may fault its buffers in again")
    return applied
