"""Every figure of docs/pools.md, measured side by side in one run (``make bench``).

    python -m benchmarks.figures                        # ~5 minutes on 2 cores
    IMAGEGEN_BENCH_QUICK=1 python -m benchmarks.figures  # ~3 minutes: L = 5 s, fewer jobs
    python -m benchmarks.figures --root /other/checkout  # the same figures for another version
    python -m benchmarks.figures --pools threads:256,gevent:256,threads:512   # in-flight candidates

Everything runs on this machine: a private redis-server, the fake Gemini server
(devtools/fake_gemini.py) in a process of its own (the real API is remote: it must not
share a GIL with the submitters; the cost section's HTTPS one runs in this process), and
real ``celery worker`` processes.
Per-job figures are ratios to a bare Celery chord (4 no-op tasks + a callback,
benchmarks/bare_chord.py) on the same Redis, run by a worker with the same pool
and concurrency, alternating with ours; CPU and memory are per image or per job.
The machine's load average is printed with each section: on a shared machine
compare figures of one run, never across runs. Prints figures only.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks.bare_chord import make_app, submit_split
from benchmarks.bare_chord import submit as submit_bare
from benchmarks.harness import rss_mib
from contract.result import JobResult
from contract.settings import POOL_HEADROOM, Settings
from devtools.fake_gemini import FakeGemini, FakeGeminiProcess
from devtools.redis_server import RedisServer, start_redis
from devtools.worker_process import ROOT, WorkerProcess
from producer.client import ImageGenClient
from worker.cpu_affinity import allowed_cpus, pin_threads

API_KEY = "benchmark-key"
QUICK = os.environ.get("IMAGEGEN_BENCH_QUICK", "") not in ("", "0")
CRASH_MARKS = ("MaxConnectionsError", "Too many connections", "ChordError", "Traceback", "CRITICAL")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} (1/5 min, {os.cpu_count()} cores)"


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    return sum(cpu_times(pid))


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def context_switches(pid: int) -> int:
    """Context switches of all a process's threads so far (voluntary and not). Under one GIL each
    blocking call a thread makes while others want the lock costs a pair of them."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        total += sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)
    return total


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))] if ordered else 0.0


@dataclass
class Bench:
    root: Path
    redis: RedisServer
    fake: FakeGeminiProcess  # in a process of its own: the real API is remote
    workdir: Path
    lines: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    # --- set-up ------------------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        return {
            "REDIS_URL": self.redis.url,
            "IMAGEGEN_QUEUE": queue,
            "IMAGEGEN_STORAGE_URL": str(self.workdir / queue),
            "IMAGEGEN_MAX_VARIATIONS": "16",
            "GEMINI_API_KEY": API_KEY,
            "GOOGLE_API_KEY": "",
            "GOOGLE_GEMINI_BASE_URL": self.fake.base_url,
            "BARE_CHORD_REDIS_URL": self.redis.url,
            "BARE_CHORD_QUEUE": f"bare-{queue}",
            **extra,
        }

    @contextmanager
    def worker(self, env: dict[str, str], pool: str, concurrency: int, bare: bool = False) -> Iterator[WorkerProcess]:
        log_dir = tempfile.mkdtemp(prefix="worker-", dir=self.workdir)
        if bare:
            env = {**env, "BARE_CHORD_POOL": str(concurrency + POOL_HEADROOM)}
            process = WorkerProcess(env, pool, concurrency, log_dir, root=ROOT, app="benchmarks.bare_chord")
        else:
            process = WorkerProcess(env, pool, concurrency, log_dir, root=self.root)
        with process:
            yield process

    def client(self, env: dict[str, str]) -> ImageGenClient:
        return ImageGenClient(
            Settings(REDIS_URL=env["REDIS_URL"], queue=env["IMAGEGEN_QUEUE"], max_variations=16, job_deadline_s=3600)
        )


def node(model: str, variations: int) -> dict[str, Any]:
    document = json.loads((ROOT / "examples" / "seed-node.json").read_text())
    document["inputs"].update(model=model, variations=variations, size="1024x1024")
    return dict(document)


def run_jobs(client: ImageGenClient, document: dict[str, Any], jobs: int, timeout: float) -> list[JobResult]:
    handles = [client.submit(document) for _ in range(jobs)]
    return [handle.wait(timeout=timeout) for handle in handles]


