"""Read back everything in the suite's private Redis, to prove what is NOT there
(image bytes, secrets): every database, every key, every value by type."""

from __future__ import annotations

import base64
import json

import redis
from celery.backends.base import COMPRESSED_PAYLOAD_MAGIC, decompress_payload


def all_redis_entries(url: str) -> dict[bytes, bytes]:
    """``b"<db>:<key>"`` -> the value flattened to bytes, for every key in every database."""
    entries: dict[bytes, bytes] = {}
    databases = [int(name.removeprefix("db")) for name in redis.Redis.from_url(url).info("keyspace")]
    for db in databases:
        client = redis.Redis.from_url(url, db=db)
        for key in client.scan_iter(count=1000):
            entries[f"{db}:".encode() + key] = _value(client, key)
    return entries


def redis_dump(url: str) -> bytes:
    """All keys and values as one blob, for substring searches."""
    return b"\n".join(key + b"\n" + value for key, value in all_redis_entries(url).items())


def _value(client: redis.Redis, key: bytes) -> bytes:
    kind = client.type(key)
    if kind == b"string":
        return _readable(client.get(key) or b"")
    if kind == b"hash":
        return b"\n".join(k + b"=" + v for k, v in client.hgetall(key).items())
    if kind == b"list":
        return b"\n".join(_readable(item) for item in client.lrange(key, 0, -1))
    if kind == b"set":
        return b"\n".join(_readable(member) for member in client.smembers(key))
    if kind == b"zset":  # a chord's parts (Celery's ``.j`` key), compressed from 1 KiB
        return b"\n".join(_readable(member) for member, _ in client.zrange(key, 0, -1, withscores=True))
    if kind == b"stream":
        return repr(client.xrange(key)).encode()
    if kind == b"none":
        return b""  # deleted between SCAN and TYPE (Celery and kombu remove keys as tasks finish)
    raise AssertionError(f"unexpected Redis type {kind!r} for {key!r}")


def _readable(value: bytes) -> bytes:
    """The value plus what it hides from a substring search: a compressed result (Celery's
    ``result_compression``), a queued message's base64 body (kombu's Redis transport)."""
    if value.startswith(COMPRESSED_PAYLOAD_MAGIC):
        return value + b"\n" + decompress_payload(value)
    if value.startswith(b"{") and b'"body_encoding": "base64"' in value:
        try:
            message = json.loads(value)
            return value + b"\n" + base64.b64decode(message["body"])
        except (ValueError, KeyError, TypeError):
            return value
    return value
