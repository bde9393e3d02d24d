"""A private Redis, a real worker and a producer, for one benchmark run."""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from contract.settings import Settings
from devtools.redis_server import start_redis
from devtools.worker_process import ROOT, WorkerProcess
from producer.client import ImageGenClient


def offline_node(variations: int) -> dict[str, Any]:
    node = json.loads((ROOT / "examples" / "seed-node.json").read_text())
    node["inputs"].update(model="offline_preview", variations=variations)
    return dict(node)


@contextmanager
def running_worker(pool: str, concurrency: int, env: dict[str, str]) -> Iterator[tuple[ImageGenClient, WorkerProcess]]:
    redis = start_redis()
    job_env = {
        "REDIS_URL": redis.url,
        "IMAGEGEN_QUEUE": f"bench-{uuid.uuid4().hex[:6]}",
        "IMAGEGEN_STORAGE_URL": tempfile.mkdtemp(prefix="imagegen-bench-"),
        **env,
    }
    os.environ.update(job_env)
    try:
        with WorkerProcess(job_env, pool=pool, concurrency=concurrency) as worker:
            client = ImageGenClient(Settings())
            try:
                yield client, worker
            finally:
                client.close()
    finally:
        redis.stop()


def timed_job(client: ImageGenClient, node: dict[str, Any], timeout: float = 300) -> tuple[float, str]:
    start = time.perf_counter()
    result = client.submit(node).wait(timeout=timeout)
    return time.perf_counter() - start, result.status


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    total = 0
    for child in [pid, *_descendants(pid)]:
        status = Path(f"/proc/{child}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def _descendants(pid: int) -> list[int]:
    children_file = Path(f"/proc/{pid}/task/{pid}/children")
    if not children_file.exists():
        return []
    children = [int(c) for c in children_file.read_text().split()]
    return children + [d for c in children for d in _descendants(c)]