# --- 1. generations in flight per worker process (Gemini SDK path) -------------------------------
def in_flight(
    bench: Bench,
    pool: str,
    concurrency: int,
    latency_s: float,
    duration_s: float,
    fake: FakeGemini | FakeGeminiProcess | None = None,
    label: str = "",
    **extra_env: str,
) -> None:
    """A steady stream: jobs of 8 arrive evenly, 25 % faster than ``concurrency`` slots of
    ``latency_s`` can take them, for ``duration_s``; the broker holds the rest. Images/min
    is the rate generations start at once the first ones have finished (the fake server
    sees each start), so it is the worker's capacity, not the arrival rate. ``fake``: another
    server than the bench's (with ``extra_env`` pointing the worker at it)."""
    server = fake if fake is not None else bench.fake
    env = bench.env(**extra_env)
    server.latency_s = 0.0
    arrivals_per_s = 1.25 * concurrency / latency_s
    jobs = max(1, round(arrivals_per_s * duration_s / 8))
    with bench.worker(env, pool, concurrency) as worker, closing(bench.client(env)) as client:
        run_jobs(client, node("gemini_3_image", 8), 2, 60)  # warm-up
        server.latency_s = latency_s
        server.reset()
        started, cpu0 = time.perf_counter(), cpu_s(worker.pid)
        handles = []
        for number in range(jobs):
            time.sleep(max(0.0, started + number * 8 / arrivals_per_s - time.perf_counter()))
            handles.append(client.submit(node("gemini_3_image", 8)))
        results = [handle.wait(timeout=20 * latency_s + 300) for handle in handles]
        wall = time.perf_counter() - started
        cpu = cpu_s(worker.pid) - cpu0
        rss = peak_rss_mib(worker.pid)
        marks = {mark: worker.log().count(mark) for mark in CRASH_MARKS}
    begun = time.time() - (time.perf_counter() - started)  # the run's start on the fake's clock
    starts = [request.timestamp - begun for request in server.requests]
    window = (latency_s, duration_s)  # the first generations are done; arrivals still outpace the slots
    in_window = sum(window[0] <= start < window[1] for start in starts)
    walls = [image.duration_ms / 1000 for result in results for image in result.images]
    errors = sum(len(result.errors) for result in results)
    bench.say(
        f"  {pool}x{concurrency}{label}: {server.max_in_flight} in flight (max), "
        f"{in_window / (window[1] - window[0]) * 60:.0f} images/min, p95 image wall "
        f"{percentile(walls, 95) / latency_s:.2f}xL, worker CPU {cpu / wall:.2f} cores, peak RSS {rss:.0f} MiB; "
        f"{len(walls)}/{jobs * 8} images, {errors} error records, "
        f"log: {', '.join(f'{k} {v}' for k, v in marks.items() if v) or 'clean'}"
    )


def in_flight_over_https(bench: Bench, pool: str, concurrency: int, latency_s: float, duration_s: float) -> None:
    """``in_flight`` through the real API's transport: the worker's TLS stream
    (worker/providers/tls_reads.py) on every connection in flight. The TLS fake serves from
    this process, tiny PNGs as the plain one does."""
    with secure_fake(bench) as (secure, trust):
        secure.image_kind = "solid"
        in_flight(
            bench,
            pool,
            concurrency,
            latency_s,
            duration_s,
            fake=secure,
            label=" over HTTPS",
            GOOGLE_GEMINI_BASE_URL=secure.base_url,
            SSL_CERT_FILE=str(trust),
        )


# --- 2. every allowed concurrency works (offline model) -------------------------------------------
def offline_burst(bench: Bench, pool: str, concurrency: int, jobs: int, latency_s: float) -> None:
    env = bench.env(IMAGEGEN_OFFLINE_LATENCY_S=str(latency_s))
    with bench.worker(env, pool, concurrency) as worker, closing(bench.client(env)) as client:
        started = time.perf_counter()
        handles = [client.submit(node("offline_preview", 8)) for _ in range(jobs)]
        outcomes: Counter[str] = Counter()
        deadline = started + 120  # a job that is not done by then is not coming (a failed chord)
        for handle in handles:
            try:
                outcomes[handle.wait(timeout=max(1.0, deadline - time.perf_counter())).status] += 1
            except Exception as exc:  # a crashed or stuck job is a figure here, not a failure
                outcomes[type(exc).__name__] += 1
        wall = time.perf_counter() - started
        marks = {mark: worker.log().count(mark) for mark in CRASH_MARKS}
    bench.say(
        f"  {pool}x{concurrency}: {outcomes['succeeded']}/{jobs} jobs succeeded ({jobs * 8} variations, "
        f"{latency_s:g} s latency, {wall:.1f} s), outcomes {dict(outcomes)}, "
        f"log: {', '.join(f'{k} {v}' for k, v in marks.items() if v) or 'clean'}"
    )


# --- 3./4. submit -> result and jobs/s, against the bare chord -------------------------------------
FLOOR = "the design's floor: a task publishing the bare chord"
SETTLED_FLOOR = "the same with our late acks, prefetch 1 and task events"
PER_JOB_MODELS = (("offline_preview", "offline"), ("gemini_3_image", "Gemini SDK + local server"))


