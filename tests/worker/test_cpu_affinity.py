"""IMAGEGEN_WORKER_CPU: every thread of a worker process on one CPU, or a clear refusal to start."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from contract.settings import Settings, SettingsError
from devtools.worker_process import WorkerProcess
from producer.client import ImageGenClient
from tests.conftest import StartWorker
from worker.cpu_affinity import CpuAffinityError, chosen_cpu, cpu_list

ALLOWED = os.sched_getaffinity(0)


def thread_cpus(pid: int) -> dict[int, str]:
    """Each thread's ``Cpus_allowed_list`` as the kernel prints it (``0``, ``0-1``)."""
    cpus = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = (task / "status").read_text()
        cpus[int(task.name)] = status.split("Cpus_allowed_list:")[1].split()[0]
    return cpus


def test_the_setting_names_a_cpu_the_process_may_run_on() -> None:
    assert chosen_cpu("", {0, 1}) is None
    assert chosen_cpu("first", {3, 5, 4}) == 3
    assert chosen_cpu("5", {3, 5}) == 5
    with pytest.raises(CpuAffinityError) as refused:
        chosen_cpu("2", {0, 1, 3, 4, 5, 9})
    assert str(refused.value) == (
        "IMAGEGEN_WORKER_CPU=2: CPU 2 is not one this process may run on (allowed: 0-1,3-5,9)"
    )
    assert cpu_list({7}) == "7"


@pytest.mark.parametrize("value", ["fast", "-1", "0,1", "0-1", "12345", "٣"])
def test_a_value_that_names_no_cpu_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("IMAGEGEN_WORKER_CPU", value)
    with pytest.raises(SettingsError) as refused:
        Settings()
    assert f"IMAGEGEN_WORKER_CPU={value!r}: not a CPU: use a CPU number, 'first'" in str(refused.value)


def test_the_prefork_pool_cannot_be_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_WORKER_CPU", "first")
    monkeypatch.setenv("IMAGEGEN_WORKER_POOL", "prefork")
    with pytest.raises(SettingsError, match="child processes would all share the one CPU"):
        Settings()
    monkeypatch.setenv("IMAGEGEN_WORKER_POOL", "threads")
    assert Settings().worker_cpu == "first"


@pytest.mark.skipif(len(ALLOWED) < 2, reason="pinning is visible only with more than one CPU")
def test_a_pinned_worker_runs_every_thread_on_its_cpu(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    offline_node["inputs"]["variations"] = 4
    pinned = start_worker({"IMAGEGEN_WORKER_CPU": "first"})
    at_start = thread_cpus(pinned.pid)
    # The pool starts its threads as the tasks arrive, after the worker pinned itself.
    assert all(client.submit(offline_node).wait(timeout=60).status == "succeeded" for _ in range(4))
    pinned_threads = thread_cpus(pinned.pid)
    assert len(pinned_threads) > len(at_start), (at_start, pinned_threads)
    assert set(pinned_threads.values()) == {str(min(ALLOWED))}, pinned_threads
    assert "IMAGEGEN_WORKER_CPU=first: the worker's" in pinned.log()

    unpinned = start_worker()
    pinned.stop()
    assert client.submit(offline_node).wait(timeout=60).status == "succeeded"
    assert set(thread_cpus(unpinned.pid).values()) == {cpu_list(ALLOWED)}


def test_a_cpu_the_worker_may_not_use_stops_it_with_the_reason(job_env: dict[str, str], tmp_path: Path) -> None:
    worker = WorkerProcess({**job_env, "IMAGEGEN_WORKER_CPU": "4095"}, log_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="did not start"):
        worker.start(ready_timeout=30)
    assert worker.process is not None
    deadline = time.monotonic() + 10
    while worker.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker.process.poll() == 1
    log = worker.log()
    assert (
        "the worker cannot start: IMAGEGEN_WORKER_CPU=4095: CPU 4095 is not one this process may run on "
        f"(allowed: {cpu_list(ALLOWED)})"
    ) in log
    assert "Traceback" not in log
    worker.stop()
