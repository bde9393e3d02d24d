"""Start and stop a real ``imagegen serve`` (uvicorn) process, for tests and ``make playground``,
with its own environment and a log file to read back."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from devtools.redis_server import free_port
from devtools.worker_process import ROOT


class ApiProcess:
    def __init__(
        self, env: dict[str, str], host: str = "127.0.0.1", port: int | None = None, log_dir: str | None = None
    ):
        self.host, self.port = host, port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_path = Path(log_dir or tempfile.mkdtemp(prefix="imagegen-api-")) / "api.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ApiProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, ready_timeout: float = 60.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "producer.cli", "serve", "--host", self.host, "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the API exited with {self.process.returncode}; log:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the API did not answer within {ready_timeout:g} s; log:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