def per_job(bench: Bench, pool: str, concurrency: int, runs: int, seconds: float) -> None:
    env = bench.env()
    bench.fake.latency_s = 0.0
    bench.fake.image_kind = "solid"
    # The floor with our reliability and Flower settings: a job-shaped bare chord on its own queue.
    settled = {**env, "BARE_CHORD_QUEUE": env["BARE_CHORD_QUEUE"] + "-settled", "BARE_CHORD_SETTINGS": "ours"}
    with (
        bench.worker(env, pool, concurrency) as ours_worker,
        bench.worker(env, pool, concurrency, bare=True) as bare_worker,
        bench.worker(settled, pool, concurrency, bare=True) as settled_worker,
    ):
        sender = make_app(env["REDIS_URL"], env["BARE_CHORD_QUEUE"])
        settled_sender = make_app(env["REDIS_URL"], settled["BARE_CHORD_QUEUE"])
        with closing(bench.client(env)) as client:
            for model, label in PER_JOB_MODELS:
                document = node(model, 4)
                for _ in range(3):  # warm-up
                    client.submit(document).wait(timeout=60)
                    submit_bare(sender).get(timeout=60)
                    submit_split(sender).get(timeout=60)
                    submit_split(settled_sender).get(timeout=60)
                ours, bare, shaped, shaped_settled = alternating_walls(
                    runs,
                    functools.partial(run_one_job, client, document),
                    lambda: submit_bare(sender).get(timeout=60),
                    lambda: submit_split(sender).get(timeout=60),
                    lambda: submit_split(settled_sender).get(timeout=60),
                )
                ratio = statistics.median(ours) / statistics.median(bare)
                bench.say(
                    f"  submit -> result, 4 variations, L=0, {label}: {statistics.median(ours) * 1000:.1f} ms vs "
                    f"bare chord {statistics.median(bare) * 1000:.1f} ms (medians of {runs}): {ratio:.2f}x"
                )
                if label == "offline":
                    mid_bare, mid_ours = statistics.median(bare), statistics.median(ours)
                    for what, times in ((FLOOR, shaped), (SETTLED_FLOOR, shaped_settled)):
                        floor = statistics.median(times)
                        bench.say(
                            f"  {what}, {floor * 1000:.1f} ms: {floor / mid_bare:.2f}x the bare chord "
                            f"(ours {mid_ours / floor:.2f}x that)"
                        )
        redis_pid = {"Redis": bench.redis.process.pid} if bench.redis.process is not None else {}
        for model, label in PER_JOB_MODELS:
            document = node(model, 4)
            provider = {"fake Gemini": bench.fake.pid} if label != "offline" else {}
            ours_runs, bare_runs = alternating_loops(
                seconds,
                (
                    functools.partial(ours_submitter, env, document),
                    {"worker": ours_worker.pid, **redis_pid, **provider},
                ),
                (functools.partial(bare_submitter, env), {"worker": bare_worker.pid, **redis_pid}),
            )
            ours_rate = statistics.mean(r.rate for r in ours_runs)
            bare_rate = statistics.mean(r.rate for r in bare_runs)
            bench.say(
                f"  jobs/s, 8 submitters, L=0, {label}: {ours_rate:.1f} vs bare chord {bare_rate:.1f}: "
                f"{ours_rate / bare_rate:.2f}x"
            )
            if label != "offline":  # the provider's stand-in shares this machine's two cores
                bench.say(f"    CPU per job, ours: {cpu_split(ours_runs)}")
                continue
            # Where the CPU goes: one worker process is bound by its GIL (about one core), and the bare
            # chord's submitters build and publish its chord, which the job's design puts in the worker.
            worker_cores = statistics.mean(r.cores["worker"] for r in ours_runs)
            bench.say(f"    CPU per job, ours: {cpu_split(ours_runs)} (its worker busy {worker_cores:.2f} cores)")
            bench.say(f"    CPU per job, bare chord: {cpu_split(bare_runs)}")
            for what, floor_env, floor_worker in ((FLOOR, env, bare_worker), (SETTLED_FLOOR, settled, settled_worker)):
                floor_run = closed_loop(
                    functools.partial(bare_submitter, floor_env, submit_split),
                    seconds,
                    {"worker": floor_worker.pid, **redis_pid},
                )
                bench.say(
                    f"  {what}, jobs/s {floor_run.rate:.1f}: {floor_run.rate / bare_rate:.2f}x the bare chord "
                    f"(ours {ours_rate / floor_run.rate:.2f}x that); CPU per job: {cpu_split([floor_run])}"
                )
        cpu = pinning_cpu()
        if cpu is not None:
            with closing(bench.client(env)) as client:
                pinned_per_job(bench, cpu, ours_worker, bare_worker, env, client, sender, runs, seconds)
        gc.collect()  # the bare chords' results unsubscribe when collected: while their Redis is up
        sender.close()
        settled_sender.close()


