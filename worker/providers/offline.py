"""The offline preview model. NOT AI.

It draws a deterministic test pattern of exactly the requested size (same
prompt, variation and seed -> same bytes) with no network and no cost, so the
demo, the tests and the benchmarks run anywhere. Its text counterpart (the
prompt step's ``offline_prompt_writer``) rewrites a prompt by appending a fixed,
labelled note: deterministic, not AI. Latency and a failure pattern
can be injected (``IMAGEGEN_OFFLINE_LATENCY_S``, ``IMAGEGEN_OFFLINE_FAILURES``).
"""

from __future__ import annotations

import functools
import hashlib
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from contract.catalog import parse_size
from contract.result import GenerationMetadata
from worker.errors import BlockedError, PermanentError, TransientError
from worker.providers.base import GeneratedImage, GeneratedText, GenerationRequest, TextRequest

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

    def write_prompts(self, request: TextRequest) -> GeneratedText:
        """The prompt with a fixed note: one for ``enhance``, ``count`` numbered ones for ``diversify``."""
        if request.count is None:
            return GeneratedText([f"{request.prompt} (offline rewrite, not AI)"], model_version=request.model.model_id)
        prompts = [
            f"{request.prompt} (offline variation {n} of {request.count}, not AI)" for n in range(1, request.count + 1)
        ]
        return GeneratedText(prompts, model_version=request.model.model_id)

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
    """Deterministic PNG of exactly ``width`` x ``height``: the size's cached test pattern
    (bands, a grid, "OFFLINE PREVIEW - NOT AI") with a band of per-variation lines at the bottom.

    A palette image (one byte a pixel; its nine colours are a test pattern's, the swatch's
    taken from the digest). Only the label band is made and compressed per image, from cached
    glyph rows joined as bytes: the rows above it are compressed once per size (ending on a full
    flush) and the band's final block is spliced after them. No Pillow call is made per image,
    and one zlib call: in a worker of many threads each call that lets go of the GIL hands it to
    another thread (two context switches and more), which cost more than the drawing itself
    (docs/pools.md)."""
    base = _base_pattern(width, height)
    digest = hashlib.sha256(f"{prompt}\x00{index}\x00{seed}".encode()).digest()
    lines = (
        _cached_line_rows(base.font, f"{width}x{height}  variation {index}  seed {seed}"),
        _cached_line_rows(base.font, prompt[:40]),
        _line_rows(base.font, digest.hex()[:16]),
    )
    band = list(base.band_rows)
    text_width = width + 1 - base.text_left
    for number, rows in enumerate(lines):
        top = base.margin + number * base.line_height
        for offset, text in enumerate(rows[: max(0, base.band_height - top)]):
            row = band[top + offset]
            band[top + offset] = row[: base.text_left] + text[:text_width].ljust(text_width, b"\0")
    raw = b"".join(band)
    middle = zlib.compress(raw, _BAND_LEVEL, wbits=-15)  # the stream's final block
    adler = _adler32_combine(base.head_adler, _small_calls(zlib.adler32, raw, 1), len(raw))
    trailer = adler.to_bytes(4, "big")
    crc = zlib.crc32(trailer, _small_calls(zlib.crc32, middle, base.head_crc))
    length = len(base.head) + len(middle) + 4
    idat = (length.to_bytes(4, "big"), b"IDAT", base.head, middle, trailer, crc.to_bytes(4, "big"))
    palette = _chunk(b"PLTE", _PALETTE + digest[:3])
    return b"".join((base.preamble, palette, *idat, _IEND))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BAND_LEVEL = 1  # the band is mostly flat colour: level 1 is as small here and several times faster
# CPython's zlib lets go of the GIL for a checksum over more than 5 KiB: smaller calls keep it.
_GIL_KEPT_BYTES = 4096
# The pattern's colours, by palette index; the swatch's (index 8) comes from each image's digest.
_COLOURS = (
    (28, 34, 48),  # background
    (200, 60, 60),
    (230, 160, 40),
    (70, 170, 90),
    (60, 120, 200),
    (150, 80, 190),
    (90, 90, 90),  # the six bands
    (255, 255, 255),  # grid and text
)
_BANDS = range(1, 7)
_WHITE, _SWATCH = 7, 8
_PALETTE = bytes(channel for colour in _COLOURS for channel in colour)
_ADLER_MOD = 65521


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


_IEND = _chunk(b"IEND", b"")


def _small_calls(checksum: Callable[[memoryview, int], int], data: bytes, start: int) -> int:
    """``checksum(data, start)`` computed a few KiB at a time, each call holding the GIL."""
    view = memoryview(data)
    value = start
    for offset in range(0, len(view), _GIL_KEPT_BYTES):
        value = checksum(view[offset : offset + _GIL_KEPT_BYTES], value)
    return value


