"""Start and stop a real ``celery -A worker worker`` process (tests, demo,
benchmarks), with its own environment and a log file to read back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def spawn_celery(
    args: list[str], env: dict[str, str], log_path: Path, root: Path = ROOT, app: str = "worker"
) -> subprocess.Popen[bytes]:
    """``celery -A <app> <args>`` from ``root`` (the repo root), output to ``log_path``."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", app, *args],
        cwd=root,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )


class WorkerProcess:
    def __init__(
        self,
        env: dict[str, str],
        pool: str = "threads",
        concurrency: int = 8,
        log_dir: str | None = None,
        *,
        root: Path = ROOT,  # another checkout (benchmarks compare versions)
        app: str = "worker",  # benchmarks.bare_chord: the baseline every per-job figure is compared with
        mingle: bool = False,  # True: the deployed command's start-up (mingle and gossip on, ~1 s slower)
    ):
        self.root, self.app, self.mingle = root, app, mingle
        self.name = f"imagegen-{uuid.uuid4().hex[:8]}@%h"
        # Pool and concurrency go through Settings, as in a pod: Celery lets
        # app.conf.worker_pool win over the --pool flag.
        self.env = {
            **os.environ,
            **env,
            "IMAGEGEN_WORKER_POOL": pool,
            "IMAGEGEN_WORKER_CONCURRENCY": str(concurrency),
            "PYTHONUNBUFFERED": "1",
        }
        self.log_path = Path(log_dir or tempfile.mkdtemp(prefix="imagegen-worker-")) / "worker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WorkerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, ready_timeout: float = 60.0) -> None:
        self.process = spawn_celery(
            [
                "worker",
                "--loglevel=INFO",
                # Also on the command line: gevent must monkey-patch before imports.
                f"--pool={self.env['IMAGEGEN_WORKER_POOL']}",
                f"--concurrency={self.env['IMAGEGEN_WORKER_CONCURRENCY']}",
                f"--hostname={self.name}",
                *(() if self.mingle else ("--without-mingle", "--without-gossip")),
            ],
            self.env,
            self.log_path,
            self.root,
            self.app,
        )
        deadline = time.monotonic() + ready_timeout
        while b" ready." not in self.log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"celery worker did not start; log:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the worker has not been started")
        return self.process.pid

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM), as Kubernetes does; SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
