"""Redis refusing writes for seconds while a job's variations finish: far over ``maxmemory``
(OOM) and short of ``min-replicas-to-write`` (NOREPLICAS, what a failing-over master answers).

Before contract/result_backend.py and the broker patches of worker/consumer.py, the chord's
bookkeeping was dropped (the job ended ``lost`` at the deadline) and the worker exited when
kombu's unacked record or blocking pop was refused. Real Redis, real worker, one job.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from contract.queue import celery_config
from contract.redis_client import is_transient, redis_client
from contract.settings import Settings
from devtools.redis_server import RedisServer, start_redis
from producer.client import ImageGenClient
from tests.broker.conftest import wait_for_log
from tests.conftest import StartWorker
from tests.e2e.helpers import assert_images_on_disk


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = start_redis()  # this test's own: the fault must not touch the suite's Redis
    yield server
    server.stop()


@pytest.fixture
def job_env(job_env: dict[str, str], own_redis: RedisServer) -> dict[str, str]:
    return {**job_env, "REDIS_URL": own_redis.url}


def _refuse_writes(url: str, how: str) -> None:
    admin = redis.Redis.from_url(url)
    if how == "oom":
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) // 2)
    else:  # no replica here, so every write answers NOREPLICAS
        admin.config_set("min-replicas-to-write", 1)


def _take_writes(url: str) -> None:
    admin = redis.Redis.from_url(url)
    admin.config_set("maxmemory", 0)
    admin.config_set("min-replicas-to-write", 0)


@pytest.mark.parametrize("how", ["oom", "noreplicas"])
def test_a_job_finishing_while_redis_refuses_writes_succeeds(
    how: str,
    start_worker: StartWorker,
    client: ImageGenClient,
    offline_node: dict[str, Any],
    own_redis: RedisServer,
) -> None:
    worker = start_worker({"IMAGEGEN_OFFLINE_LATENCY_S": "2"})
    offline_node["inputs"]["variations"] = 2
    handle = client.submit(offline_node)
    wait_for_log(worker, "imagegen.generate_variation[", count=2)

    _refuse_writes(own_redis.url, how)  # the variations finish inside this window
    try:
        time.sleep(5)
    finally:
        _take_writes(own_redis.url)

    result = handle.wait(timeout=90)
    assert result.status == "succeeded" and len(result.images) == 2, result.errors
    assert_images_on_disk(result)
    assert worker.process is not None and worker.process.poll() is None, worker.log()[-3000:]
    assert "Unrecoverable error" not in worker.log()
    assert client.submit(offline_node).wait(timeout=60).status == "succeeded"  # it consumes again


def test_the_result_backend_waits_out_a_full_redis(own_redis: RedisServer, job_env: dict[str, str]) -> None:
    """Celery's own backend raised OutOfMemoryError at once: storing a result and running the
    chord's script now wait for memory (contract/result_backend.py)."""
    app = Celery("refusals")
    app.conf.update(celery_config(Settings(_env_file=None, redis_url=own_redis.url)))  # type: ignore[call-arg]
    backend = app.backend
    assert type(backend).__name__ == "ImageGenRedisBackend"
    _refuse_writes(own_redis.url, "oom")
    with pytest.raises(redis.OutOfMemoryError):
        redis.Redis.from_url(own_redis.url).set("probe", "1")  # the fault is real
    threading.Timer(2.0, _take_writes, args=(own_redis.url,)).start()

    backend.store_result("refusals-1", {"ok": True}, "SUCCESS")
    assert backend.get_task_meta("refusals-1")["result"] == {"ok": True}

    _refuse_writes(own_redis.url, "oom")
    threading.Timer(2.0, _take_writes, args=(own_redis.url,)).start()
    keys = [f"chord-{part}" for part in ("j", "t", "s", "d", "g", "c")]
    readycount, _, _, _ = backend._chord_part_return_script(keys=keys, args=["t1", "v", 1, 0, 60, 60, 10, "token"])
    assert readycount == 1


def test_a_job_store_script_runs_where_the_server_never_saw_it(own_redis: RedisServer) -> None:
    """A new master (a failover) or a restarted Redis has an empty script cache: EVALSHA answers
    NOSCRIPT, and the script runs by its text instead (contract.redis_client.FailoverSafeScript)."""
    client = redis_client(own_redis.url)
    increment = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert increment(keys=["counter"], args=[2]) == 2
    client.script_flush()
    assert increment(keys=["counter"], args=[3]) == 5


def _raised_while(error: Exception, handling: Exception) -> Exception:
    """``error`` as redis-py raises it while handling ``handling`` (its ``__context__``)."""
    try:
        try:
            raise handling
        except type(handling):
            raise error  # noqa: B904  # the implicit context is what redis-py leaves
    except type(error) as raised:
        return raised


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (redis.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
        (redis.ReadOnlyError("You can't write against a read only replica."), True),
        (redis.BusyLoadingError("Redis is loading the dataset in memory"), True),
        (redis.ResponseError("NOREPLICAS Not enough good replicas to write."), True),
        (redis.ResponseError("NOREPLICAS Not enough good replicas to write. script: 1f0e, on @user_script:3."), True),
        (
            redis.ResponseError(
                "Command # 1 (EVALSHA 3bea 2 imagegen:job:x ...) of pipeline caused error: "
                "NOREPLICAS Not enough good replicas to write. script: 3bea, on @user_script:3."
            ),
            True,
        ),
        (redis.ResponseError("Error running script (call to f_1): @user_script:3: -OOM command not allowed"), True),
        (redis.ConnectionError("Connection refused"), True),
        (redis.TimeoutError("Timeout reading from socket"), True),
        (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
        (
            redis.ResponseError("Error running script: @user_script:1: user_script:1: attempt to call a nil value"),
            False,
        ),
        (redis.exceptions.NoScriptError("No matching script. Please use EVAL."), False),
        # ConnectionError's subclasses, but a password or an ACL is as wrong on the next try.
        (redis.AuthenticationError("invalid username-password pair or user is disabled."), False),
        (redis.exceptions.AuthorizationError("NOPERM this user has no permissions"), False),
        (_raised_while(redis.ConnectionError("Error 1 connecting"), ssl.SSLCertVerificationError(1, "verify")), False),
        (_raised_while(redis.ConnectionError("Error 104 connecting"), ConnectionResetError(104, "reset")), True),
        (redis.ResponseError("ERR value is not an integer; the OOM killer is not involved"), False),
    ],
)
def test_which_redis_errors_are_waited_out(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


def test_a_chord_part_whose_reply_was_lost_still_claims_the_callback(
    own_redis: RedisServer, job_env: dict[str, str]
) -> None:
    """The retry of a chord part script that ran (its reply lost with the connection) finds the
    callback claimed by its own token, and still claims it: else no one would publish it."""
    app = Celery("claims")
    app.conf.update(celery_config(Settings(_env_file=None, redis_url=own_redis.url)))  # type: ignore[call-arg]
    backend = app.backend
    keys = [f"claims-{part}" for part in ("j", "t", "s", "d", "g", "c")]
    backend.client.set("claims-s", 1)  # a chord of one part
    first = backend._chord_part_return_script(keys=keys, args=["t1", "v", 1, 0, 60, 60, 10, "token-1"])
    again = backend._chord_part_return_script(keys=keys, args=["t1", "v", 1, 0, 60, 60, 10, "token-1"])
    other = backend._chord_part_return_script(keys=keys, args=["t1", "v", 1, 0, 60, 60, 10, "token-2"])
    assert (first[3], again[3], other[3]) == (1, 1, 0)  # a copy with its own token does not
