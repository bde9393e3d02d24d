"""Find a RabbitMQ for tests and benchmarks, or start one we own.

1. One that answers on 127.0.0.1:5672 (guest/guest): a fresh vhost of our own when
   ``rabbitmqctl`` works (deleted again by ``stop``), else its default vhost ``/``
   (tests use their own queue names there).
2. Else a ``rabbitmq-server`` we start on free ports with its own data directory,
   Erlang cookie and node name.
3. Else None: the caller skips and says why (``why_not``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from devtools.redis_server import free_port

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 5672


def answers(url: str, timeout: float = 2.0) -> bool:
    from kombu.connection import Connection

    try:
        with Connection(url, connect_timeout=timeout) as connection:  # type: ignore[no-untyped-call]
            connection.connect()
        return True
    except Exception:  # any failure means "not usable here"
        return False


def amqp_url(port: int, vhost: str = "/", host: str = DEFAULT_HOST) -> str:
    return f"amqp://guest:guest@{host}:{port}/{quote(vhost, safe='')}"


@dataclass
class RabbitMQ:
    """A RabbitMQ to use: ``url`` includes the vhost. ``process`` is set when we started it."""

    url: str
    vhost: str | None = None  # a vhost we created on a shared server (deleted by stop)
    process: subprocess.Popen[bytes] | None = None
    workdir: str | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self.vhost is not None:
            _rabbitmqctl("delete_vhost", self.vhost)
            self.vhost = None
        if self.process is not None:
            _stop_group(self.process)
            self.process = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


why_not = ""  # set by find_rabbitmq when it returns None


def find_rabbitmq(port: int = DEFAULT_PORT) -> RabbitMQ | None:
    """A RabbitMQ for one test session (see the module docstring), or None."""
    global why_not
    shared = amqp_url(port)
    if answers(shared):
        vhost = f"imagegen-test-{uuid.uuid4().hex[:8]}"
        if _rabbitmqctl("add_vhost", vhost) and _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"):
            url = amqp_url(port, vhost)
            if answers(url):
                return RabbitMQ(url, vhost=vhost)
            _rabbitmqctl("delete_vhost", vhost)
        return RabbitMQ(shared)
    if server_binary() is None:
        why_not = f"no RabbitMQ answers on {DEFAULT_HOST}:{port} and rabbitmq-server is not installed"
        return None
    try:
        return start_rabbitmq()
    except RuntimeError as exc:
        why_not = str(exc)
        return None


def server_binary() -> str | None:
    # Debian's /usr/sbin/rabbitmq-server switches to the rabbitmq user and logs to
    # /var/log; the script behind it runs the node as we are, with our environment.
    direct = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    if direct.exists():
        return str(direct)
    return shutil.which("rabbitmq-server")


def start_rabbitmq(ready_timeout: float = 60.0) -> RabbitMQ:
    binary = server_binary()
    if binary is None:
        raise RuntimeError("rabbitmq-server is not installed")
    workdir = tempfile.mkdtemp(prefix="imagegen-rabbitmq-")
    port, dist_port = free_port(), free_port()
    name = f"imagegen-{uuid.uuid4().hex[:8]}@localhost"
    Path(workdir, "enabled_plugins").write_text("[].\n")
    Path(workdir, "rabbitmq.conf").write_text("# imagegen test node: defaults, guest from loopback only\n")
    env = {
        **os.environ,
        "HOME": workdir,  # a private Erlang cookie
        "RABBITMQ_NODENAME": name,
        "RABBITMQ_NODE_IP_ADDRESS": DEFAULT_HOST,
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": f"{workdir}/mnesia",
        "RABBITMQ_LOG_BASE": f"{workdir}/log",
        "RABBITMQ_PID_FILE": f"{workdir}/rabbitmq.pid",
        "RABBITMQ_ENABLED_PLUGINS_FILE": f"{workdir}/enabled_plugins",
        "RABBITMQ_CONFIG_FILE": f"{workdir}/rabbitmq.conf",
        "RABBITMQ_ADVANCED_CONFIG_FILE": f"{workdir}/advanced.config",
    }
    log = Path(workdir, "server.log")
    with log.open("wb") as output:
        process = subprocess.Popen(
            [binary], env=env, cwd=workdir, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = amqp_url(port)
    deadline = time.monotonic() + ready_timeout
    while not answers(url, timeout=1.0):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_group(process)
            tail = log.read_text(errors="replace")[-2000:]
            shutil.rmtree(workdir, ignore_errors=True)
            raise RuntimeError(f"could not start {binary} on port {port}: {tail}")
        time.sleep(0.5)
    return RabbitMQ(url, process=process, workdir=workdir)


def _rabbitmqctl(*args: str) -> bool:
    binary = shutil.which("rabbitmqctl")
    if binary is None:
        return False
    try:
        run = subprocess.run([binary, *args], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return run.returncode == 0


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (the script, erl and its helpers), SIGKILL if it hangs."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError):  # helpers left in the group (erl_child_setup, inet_gethost)
        os.killpg(process.pid, signal.SIGKILL)
