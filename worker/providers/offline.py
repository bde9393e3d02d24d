"""The offline preview model. NOT AI.

It draws a deterministic test pattern of exactly the requested size (same
prompt, variation and seed -> same bytes) with no network and no cost, so the
demo, the tests and the benchmarks run anywhere. Latency and a failure pattern
can be injected (``IMAGEGEN_OFFLINE_LATENCY_S``, ``IMAGEGEN_OFFLINE_FAILURES``).
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from contract.catalog import parse_size
from contract.result import GenerationMetadata
from worker.errors import BlockedError, PermanentError, TransientError
from worker.providers.base import GeneratedImage, GenerationRequest

FAILURE_KINDS = ("transient", "timeout", "permanent", "blocked")


@dataclass(frozen=True)
class InjectedFailure:
    """Variation ``index`` fails ``times`` times (0 = always) with ``kind``."""

    index: int
    kind: str
    times: int = 0

    def applies(self, index: int, attempt: int) -> bool:
        return index == self.index and (self.times == 0 or attempt <= self.times)


def parse_failures(spec: str) -> tuple[InjectedFailure, ...]:
    """``"1:permanent,2:transient*2"``: variation 1 always fails permanently,
    variation 2 fails transiently on its first two attempts."""
    failures = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        index, _, rest = item.partition(":")
        kind, _, times = rest.partition("*")
        if not index.isdigit() or kind not in FAILURE_KINDS or (times and not times.isdigit()):
            raise ValueError(
                f"bad IMAGEGEN_OFFLINE_FAILURES item {item!r}; form INDEX:KIND[*TIMES], KIND in {FAILURE_KINDS}"
            )
        failures.append(InjectedFailure(int(index), kind, int(times or 0)))
    return tuple(failures)


class OfflineProvider:
    name = "offline"

    def __init__(self, latency_s: float = 0.0, failures: str = ""):
        self.latency_s = latency_s
        self.failures = parse_failures(failures)

    def generate(self, request: GenerationRequest) -> GeneratedImage:
        if self.latency_s:
            time.sleep(self.latency_s)
        self._inject_failure(request)
        data = render_pattern(request.prompt, request.index, request.seed, *parse_size(request.size))
        metadata = GenerationMetadata(
            provider=self.name,
            model_version=request.model.model_id,
            text="offline preview pattern (not AI)",
        )
        return GeneratedImage(data=data, metadata=metadata, mime_type_label="image/png")

    def _inject_failure(self, request: GenerationRequest) -> None:
        for failure in self.failures:
            if not failure.applies(request.index, request.attempt):
                continue
            what = f"injected {failure.kind} failure for variation {request.index}, attempt {request.attempt}"
            if failure.kind == "transient":
                raise TransientError(what)
            if failure.kind == "timeout":
                raise TransientError(what, timed_out=True)
            if failure.kind == "blocked":
                raise BlockedError(what, reason="IMAGE_SAFETY")
            raise PermanentError(what)


def render_pattern(prompt: str, index: int, seed: int | None, width: int, height: int) -> bytes:
    """Deterministic PNG: colour bands and a grid derived from a digest."""
    digest = hashlib.sha256(f"{prompt}\x00{index}\x00{seed}".encode()).digest()
    background = tuple(digest[0:3])
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    bands = 4 + digest[3] % 5
    for band in range(bands):
        colour = tuple(digest[(4 + 3 * band) % 29 : (4 + 3 * band) % 29 + 3])
        top = height * band // bands
        draw.rectangle((0, top, width // 3, top + height // bands), fill=colour)
    step = max(16, min(width, height) // 8)
    for x in range(0, width, step):
        draw.line((x, 0, x, height), fill=(255, 255, 255), width=1)
    for y in range(0, height, step):
        draw.line((0, y, width, y), fill=(255, 255, 255), width=1)
    font = ImageFont.load_default(size=max(10, min(width, height) // 28))
    label = f"OFFLINE PREVIEW - NOT AI\n{width}x{height}  variation {index}\n{prompt[:40]}"
    draw.multiline_text((width // 3 + 12, 12), label, fill=(255, 255, 255), font=font)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()