@dataclass(frozen=True)
class _Base:
    """One size's pattern, ready to splice: the compressed rows above the label band, and the band's."""

    preamble: bytes  # PNG signature and IHDR (the palette follows, per image)
    head: bytes  # zlib header + raw deflate of the rows above the band, ending on a full flush
    head_adler: int  # adler32 of those rows (filter bytes included)
    head_crc: int  # CRC-32 of b"IDAT" + head
    band_rows: tuple[bytes, ...]  # the band's scanlines (a filter byte, palette indices): swatch, no text
    band_height: int
    text_left: int  # where the text starts in a scanline (the filter byte counted); plain background after
    margin: int
    line_height: int
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont


@functools.lru_cache(maxsize=8)
def _base_pattern(width: int, height: int) -> _Base:
    image = Image.new("P", (width, height), 0)  # palette indices: _COLOURS
    draw = ImageDraw.Draw(image)  # in a palette image, text is drawn without anti-aliasing
    for band, colour in enumerate(_BANDS):
        top = height * band // len(_BANDS)
        draw.rectangle((0, top, width // 3, height * (band + 1) // len(_BANDS)), fill=colour)
    step = max(16, min(width, height) // 8)
    for x in range(0, width, step):
        draw.line((x, 0, x, height), fill=_WHITE, width=1)
    for y in range(0, height, step):
        draw.line((0, y, width, y), fill=_WHITE, width=1)
    title = ImageFont.load_default(size=max(10, min(width, height) // 28))
    margin = max(4, min(width, height) // 64)
    label_left = width // 3 + 12
    draw.text((label_left, margin), "OFFLINE PREVIEW - NOT AI", fill=_WHITE, font=title)
    below_title = min(height - 1, 2 * margin + _line_height(title))
    # The per-image lines use half the title's size: the band is joined and compressed for every
    # image, so its height is most of an image's cost.
    font = ImageFont.load_default(size=max(10, min(width, height) // 56))
    line = _line_height(font)
    band_height = max(1, min(height - below_title, 3 * line + 2 * margin))
    band_top = height - band_height
    # The band right of the colour bands is plain background (the grid stops there), with the
    # swatch, whose colour each image's palette sets: the text is joined onto it as bytes.
    swatch = max(1, band_height - 2 * margin)
    draw.rectangle((min(label_left, width), band_top, width, height), fill=0)  # a narrow image has no text room
    draw.rectangle((label_left, band_top + margin, label_left + swatch, band_top + margin + swatch), fill=_SWATCH)
    scanlines = Image.new("P", (width + 1, height), 0)  # a zero filter byte before each row
    scanlines.paste(image, (1, 0))
    raw, stride = scanlines.tobytes(), width + 1
    head_rows = raw[: band_top * stride]
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    head = b"\x78\x9c" + deflate.compress(head_rows) + deflate.flush(zlib.Z_FULL_FLUSH)
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes((8, 3, 0, 0, 0))  # 8-bit palette
    return _Base(
        preamble=_PNG_SIGNATURE + _chunk(b"IHDR", ihdr),
        head=head,
        head_adler=zlib.adler32(head_rows),
        head_crc=zlib.crc32(head, zlib.crc32(b"IDAT")),
        band_rows=tuple(raw[row * stride : (row + 1) * stride] for row in range(band_top, height)),
        band_height=band_height,
        text_left=min(stride, label_left + swatch + margin + 1),  # + 1: the filter byte
        margin=margin,
        line_height=line,
        font=font,
    )


Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _line_height(font: Font) -> int:
    return int(font.size * 1.25) if isinstance(font, ImageFont.FreeTypeFont) else 12


def _line_rows(font: Font, text: str) -> tuple[bytes, ...]:
    """One line of white text as palette rows (``line_height`` of them, on the background), joined
    from cached glyphs (rasterizing the whole line with FreeType was most of an image's cost); no
    kerning, and each glyph cut at its advance, which a test pattern does without."""
    glyphs = [_glyph_rows(font, char) for char in text]
    return tuple(b"".join(rows) for rows in zip(*glyphs, strict=True)) if glyphs else ()


_cached_line_rows = functools.lru_cache(maxsize=512)(_line_rows)


@functools.lru_cache(maxsize=2048)
def _glyph_rows(font: Font, char: str) -> tuple[bytes, ...]:
    """One character as ``line_height`` palette rows of its advance's width: white on background."""
    advance = max(1, round(font.getlength(char)))
    mask = Image.new("L", (advance, _line_height(font)), 0)
    ImageDraw.Draw(mask).text((0, 0), char, fill=255, font=font)
    pixels = mask.point(lambda value: _WHITE if value >= 128 else 0).tobytes()
    return tuple(pixels[row * advance : (row + 1) * advance] for row in range(mask.height))


def _adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """adler32(a + b) from adler32(a), adler32(b) and len(b) (zlib's adler32_combine)."""
    rem = len2 % _ADLER_MOD
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % _ADLER_MOD
    sum1 = (sum1 + (adler2 & 0xFFFF) + _ADLER_MOD - 1) % _ADLER_MOD
    sum2 = (sum2 + (adler1 >> 16) + (adler2 >> 16) + _ADLER_MOD - rem) % _ADLER_MOD
    return sum1 | (sum2 << 16)
