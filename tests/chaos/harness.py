"""The chaos suite's harness: a batch of jobs with latency in flight, one fault
injected, and one row of figures per fault.

A row counts what the issue asks for: jobs submitted, succeeded, failed with a
reason (kinds), lost (ended `lost`, or never finished: stuck), duplicate
objects (files beyond the images the results list), worker deaths (a worker
that exited, or logged "Unrecoverable error", other than one the fault killed
on purpose) and the time from the fault until the last job finished.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.result import JobResult
from devtools.worker_process import WorkerProcess
from producer.client import ImageGenClient, JobCrashed, JobHandle, JobTimeout

# Short time limits so a Redis broker's redelivery bound fits in a test run; the
# bound is visibility timeout + one sweep (docs/reliability.md gives the defaults').
CHAOS_ENV = {
    "IMAGEGEN_OFFLINE_LATENCY_S": "2",
    "IMAGEGEN_TASK_SOFT_TIME_LIMIT_S": "20",
    "IMAGEGEN_TASK_TIME_LIMIT_S": "25",
    "IMAGEGEN_RETRY_BASE_DELAY_S": "0.5",
    "IMAGEGEN_RETRY_MAX_DELAY_S": "5",
    "IMAGEGEN_WEBHOOK_RETRY_MAX_DELAY_S": "5",  # the visibility timeout must outlive every retry delay
    "IMAGEGEN_RETRY_MAX_TOTAL_S": "120",
    "IMAGEGEN_VISIBILITY_TIMEOUT_S": "40",
    "IMAGEGEN_REDELIVERY_SWEEP_S": "5",
    "IMAGEGEN_JOB_DEADLINE_S": "60",
    "IMAGEGEN_LOST_SWEEP_S": "5",
}
REDIS_BOUND_S = 40 + 5


@dataclass
class Row:
    fault: str
    submitted: int = 0
    succeeded: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # error kind -> jobs
    lost: int = 0  # ended failed/lost by the deadline
    duplicates: int = 0
    worker_deaths: int = 0
    recovery_s: float | None = None
    images: int = 0  # images the results list
    stuck: list[str] = field(default_factory=list)  # jobs still unfinished at the end: id, state, progress
    note: str = ""

    def cells(self) -> list[str]:
        failed = ", ".join(f"{n} {kind}" for kind, n in sorted(self.failed.items())) or "0"
        recovery = "-" if self.recovery_s is None else f"{self.recovery_s:.1f} s"
        return [
            self.fault,
            str(self.submitted),
            str(self.succeeded),
            failed,
            str(self.lost),
            str(len(self.stuck)),
            str(self.duplicates),
            str(self.worker_deaths),
            recovery,
            self.note,
        ]


HEADER = [
    "fault",
    "jobs",
    "succeeded",
    "failed (kind)",
    "lost",
    "stuck",
    "duplicate objects",
    "worker deaths",
    "fault → last job done",
    "note",
]
ROWS: list[Row] = []


def table() -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in ROWS]
    return "\n".join(lines)


def submit_batch(client: ImageGenClient, node: dict[str, Any], jobs: int, variations: int) -> list[JobHandle]:
    node = {**node, "inputs": {**node["inputs"], "variations": variations}}
    return [client.submit(node) for _ in range(jobs)]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def started_variations(worker: WorkerProcess) -> int:
    return worker.log().count("imagegen.generate_variation[")


def collect(
    row: Row,
    handles: list[JobHandle],
    fault_at: float,
    workers: list[WorkerProcess],
    killed: tuple[WorkerProcess, ...] = (),
    storage: Path | None = None,
    timeout: float = 120.0,
) -> Row:
    """Wait for every job, then fill ``row`` and return it (also kept for the table)."""
    row.submitted = len(handles)
    results: list[JobResult] = []
    last_done = fault_at
    deadline = time.monotonic() + timeout
    for handle in handles:
        try:
            result = handle.wait(timeout=max(1.0, deadline - time.monotonic()))
        except JobCrashed:  # a chord that failed (ChordError): no document, the job is not lost
            row.failed.update({"crashed": 1})
            continue
        except JobTimeout:
            status = handle.status()
            row.stuck.append(f"{handle.job_id}: {status.state} {status.done}/{status.variations}")
            continue
        last_done = max(last_done, time.monotonic())
        results.append(result)
        if result.status == "succeeded":
            row.succeeded += 1
        elif any(e.kind == "lost" for e in result.errors):
            row.lost += 1
        else:
            row.failed.update({sorted({e.kind for e in result.errors})[0] if result.errors else "?": 1})
    row.recovery_s = last_done - fault_at
    row.images = sum(len(r.images) for r in results)
    if storage is not None:  # objects beyond the images each finished job lists
        for result in results:
            folder = storage / result.job_id
            files = [p for p in folder.glob("*") if p.is_file()] if folder.is_dir() else []
            row.duplicates += max(0, len(files) - len(result.images))
    for worker in workers:
        if worker in killed:
            continue
        exited = worker.process is not None and worker.process.poll() is not None
        if exited or "Unrecoverable error" in worker.log():
            row.worker_deaths += 1
    ROWS.append(row)
    return row


def assert_goal(row: Row, recovery_bound_s: float | None = None) -> None:
    assert not row.stuck, row
    assert row.lost == 0 and row.failed["crashed"] == 0, row
    assert row.duplicates == 0, row
    assert row.worker_deaths == 0, row
    if recovery_bound_s is not None:
        assert row.recovery_s is not None and row.recovery_s <= recovery_bound_s, row