def pinning_cpu() -> int | None:
    """The CPU the bench pins a worker to, as IMAGEGEN_WORKER_CPU=first does; None where the
    process has only one CPU (nothing to compare with)."""
    cpus = allowed_cpus()
    return min(cpus) if len(cpus) > 1 else None


def pinned_per_job(
    bench: Bench,
    cpu: int,
    ours_worker: WorkerProcess,
    bare_worker: WorkerProcess,
    env: dict[str, str],
    client: ImageGenClient,
    sender: Any,
    runs: int,
    seconds: float,
) -> None:
    """The same figures with both workers' threads on one CPU (what IMAGEGEN_WORKER_CPU does to
    ours, done here from outside to both, so the bare chord gets it too and any --root works)."""
    for worker in (ours_worker, bare_worker):
        pin_threads(cpu, worker.pid)  # threads they start later inherit it
    bench.say(f"  both workers pinned to CPU {cpu} (IMAGEGEN_WORKER_CPU), 4 variations, L=0:")
    for model, label in PER_JOB_MODELS:
        document = node(model, 4)
        ours, bare = alternating_walls(
            runs, functools.partial(run_one_job, client, document), lambda: submit_bare(sender).get(timeout=60)
        )
        ours_runs, bare_runs = alternating_loops(
            seconds,
            (functools.partial(ours_submitter, env, document), {"worker": ours_worker.pid}),
            (functools.partial(bare_submitter, env), {"worker": bare_worker.pid}),
        )
        ours_rate = statistics.mean(r.rate for r in ours_runs)
        bare_rate = statistics.mean(r.rate for r in bare_runs)
        mid_ours, mid_bare = statistics.median(ours), statistics.median(bare)
        bench.say(
            f"    {label}: submit -> result {mid_ours * 1000:.1f} vs {mid_bare * 1000:.1f} ms: "
            f"{mid_ours / mid_bare:.2f}x; jobs/s {ours_rate:.1f} vs {bare_rate:.1f}: {ours_rate / bare_rate:.2f}x"
        )
        bench.say(f"      CPU per job, ours: {cpu_split(ours_runs)}; bare chord: {cpu_split(bare_runs)}")


def run_one_job(client: ImageGenClient, document: dict[str, Any]) -> None:
    client.submit(document).wait(timeout=60)


def alternating_walls(runs: int, *actions: Callable[[], Any]) -> list[list[float]]:
    """Each action's wall time, ``runs`` times, taking turns: drift in the machine's load hits all."""
    walls: list[list[float]] = [[] for _ in actions]
    for _ in range(runs):
        for action, times in zip(actions, walls, strict=True):
            started = time.perf_counter()
            action()
            times.append(time.perf_counter() - started)
    return walls


def alternating_loops(
    seconds: float, *sides: tuple[Callable[[], tuple[Callable[[], None], Callable[[], None]]], dict[str, int]]
) -> list[list[LoopRun]]:
    """Two closed loops of each side (its submitter factory and the processes it measures),
    taking turns, so drift in the machine's load hits all."""
    runs: list[list[LoopRun]] = [[] for _ in sides]
    for _ in range(2):
        for (make, processes), side_runs in zip(sides, runs, strict=True):
            side_runs.append(closed_loop(make, seconds, processes))
    return runs


def ours_submitter(env: dict[str, str], document: dict[str, Any]) -> tuple[Callable[[], None], Callable[[], None]]:
    client = ImageGenClient(Settings(REDIS_URL=env["REDIS_URL"], queue=env["IMAGEGEN_QUEUE"], max_variations=16))

    def once() -> None:
        client.submit(document).wait(timeout=60)

    return once, client.close


def bare_submitter(
    env: dict[str, str], submit: Callable[[Any], Any] = submit_bare
) -> tuple[Callable[[], None], Callable[[], None]]:
    sender = make_app(env["REDIS_URL"], env["BARE_CHORD_QUEUE"])

    def once() -> None:
        submit(sender).get(timeout=60)

    return once, sender.close


@dataclass(frozen=True)
class LoopRun:
    rate: float  # jobs per second, each submitter's warm-up job left out
    cpu_ms: dict[str, float]  # CPU per job (warm-ups included) of each process measured
    cores: dict[str, float]  # CPU seconds per second of each process measured
    switches: dict[str, float]  # context switches per job of each process measured


def cpu_split(runs: list[LoopRun]) -> str:
    """The mean CPU per job of each process over ``runs``, e.g. "worker 46.6 + Redis 4.0 + ... ms",
    and the worker's context switches per job."""
    names = runs[0].cpu_ms
    split = " + ".join(f"{name} {statistics.mean(r.cpu_ms[name] for r in runs):.1f}" for name in names) + " ms"
    return f"{split}, worker context switches {statistics.mean(r.switches['worker'] for r in runs):.0f}"


