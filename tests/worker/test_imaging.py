"""The bytes decide the type and size, whatever the provider claims."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from worker.errors import PermanentError
from worker.imaging import inspect_image


def encode(fmt: str, size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mime", "ext"),
    [
        ("PNG", "image/png", "png"),
        ("JPEG", "image/jpeg", "jpg"),
        ("WEBP", "image/webp", "webp"),
        ("GIF", "image/gif", "gif"),
    ],
)
def test_type_and_size_come_from_the_bytes(fmt: str, mime: str, ext: str) -> None:
    data = encode(fmt)
    facts = inspect_image(data)
    assert (facts.mime_type, facts.extension, facts.width, facts.height) == (mime, ext, 40, 30)
    assert facts.sha256 == hashlib.sha256(data).hexdigest() and facts.size_bytes == len(data)


@pytest.mark.parametrize("data", [b"", b"<html>not an image</html>", b"\x89PNG\r\n\x1a\ntruncated"])
def test_non_images_are_permanent_errors(data: bytes) -> None:
    with pytest.raises(PermanentError):
        inspect_image(data)


def photo_png(size: tuple[int, int] = (256, 256)) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", size, bytes(range(256)) * (size[0] * size[1] * 3 // 256)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("keep", [100, 0.5, -12])  # header only, half the pixels, all but IEND
def test_a_png_cut_short_is_refused(keep: float) -> None:
    data = photo_png()
    cut = data[: int(len(data) * keep) if isinstance(keep, float) else keep]
    with pytest.raises(PermanentError, match="damaged or cut short"):
        inspect_image(cut)


def test_a_png_with_damaged_pixel_data_is_refused() -> None:
    data = bytearray(photo_png())
    data[len(data) // 2] ^= 0xFF  # inside an IDAT chunk: its CRC no longer matches
    with pytest.raises(PermanentError, match="damaged or cut short"):
        inspect_image(bytes(data))


def test_a_jpeg_or_gif_cut_short_is_refused_and_trailing_bytes_are_not() -> None:
    data = encode("JPEG", (256, 256))
    for whole in (data, data + b"\n", data + b"\xff" * 16, data + b"<x:xmpmeta/>"):
        assert inspect_image(whole).mime_type == "image/jpeg"
    with pytest.raises(PermanentError, match="no end marker"):
        inspect_image(data[: len(data) // 2])
    gif = encode("GIF", (256, 256))
    assert inspect_image(gif).mime_type == "image/gif"
    with pytest.raises(PermanentError, match="no trailer"):
        inspect_image(gif[: len(gif) // 2])


def test_a_small_file_claiming_a_huge_canvas_is_refused() -> None:
    bomb = encode("PNG", (9000, 9000))  # ~250 KB of bytes, 243 MB of pixels once decoded
    assert len(bomb) < 1_000_000
    with pytest.raises(PermanentError, match=r"9000x9000 image/png image, larger than this model makes \(2,097,152"):
        inspect_image(bomb, max_pixels=2 * 1024 * 1024)
    assert inspect_image(encode("PNG", (1024, 1024)), max_pixels=2 * 1024 * 1024).size == "1024x1024"
