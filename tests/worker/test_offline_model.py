"""The offline preview model: deterministic, exact size, injectable failures."""

from __future__ import annotations

import io
import zlib

import pytest
from PIL import Image

from contract.catalog import load_catalog
from worker.errors import BlockedError, PermanentError, TransientError
from worker.providers.base import GenerationRequest
from worker.providers.offline import OfflineProvider, parse_failures, render_pattern

ENTRY = load_catalog().models["offline_preview"]


def request(index: int = 0, attempt: int = 1, size: str = "1024x1024", seed: int | None = None) -> GenerationRequest:
    return GenerationRequest("a red car", "offline_preview", ENTRY, size, index, seed, attempt)


@pytest.mark.parametrize("size", ["1024x1024", "1376x768", "512x512", "848x1264"])
def test_image_has_exactly_the_requested_size(size: str) -> None:
    image = OfflineProvider().generate(request(size=size))
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert f"{decoded.width}x{decoded.height}" == size and decoded.format == "PNG"


def test_same_inputs_same_bytes_and_different_inputs_differ() -> None:
    assert render_pattern("p", 0, 7, 256, 256) == render_pattern("p", 0, 7, 256, 256)
    assert render_pattern("p", 0, 7, 256, 256) != render_pattern("p", 1, 7, 256, 256)
    assert render_pattern("p", 0, 7, 256, 256) != render_pattern("p", 0, 8, 256, 256)
    assert render_pattern("p", 0, 7, 256, 256) != render_pattern("q", 0, 7, 256, 256)


def test_metadata_says_it_is_not_ai() -> None:
    image = OfflineProvider().generate(request())
    assert image.metadata.provider == "offline" and "not AI" in (image.metadata.text or "")


def test_injected_failures_follow_the_pattern() -> None:
    provider = OfflineProvider(failures="1:permanent,2:transient*2,3:blocked,4:timeout")
    provider.generate(request(index=0))
    with pytest.raises(PermanentError):
        provider.generate(request(index=1, attempt=5))
    with pytest.raises(TransientError):
        provider.generate(request(index=2, attempt=2))
    provider.generate(request(index=2, attempt=3))  # third attempt succeeds
    with pytest.raises(BlockedError) as blocked:
        provider.generate(request(index=3))
    assert blocked.value.reason == "IMAGE_SAFETY"
    with pytest.raises(TransientError) as timed_out:
        provider.generate(request(index=4))
    assert timed_out.value.timed_out


@pytest.mark.parametrize("spec", ["x:permanent", "1:exploded", "1:transient*two", "1"])
def test_bad_failure_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="IMAGEGEN_OFFLINE_FAILURES"):
        parse_failures(spec)


def test_pattern_is_a_well_formed_png_whatever_the_size() -> None:
    # The label band is compressed per image and spliced into rows compressed once per size:
    # every chunk CRC and the zlib stream's own checksum must still hold.
    # A catalog may name any size: narrow ones leave no room right of the colour bands.
    for width, height in ((1024, 1024), (688, 384), (512, 512), (6336, 2688), (16, 1024), (1, 28), (5, 4000)):
        data = render_pattern("a red car", 3, 7, width, height)
        chunks, offset = {}, 8
        while offset < len(data):
            length = int.from_bytes(data[offset : offset + 4], "big")
            kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
            assert zlib.crc32(kind + body) == int.from_bytes(data[offset + 8 + length : offset + 12 + length], "big")
            chunks[kind] = body
            offset += 12 + length
        rows = zlib.decompress(chunks[b"IDAT"])  # checks the adler32 of the whole stream
        assert len(rows) == height * (1 + width)  # 8-bit palette indices, a filter byte per row
        # Every pixel names a colour the palette has (a decoder may reject or misdraw one that does not).
        assert max(rows) < len(chunks[b"PLTE"]) // 3
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.load()
            assert decoded.size == (width, height)


def test_prompts_that_differ_after_the_shown_part_still_differ() -> None:
    shared = "x" * 40
    assert render_pattern(shared + "a", 0, None, 256, 256) != render_pattern(shared + "b", 0, None, 256, 256)


def test_an_image_after_the_first_of_its_size_makes_no_pillow_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each Pillow drawing call lets go of the GIL: in a worker of many threads every such call
    # hands it to another thread. Past the size's cached pattern and glyphs, an image is bytes only.
    render_pattern("warm", 0, 1, 1024, 1024)
    render_pattern("a red car", 0, 1, 1024, 1024)  # its glyphs

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a Pillow call per image")

    for name in ("new", "frombytes"):
        monkeypatch.setattr(Image, name, refuse)
    monkeypatch.setattr(Image.Image, "paste", refuse)
    first, second = render_pattern("a red car", 1, 2, 1024, 1024), render_pattern("a red car", 2, 3, 1024, 1024)
    assert first != second and first.startswith(b"\x89PNG")