def closed_loop(
    make: Callable[[], tuple[Callable[[], None], Callable[[], None]]],
    seconds: float,
    processes: dict[str, int] | None = None,
) -> LoopRun:
    """8 threads each submitting one job and waiting for it, again and again: the jobs per second,
    and the CPU per job of ``processes`` (name -> pid) and of this process (the submitters)."""
    done = [0] * 8
    warmed = [0] * 8
    stop = time.perf_counter() + seconds

    def submitter(slot: int) -> None:
        once, close = make()
        try:
            once()  # its own warm-up: connections
            warmed[slot] = 1
            while time.perf_counter() < stop:
                once()
                done[slot] += 1
        finally:
            close()

    pids = processes or {}
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    switches_before = {name: context_switches(pid) for name, pid in pids.items()}
    own_before = sum(os.times()[:2])
    started = time.perf_counter()
    threads = [threading.Thread(target=submitter, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    spent = {name: cpu_s(pid) - before[name] for name, pid in pids.items()}
    switched = {name: context_switches(pid) - switches_before[name] for name, pid in pids.items()}
    spent["submitters"] = sum(os.times()[:2]) - own_before
    jobs = max(1, sum(done) + sum(warmed))
    return LoopRun(
        sum(done) / elapsed,
        {name: seconds_ * 1000 / jobs for name, seconds_ in spent.items()},
        {name: seconds_ / elapsed for name, seconds_ in spent.items()},
        {name: count / jobs for name, count in switched.items()},
    )


# --- 5. worker CPU per image; 6. Redis memory per job; round trips per variation --------------------
def cost(bench: Bench, pool: str, concurrency: int, jobs: int) -> None:
    env = bench.env()
    bench.fake.latency_s = 0.0
    with bench.worker(env, pool, concurrency) as worker, closing(bench.client(env)) as client:
        for model, kind, label in (
            ("gemini_3_image", "photo", "Gemini path, 1.65 MB PNG"),
            ("gemini_3_image", "solid", "Gemini path, tiny PNG"),
            ("offline_preview", "solid", "offline model"),
        ):
            bench.fake.image_kind = kind
            image_cpu(bench, worker, client, model, label, jobs)
        bench.fake.image_kind = "solid"
        round_trips(bench, client, env, concurrency)
    cpu = pinning_cpu()
    if cpu is not None:  # the same worker on one CPU, as IMAGEGEN_WORKER_CPU does
        bench.fake.image_kind = "photo"
        gemini_image_cpu(
            bench, bench.env(), pool, concurrency, cpu, "Gemini path, 1.65 MB PNG, pinned to one CPU", jobs
        )
        bench.fake.image_kind = "solid"
    with secure_fake(bench) as (secure, trust):
        label = "Gemini path over HTTPS (the real API's transport), 1.65 MB PNG"
        for pin in (None, cpu) if cpu is not None else (None,):
            secure_env = bench.env(GOOGLE_GEMINI_BASE_URL=secure.base_url, SSL_CERT_FILE=str(trust))
            shown = label if pin is None else f"{label}, pinned"
            gemini_image_cpu(bench, secure_env, pool, concurrency, pin, shown, jobs)
    memory(bench, pool, concurrency, jobs=4 * jobs)
    answer_memory(bench, pool, concurrency)
    decode_breakdown(bench)
    upload_breakdown(bench)


def gemini_image_cpu(
    bench: Bench, env: dict[str, str], pool: str, concurrency: int, cpu: int | None, label: str, jobs: int
) -> None:
    """``image_cpu`` of the Gemini path on a worker of its own, its threads on ``cpu`` if given."""
    with bench.worker(env, pool, concurrency) as worker, closing(bench.client(env)) as client:
        if cpu is not None:
            pin_threads(cpu, worker.pid)  # threads it starts later inherit it
        image_cpu(bench, worker, client, "gemini_3_image", label, jobs)


def image_cpu(bench: Bench, worker: WorkerProcess, client: ImageGenClient, model: str, label: str, jobs: int) -> None:
    """The worker's CPU (user + system, its idle rate subtracted) per image, jobs of 8 at L = 0."""
    pid = worker.pid
    run_jobs(client, node(model, 8), 2, 60)  # warm-up
    idle0, idle_started = cpu_s(pid), time.perf_counter()
    time.sleep(1.0)
    idle_rate = (cpu_s(pid) - idle0) / (time.perf_counter() - idle_started)
    times0, started = cpu_times(pid), time.perf_counter()
    results = run_jobs(client, node(model, 8), jobs, 120)
    wall = time.perf_counter() - started
    user, system = (after - before for after, before in zip(cpu_times(pid), times0, strict=True))
    busy = user + system - idle_rate * wall
    images = sum(len(result.images) for result in results)
    bench.say(
        f"  worker CPU per 1024x1024 image, {label}: {busy / images * 1000:.1f} ms "
        f"(system {system / images * 1000:.1f} of it; {images} images in {jobs} jobs of 8, L=0, "
        f"idle {idle_rate * 1000:.0f} ms/s subtracted)"
    )


@contextmanager
def secure_fake(bench: Bench) -> Iterator[tuple[FakeGemini, Path]]:
    """A second fake Gemini speaking HTTPS with a certificate from a throwaway CA, and the CA's
    file for the worker's ``SSL_CERT_FILE``."""
    import ssl

    import trustme  # the test extra, which make bench installs

    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    trust = bench.workdir / f"ca-{uuid.uuid4().hex[:6]}.pem"
    authority.cert_pem.write_to_path(str(trust))
    with FakeGemini(api_key=API_KEY, image_kind="photo", tls=context) as secure:
        yield secure, trust


def answer_memory(bench: Bench, pool: str, concurrency: int, jobs: int = 2) -> None:
    """The worker's peak RSS when 4K answers (26.5 MB PNGs, ~35 MB of JSON each) arrive together:
    ``jobs`` jobs of 8 at L = 1 s, with the answer gate at its default (worker/providers/answer_gate.py)
    and off."""
    default = Settings.model_fields["answer_memory_mb"].default
    big = node("gemini_3_image", 8)
    big["inputs"]["size"] = "4096x4096"
    bench.fake.image_kind = "photo"
    try:
        for limit in (default, 0):
            env = bench.env(IMAGEGEN_ANSWER_MEMORY_MB=str(limit))
            with bench.worker(env, pool, concurrency) as worker, closing(bench.client(env)) as client:
                bench.fake.latency_s = 0.0
                run_jobs(client, {**big, "inputs": {**big["inputs"], "variations": 1}}, 1, 300)  # warm-up
                before = rss_mib(worker.pid)
                bench.fake.latency_s = 1.0  # all of them answered together
                started = time.perf_counter()
                results = run_jobs(client, big, jobs, 300)
                wall = time.perf_counter() - started
                images = sum(len(result.images) for result in results)
                bench.say(
                    f"  worker peak RSS with {jobs * 8} answers of 4096x4096 arriving together, "
                    f"IMAGEGEN_ANSWER_MEMORY_MB={limit}{' (off)' if not limit else ''}: "
                    f"{peak_rss_mib(worker.pid):.0f} MiB (before {before:.0f}); "
                    f"{images}/{jobs * 8} images in {wall:.1f} s"
                )
    finally:
        bench.fake.image_kind, bench.fake.latency_s = "solid", 0.0


def memory(bench: Bench, pool: str, concurrency: int, jobs: int) -> None:
    """On a Redis of its own: the MEMORY USAGE of the keys finished jobs leave (value, key, and
    Redis's per-key overhead), and the growth of used_memory_dataset (used_memory itself moves
    with the connections' buffers, which idle connections give back)."""
    server = start_redis()
    try:
        env = {**bench.env(), "REDIS_URL": server.url}
        with bench.worker(env, pool, concurrency), closing(bench.client(env)) as client:
            run_jobs(client, node("offline_preview", 4), 5, 60)  # warm-up: scripts, bindings, pools
            raw = redis.Redis.from_url(server.url)
            time.sleep(0.5)
            before_keys = set(raw.scan_iter(count=1000))
            before = int(raw.info("memory")["used_memory_dataset"])
            results = run_jobs(client, node("offline_preview", 4), jobs, 120)
            time.sleep(0.5)
            after = int(raw.info("memory")["used_memory_dataset"])
            new_keys = [key for key in raw.scan_iter(count=1000) if key not in before_keys]
            sizes: dict[str, tuple[int, int]] = {}
            for key in new_keys:
                kind = _key_kind(key.decode())
                count, size = sizes.get(kind, (0, 0))
                sizes[kind] = (count + 1, size + (raw.memory_usage(key) or 0))
            usage = sum(size for _, size in sizes.values())
            raw.close()
    finally:
        server.stop()
    assert all(result.status == "succeeded" for result in results)
    log_bytes = sizes.get("imagegen:events", (0, 0))[1]
    bench.say(
        f"  Redis memory per finished 4-variation job after its event log's retention "
        f"(IMAGEGEN_EVENTS_RETENTION_S): {(usage - log_bytes) / jobs / 1024:.1f} KB; the event log "
        f"{log_bytes / jobs / 1024:.1f} KB more until then"
    )
    bench.say(
        f"  Redis memory per finished 4-variation job: {usage / jobs / 1024:.1f} KB (MEMORY USAGE; "
        f"used_memory_dataset +{(after - before) / jobs / 1024:.1f} KB) in {len(new_keys) / jobs:.1f} keys "
        f"({', '.join(f'{k} {n / jobs:g} x {b / max(n, 1) / 1024:.2f} KB' for k, (n, b) in sorted(sizes.items()))}; "
        f"{jobs} jobs)"
    )


def _key_kind(key: str) -> str:
    """``imagegen:events:<id>`` -> ``imagegen:events``; ``celery-task-meta-<id>`` -> ``celery-task-meta``
    (and the chord counters, ``celery-taskset-meta-<id>.c``)."""
    for prefix in ("celery-task-meta-", "celery-taskset-meta-"):
        if key.startswith(prefix):
            return prefix.rstrip("-")
    parts = key.split(":")
    return ":".join(parts[:2]) if len(parts) > 2 else parts[0]


def round_trips(bench: Bench, client: ImageGenClient, env: dict[str, str], concurrency: int) -> None:
    """Round trips to Redis per variation, from MONITOR: a MULTI..EXEC block or a script is one."""
    jobs, variations = 5, 8
    with bench.worker(env, "threads", concurrency, bare=True):
        sender = make_app(env["REDIS_URL"], env["BARE_CHORD_QUEUE"])
        submit_bare(sender, variations).get(timeout=60)
        for label, run in (
            ("ours", lambda: client.submit(node("offline_preview", variations)).wait(timeout=60)),
            ("bare chord", lambda: submit_bare(sender, variations).get(timeout=60)),
        ):
            idle = count_round_trips(bench.redis.url, lambda: time.sleep(1.0))
            busy_s = time.perf_counter()
            trips = count_round_trips(bench.redis.url, lambda: [run() for _ in range(jobs)])  # noqa: B023
            busy_s = time.perf_counter() - busy_s
            commands = trips[1] - idle[1] * busy_s
            per_variation = (trips[0] - idle[0] * busy_s) / (jobs * variations)
            bench.say(
                f"  Redis round trips per variation ({label}, jobs of {variations}, submit and wait included): "
                f"{per_variation:.1f} ({commands / (jobs * variations):.1f} commands)"
            )
        gc.collect()
        sender.close()


def count_round_trips(url: str, action: Callable[[], Any]) -> tuple[float, float]:
    """(round trips, commands) that MONITOR saw from every client while ``action`` ran
    (for an action that sleeps one second: the idle rate per second)."""
    events: list[tuple[str, str]] = []
    ready, stop = threading.Event(), threading.Event()

    def monitor() -> None:
        with redis.Redis.from_url(url).monitor() as feed:  # type: ignore[no-untyped-call]
            ready.set()
            for event in feed.listen():
                events.append((f"{event.get('client_address')}:{event.get('client_port')}", event["command"]))
                if stop.is_set() and event["command"].startswith("ECHO bench-monitor-end"):
                    return

    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    ready.wait(5)
    time.sleep(0.05)
    action()
    stop.set()
    redis.Redis.from_url(url).echo("bench-monitor-end")
    thread.join(10)
    trips = commands = 0
    in_multi: set[str] = set()
    for client, command in events:
        name = command.split(" ", 1)[0].upper()
        if client.startswith("lua") or name == "ECHO":
            continue  # inside a script (counted as the EVALSHA), or our end marker
        commands += 1
        if name == "MULTI":
            in_multi.add(client)
            trips += 1
        elif name == "EXEC":
            in_multi.discard(client)
        elif client not in in_multi:
            trips += 1
    return float(trips), float(commands)


def measure_in_process(bench: Bench, script: str, *args: str) -> list[dict[str, Any]]:
    """Run one of this folder's single-process measurements against the measured checkout; the
    JSON objects it prints, one per line."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=bench.root,
        env={**os.environ, "PYTHONPATH": str(bench.root)},
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def decode_breakdown(bench: Bench) -> None:
    """Stage by stage in a separate process, against a fake server in a third one."""
    with FakeGeminiProcess(image_kind="photo") as fake:
        [stages] = measure_in_process(bench, "decode_cost.py", "--base-url", fake.base_url)
    bench.say(
        f"  in one process, per {stages['png_bytes'] / 1e6:.2f} MB PNG: SDK decode (HTTP, JSON, base64, types) "
        f"{stages['decode_ms']:.1f} ms, reading the header {stages['verify_ms']:.2f} ms, sha256 "
        f"{stages['hash_ms']:.2f} ms, the worker's whole check (every chunk verified + sha256) "
        f"{stages['inspect_ms']:.2f} ms, upload (local disk) {stages['upload_ms']:.2f} ms"
    )
    bench.say(
        f"  in one process, a whole SDK call answered with a tiny PNG: {stages['call_ms']:.2f} ms; "
        f"{stages['call_plain_ms']:.2f} ms with the SDK's own `in` on its types (genai_lookup off)"
    )


def upload_breakdown(bench: Bench) -> None:
    """CPU and copies per upload of the same PNG through each backend's platform store, against the
    emulators (benchmarks/upload_cost.py), in a separate process."""
    rows = measure_in_process(bench, "upload_cost.py")
    bench.say(
        f"  upload of one {rows[0]['png_bytes'] / 1e6:.2f} MB PNG, CPU in the worker's process (emulators apart, "
        "plain HTTP): "
        + ", ".join(f"{r['backend']} {r['cpu_ms']:.2f} ms ({r['copies']:.1f} copies held)" for r in rows)
    )


# --- 7. a wide job: 16 variations at L = 2 s ----------------------------------------------------------
def wide_job(bench: Bench, pool: str, concurrency: int, runs: int) -> None:
    latency = 2.0
    for model, label, extra in (
        ("offline_preview", "offline", {"IMAGEGEN_OFFLINE_LATENCY_S": str(latency)}),
        ("gemini_3_image", "Gemini SDK", {}),
    ):
        env = bench.env(**extra)
        bench.fake.latency_s = 0.0
        with bench.worker(env, pool, concurrency), closing(bench.client(env)) as client:
            run_jobs(client, node(model, 4), 1, 60)  # warm-up
            bench.fake.latency_s = latency
            walls = []
            for _ in range(runs):
                started = time.perf_counter()
                [result] = run_jobs(client, node(model, 16), 1, 60)
                walls.append(time.perf_counter() - started)
                assert result.status == "succeeded", result.errors
        bench.say(
            f"  16 variations at L={latency:g} s, {label}: job wall / L {statistics.median(walls) / latency:.3f} "
            f"(median of {runs}, submit to result)"
        )
    bench.fake.latency_s = 0.0


@contextmanager
def closing(client: ImageGenClient) -> Iterator[ImageGenClient]:
    try:
        yield client
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose worker is measured")
    parser.add_argument("--pools", help="in-flight candidates, e.g. threads:256,gevent:256 (default: ours + gevent)")
    parser.add_argument("--only", help="comma-separated sections: per_job,cost,wide,in_flight,burst")
    args = parser.parse_args()
    settings = Settings()
    pool, concurrency = settings.worker_pool, settings.worker_concurrency
    if args.pools:
        candidates = [(p, int(c)) for p, c in (item.split(":") for item in args.pools.split(","))]
    else:
        candidates = [(pool, concurrency), ("gevent" if pool == "threads" else "threads", concurrency)]
    if importlib.util.find_spec("gevent") is None:  # pip install '.[bench]' (make bench does)
        print("gevent is not installed: its figures are skipped")
        candidates = [c for c in candidates if c[0] != "gevent"]
    latency = 5.0 if QUICK else 15.0
    sections = set((args.only or "per_job,cost,wide,in_flight,burst").split(","))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="imagegen-bench-") as workdir:
        server = start_redis()
        try:
            with FakeGeminiProcess(api_key=API_KEY) as fake:
                bench = Bench(args.root.resolve(), server, fake, Path(workdir))
                bench.say(f"imagegen figures: {bench.root}, {pool}x{concurrency}, {'quick' if QUICK else 'full'} mode")
                if "per_job" in sections:
                    bench.say(f"per job, against a bare Celery chord on the same Redis [{load()}]")
                    per_job(bench, pool, concurrency, runs=10 if QUICK else 25, seconds=3 if QUICK else 5)
                if "cost" in sections:
                    bench.say(f"cost per image and per job [{load()}]")
                    cost(bench, pool, concurrency, jobs=10 if QUICK else 25)
                if "wide" in sections:
                    bench.say(f"one wide job [{load()}]")
                    wide_job(bench, pool, concurrency, runs=2 if QUICK else 3)
                if "in_flight" in sections:
                    bench.say(f"generations in flight per worker process, Gemini SDK path, L={latency:g} s [{load()}]")
                    for candidate_pool, candidate_concurrency in candidates:
                        in_flight(bench, candidate_pool, candidate_concurrency, latency, 3 * latency)
                    in_flight_over_https(bench, pool, concurrency, latency, 3 * latency)
                if "burst" in sections:
                    top = Settings.model_fields["worker_concurrency"].metadata
                    ceiling = next((int(m.le) for m in top if getattr(m, "le", None)), 512)
                    bench.say(f"offline model at the largest allowed concurrency ({ceiling}) [{load()}]")
                    burst_pools = list(dict.fromkeys(candidate[0] for candidate in candidates))
                    for burst_pool in burst_pools[:1] if QUICK else burst_pools:
                        offline_burst(bench, burst_pool, ceiling, jobs=ceiling * 2 // 8, latency_s=0.5)
        finally:
            server.stop()
    bench.say(f"done in {time.perf_counter() - started:.0f} s [{load()}]")


if __name__ == "__main__":
    main()
