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
