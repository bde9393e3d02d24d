"""Facts read from image bytes themselves: type, dimensions, digest.

Providers mislabel mime types (PNG label on JPEG bytes), so the bytes decide.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image

from worker.errors import PermanentError

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp"}


@dataclass(frozen=True)
class ImageFacts:
    mime_type: str
    width: int
    height: int
    size_bytes: int
    sha256: str

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.mime_type]

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def sniff_mime_type(data: bytes) -> str | None:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def inspect_image(data: bytes) -> ImageFacts:
    """Type from the magic number, size from the decoded header."""
    mime = sniff_mime_type(data)
    if mime is None:
        raise PermanentError(f"provider returned {len(data)} bytes that are not a PNG, JPEG, GIF or WebP image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception as exc:  # Pillow raises several types for corrupt data
        raise PermanentError(f"provider returned a {mime} image that does not decode: {exc}") from None
    return ImageFacts(mime, width, height, len(data), hashlib.sha256(data).hexdigest())
