"""Every thread of a worker process on one CPU, where the pod owns its CPUs (IMAGEGEN_WORKER_CPU).

A worker's threads share one GIL. Spread over several CPUs, each handoff of it (a thread
blocking on a socket or a file while another waits for the lock) wakes the waiting thread on
another CPU at once, and the first then waits for the lock in its turn: about 660 context
switches a 4-variation job at L = 0, and a fifth of the worker's CPU in the kernel switching
threads (perf). On one CPU the woken thread waits for its turn instead: about 100 switches a
job, and about 30 % less CPU per job (docs/pools.md). What runs outside the GIL (zlib, hashing,
TLS) then shares that CPU too.

Opt-in: it is safe only where the CPU is this worker's alone, as in a Kubernetes pod of the
Guaranteed class with whole CPUs under the kubelet's static CPU manager policy ("first": the
lowest of the pod's CPUs). Workers pinned alike on shared CPUs would pile onto the same one.
"""

from __future__ import annotations

import logging
import os

from contract.errors import ImageGenError

log = logging.getLogger(__name__)

SETTING = "IMAGEGEN_WORKER_CPU"


class CpuAffinityError(ImageGenError):
    """The CPU asked for is not one this process may run on (or pinning is not available here)."""


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on (its container's cpuset, or any ``taskset`` it got)."""
    if not hasattr(os, "sched_getaffinity"):
        raise CpuAffinityError(f"{SETTING}: this platform cannot pin threads to a CPU (Linux only); leave it empty")
    return set(os.sched_getaffinity(0))


def chosen_cpu(setting: str, allowed: set[int]) -> int | None:
    """The CPU ``setting`` names ("first", a number), or None for "" (threads left to the OS)."""
    if not setting:
        return None
    cpu = min(allowed) if setting == "first" else int(setting)
    if cpu not in allowed:
        raise CpuAffinityError(
            f"{SETTING}={setting}: CPU {cpu} is not one this process may run on (allowed: {cpu_list(allowed)})"
        )
    return cpu


def pin_threads(cpu: int, pid: int | None = None) -> int:
    """Pin every thread of this process (or of ``pid``: the benchmark pins the bare chord's
    worker alike) to ``cpu``; threads started later inherit it from the thread that starts
    them. How many threads were pinned."""
    pinned = 0
    for task in os.listdir(f"/proc/{pid or 'self'}/task"):
        try:
            os.sched_setaffinity(int(task), {cpu})
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        pinned += 1
    return pinned


def pin_worker(setting: str) -> int | None:
    """Apply ``setting`` at the worker's start; the CPU, or None when left to the OS."""
    cpu = chosen_cpu(setting, allowed_cpus()) if setting else None  # unset: no platform check either
    if cpu is None:
        return None
    threads = pin_threads(cpu)
    log.info(
        "%s=%s: the worker's %d thread(s), and every thread it starts, run on CPU %d", SETTING, setting, threads, cpu
    )
    return cpu


def cpu_list(cpus: set[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``0-2,5``, as the kernel lists CPUs."""
    ordered = sorted(cpus)
    spans: list[str] = []
    start = previous = ordered[0]
    for cpu in [*ordered[1:], None]:
        if cpu is not None and cpu == previous + 1:
            previous = cpu
            continue
        spans.append(str(start) if start == previous else f"{start}-{previous}")
        if cpu is not None:
            start = previous = cpu
    return ",".join(spans)
