"""The liveness heartbeat file follows the real worker's life."""

from __future__ import annotations

import time
from pathlib import Path

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
