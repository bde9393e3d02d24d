"""Attack-test helpers: a listening socket that records who connected, and
raw job messages that bypass the producer (as a compromised or careless
producer, or anyone who can write to the broker, would send them)."""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contract.queue import RUN_JOB, job_task_id
from contract.work import JobOrder
from producer.client import ImageGenClient


class Listener:
    """A TCP socket on loopback that accepts, records and closes every connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sock.close()


def send_raw_job(client: ImageGenClient, job_id: str, node: dict[str, Any]) -> Any:
    """Enqueue a job task straight to the broker, skipping every producer check; its AsyncResult."""
    order = JobOrder(job_id=job_id, node=node, submitted_at=datetime.now(UTC))
    task_id = job_task_id(job_id, 1) if "\n" not in job_id else "raw-newline@1"
    return client.celery.send_task(RUN_JOB, args=(order.model_dump(mode="json"),), task_id=task_id)


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}
