"""The liveness heartbeat file follows the real worker's life."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from devtools.redis_server import free_port
from devtools.worker_process import WorkerProcess
from tests.conftest import StartWorker


def test_heartbeat_file_is_touched_while_running_and_removed_on_shutdown(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    beat = tmp_path / "heartbeat"
    worker = start_worker({"IMAGEGEN_HEARTBEAT_FILE": str(beat)})
    assert beat.exists()
    first = beat.stat().st_mtime
    deadline = time.monotonic() + 15
    while beat.stat().st_mtime == first:  # event heartbeats come every ~2 s
        assert time.monotonic() < deadline, "heartbeat file not refreshed"
        time.sleep(0.2)
    worker.stop()
    assert not beat.exists()


def test_a_file_left_by_a_killed_worker_does_not_pass_for_the_next_one(job_env: dict[str, str], tmp_path: Path) -> None:
    """A SIGKILLed worker leaves its file (the pod's emptyDir outlives the container): the next
    worker, which cannot reach Redis, must not look alive and ready because of it."""
    beat = tmp_path / "heartbeat"
    beat.touch()
    env = {**job_env, "IMAGEGEN_HEARTBEAT_FILE": str(beat), "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    worker = WorkerProcess(env, log_dir=str(tmp_path))

    def start() -> None:
        with contextlib.suppress(RuntimeError):  # it never gets ready: what the test wants
            worker.start(ready_timeout=10)

    starting = threading.Thread(target=start)
    starting.start()
    try:
        deadline = time.monotonic() + 8
        while beat.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert worker.process is not None and worker.process.poll() is None  # still trying to connect
        assert not beat.exists(), "the dead worker's file still stands for the new one"
    finally:
        starting.join()  # start() gives up and stops the worker
