"""Broker settings and URL forms, without servers."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from contract.queue import ImageGenCelery, celery_config
from contract.redis_client import FailoverSafeRedis, SentinelConnection, SentinelURL, TransientRetry, redis_client
from contract.result_backend import RidesOutRedisFaults
from contract.settings import Settings, SettingsError

SENTINEL = "sentinel://:s%40cret@s1:26380,s2,[::1]:26381/imagegen/3"
BACKEND = "contract.result_backend:ImageGenRedisBackend+"  # Celery's backend, riding out Redis faults


@pytest.fixture(autouse=True)
def _defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings' own defaults, whatever the shell running the suite exports."""
    for name in ("REDIS_URL", "IMAGEGEN_BROKER_URL", "IMAGEGEN_QUEUE", "IMAGEGEN_VISIBILITY_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    for name in ("IMAGEGEN_REDELIVERY_SWEEP_S", "IMAGEGEN_TASK_TIME_LIMIT_S", "IMAGEGEN_RETRY_MAX_DELAY_S"):
        monkeypatch.delenv(name, raising=False)


def test_rabbitmq_broker_uses_a_quorum_queue_and_native_delayed_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_BROKER_URL", "amqp://u:p@rabbit:5672/imagegen")
    monkeypatch.setenv("IMAGEGEN_QUEUE", "jobs")
    config = celery_config(Settings())

    assert config["broker_url"] == "amqp://u:p@rabbit:5672/imagegen"
    assert config["result_backend"] == BACKEND + "redis://127.0.0.1:6379/0"  # Redis stays the result backend
    [queue] = config["task_queues"]
    assert (queue.name, queue.queue_arguments) == ("jobs", {"x-queue-type": "quorum"})
    assert queue.exchange.type == "topic"  # native delayed delivery does not work with direct exchanges
    assert config["broker_transport_options"] == {"confirm_publish": True}  # no visibility timeout: Redis-only
    assert config["broker_native_delayed_delivery_queue_type"] == "quorum"
    assert config["worker_detect_quorum_queues"] is True
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]


def test_redis_broker_config_is_unchanged_by_the_rabbitmq_option() -> None:
    config = celery_config(Settings())
    assert config["broker_url"] == "redis://127.0.0.1:6379/0"
    assert config["result_backend"] == BACKEND + config["broker_url"]
    assert "task_queues" not in config
    assert config["broker_transport_options"] == {
        "visibility_timeout": 900,
        "health_check_interval": 10,
        "unacked_restore_interval": 30,
        "unacked_restore_throttle": 1,
        "priority_steps": [0],  # one list per queue: the worker fetches with BLMOVE
    }


def test_default_visibility_timeout_outlives_the_longest_hold() -> None:
    settings = Settings()
    # countdown + waiting for a busy pool + its own run (docs/reliability.md)
    assert settings.visibility_timeout_s > settings.retry_max_delay_s + 2 * settings.task_time_limit_s
    assert settings.visibility_timeout_s + settings.redelivery_sweep_s <= 16 * 60  # resumes in minutes


def test_sentinel_url_for_broker_backend_and_job_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", SENTINEL)
    config = celery_config(Settings())
    kombu = "sentinel://:s%40cret@s1:26380/3;sentinel://:s%40cret@s2:26379/3;sentinel://:s%40cret@[::1]:26381/3"
    assert config["broker_url"] == kombu
    assert config["result_backend"] == "contract.result_backend:ImageGenSentinelBackend+" + kombu
    assert config["broker_transport_options"]["master_name"] == "imagegen"
    assert config["broker_transport_options"]["visibility_timeout"] == 900
    assert config["result_backend_transport_options"]["master_name"] == "imagegen"

    parsed = SentinelURL.parse(SENTINEL)
    assert parsed == SentinelURL((("s1", 26380), ("s2", 26379), ("::1", 26381)), "imagegen", 3, None, "s@cret")
    client = redis_client(SENTINEL)  # lazy: nothing connects yet
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"], client.connection_pool.service_name) == (3, "s@cret", "imagegen")
    assert client.connection_pool.connection_class is SentinelConnection  # a retry asks the sentinels again


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", SENTINEL, "unix:///run/redis.sock?db=3"])
def test_the_result_backend_is_celerys_riding_out_redis_faults(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    app = Celery("backend", set_as_current=False)
    app.conf.update(celery_config(Settings()))
    backend = app.backend  # lazy: nothing connects yet
    assert isinstance(backend, RidesOutRedisFaults)
    assert isinstance(backend.connparams["retry"], TransientRetry)
    assert isinstance(backend.client, FailoverSafeRedis)  # its chord scripts survive a failover


def test_unix_socket_url_keeps_its_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "unix:///run/redis.sock?db=3")
    config = celery_config(Settings())
    assert config["broker_url"] == "redis+socket:///run/redis.sock?virtual_host=3"  # kombu's spelling
    assert config["result_backend"] == BACKEND + "socket:///run/redis.sock?db=3"  # Celery's spelling
    assert redis_client("unix:///run/redis.sock?db=3").connection_pool.connection_kwargs["db"] == 3


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("IMAGEGEN_BROKER_URL", "kafka://k:9092", "IMAGEGEN_BROKER_URL: scheme 'kafka'"),
        ("REDIS_URL", "amqp://r:5672//", "REDIS_URL: scheme 'amqp'"),
        ("REDIS_URL", "sentinel://s1:26379", "names the master's service name"),
        ("REDIS_URL", "sentinel:///imagegen/0", "at least one sentinel"),
        ("REDIS_URL", "sentinel://s1:x/imagegen/0", "bad sentinel address"),
        ("REDIS_URL", "sentinel://s1/imagegen/zero", "database must be a number"),
    ],
)
def test_bad_broker_urls_fail_at_start_up(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        Settings()


@pytest.mark.parametrize(
    ("broker", "countdown", "sent"),
    [("amqp://r//", 0.3, 1), ("amqp://r//", 2.01, 3), ("amqp://r//", 5, 5), ("redis://r/0", 0.3, 0.3)],
)
def test_countdowns_are_whole_seconds_on_rabbitmq(
    monkeypatch: pytest.MonkeyPatch, broker: str, countdown: float, sent: float
) -> None:
    # Celery 5.7's native delayed delivery raises ValueError for 0 < countdown < 1
    # and truncates others (early delivery); rounding up avoids both.
    seen: dict[str, Any] = {}
    monkeypatch.setattr(Celery, "send_task", lambda self, *args, **kwargs: seen.update(kwargs))
    app = ImageGenCelery("t", set_as_current=False)
    app.conf.broker_url = broker
    app.send_task("x", countdown=countdown)
    assert seen["countdown"] == sent
