"""Start and stop a real Flower (``celery -A worker.flower flower``, as deployed) for tests."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import requests

from devtools.redis_server import free_port
from devtools.worker_process import spawn_celery


class FlowerProcess:
    def __init__(self, env: dict[str, str], basic_auth: tuple[str, str], log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth = basic_auth
        self.env = {**os.environ, **env}
        self.log_path = log_dir / "flower.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FlowerProcess:
        self.process = spawn_celery(
            ["flower", "--address=127.0.0.1", f"--port={self.port}", f"--basic-auth={self.auth[0]}:{self.auth[1]}"],
            self.env,
            self.log_path,
            app="worker.flower",
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{self.url}/healthcheck", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"flower did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=15)
