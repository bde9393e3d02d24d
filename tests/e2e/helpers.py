"""Reading back what a job left behind: files, Redis keys and values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import jsonschema
import redis
from PIL import Image

from contract.result import SCHEMA_FILE, JobResult


def image_file(record_uri: str) -> Path:
    return Path(unquote(urlparse(record_uri).path))


def assert_images_on_disk(result: JobResult) -> None:
    for image in result.images:
        path = image_file(image.uri)
        with Image.open(path) as decoded:
            decoded.load()
            assert (decoded.width, decoded.height) == (image.width, image.height)
        assert path.stat().st_size == image.bytes


def assert_matches_published_schema(result: JobResult) -> None:
    jsonschema.validate(result.model_dump(mode="json"), json.loads(SCHEMA_FILE.read_text()))


def all_redis_entries(url: str) -> dict[bytes, bytes]:
    """Every key with its value, flattened to bytes (strings, hashes, lists, sets, zsets)."""
    client = redis.Redis.from_url(url)
    entries: dict[bytes, bytes] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        value: Any
        if kind == b"string":
            value = client.get(key) or b""
        elif kind == b"hash":
            value = b"\n".join(k + b"=" + v for k, v in client.hgetall(key).items())
        elif kind == b"list":
            value = b"\n".join(client.lrange(key, 0, -1))
        elif kind == b"set":
            value = b"\n".join(client.smembers(key))
        elif kind == b"zset":
            value = b"\n".join(m for m, _ in client.zrange(key, 0, -1, withscores=True))
        else:
            value = b""
        entries[key] = value
    return entries
