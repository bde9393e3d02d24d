"""How producer and worker meet: task names, Redis keys, Celery settings.

The producer sends tasks by name, so it never imports the worker (nor its
provider SDKs); both build Celery's configuration from the same function.
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from contract import broker_clients
from contract.redis_client import SentinelURL, is_sentinel
from contract.settings import Settings

broker_clients.install()  # kombu's Redis channel keeps one client (contract/broker_clients.py)

RUN_JOB = "imagegen.run_job"
GENERATE_VARIATION = "imagegen.generate_variation"
FINALIZE = "imagegen.finalize"
SIGN_URL = "imagegen.sign_url"  # a fresh signed URL for a stored image (signed URLs expire)
RUN_JOB_FROM_UPSTREAM = "imagegen.run_job_from_upstream"  # a chain's link: upstream value -> the job
UPSTREAM_FAILED = "imagegen.upstream_failed"  # the chain's errback: the upstream task failed
PROMPT_STEP = "imagegen.prompt_step"  # the job's text step before the variations

# Every key kind has its own prefix, and job ids (contract/job_ids.py) contain
# no ":" and no "@": no job id can name another kind's key or another job's.
KEY_PREFIX = "imagegen"


def job_key(job_id: str) -> str:
    """Hash with the job's state, counts, run number and node fingerprint (no prompt, no secrets)."""
    return f"{KEY_PREFIX}:job:{job_id}"


def dispatch_key(job_id: str, run: int) -> str:
    """SET NX guard: a redelivered job task must not start a second chord for the same run."""
    return f"{KEY_PREFIX}:dispatch:{job_id}@{run}"


def prompt_step_key(job_id: str, run: int) -> str:
    """The prompt step's guard: claimed ("pending:<deadline>:<task id>") from its text call until it
    has published the run's chord (or its failure), then "done" (contract/jobs.py ``_BEGIN_PROMPT_STEP``)."""
    return f"{KEY_PREFIX}:promptstep:{job_id}@{run}"


def progress_key() -> str:
    """Sorted set: unfinished job id -> time of its last progress (the lost-job sweep reads it)."""
    return f"{KEY_PREFIX}:progress"


def job_task_id(job_id: str, run: int) -> str:
    """The Celery task id of one run of a job; its result document lives under this id.
    "@" never occurs in job ids nor in Celery's own uuids, so these ids are the jobs'."""
    return f"{job_id}@{run}"


# A sign request's result holds a bearer URL. The client reads it at once and deletes it; what a
# client that died in between, or a worker that signed in the moment after its caller's deadline,
# leaves behind expires after this, not with job documents (IMAGEGEN_RESULT_TTL_S, 7 days).
SIGN_RESULT_TTL_S = 60
SIGN_TASK_PREFIX = "sign:"  # ":" never occurs in job ids (so in job task ids) nor in Celery's uuids


def sign_task_id() -> str:
    """A new sign request's Celery task id: the result backend keeps its result SIGN_RESULT_TTL_S."""
    return f"{SIGN_TASK_PREFIX}{uuid.uuid4()}"


def is_amqp(url: str) -> bool:
    return url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")


def _kombu_redis(url: str, for_backend: bool) -> tuple[str, dict[str, Any]]:
    """REDIS_URL in the form Celery wants: sentinel:// becomes kombu's list plus ``master_name``;
    unix:///path?db=N becomes ``redis+socket://`` (kombu's broker spells the database ``virtual_host``)."""
    if is_sentinel(url):
        parsed = SentinelURL.parse(url)
        return parsed.kombu_url(), parsed.transport_options()
    if url.startswith("unix://"):
        socket = "redis+socket://" + url[len("unix://") :]
        return (socket if for_backend else re.sub(r"([?&])db=", r"\1virtual_host=", socket)), {}
    return url, {}


def _broker_config(settings: Settings) -> dict[str, Any]:
    broker = settings.broker
    if is_amqp(broker):
        # RabbitMQ: a replicated quorum queue; the broker itself requeues the unacked
        # messages of a consumer whose connection drops (no visibility timeout), and a
        # countdown waits in the broker (native delayed delivery, which needs a topic
        # exchange), not unacked in a worker. Publisher confirms: send_task returns once
        # RabbitMQ has the message.
        exchange = Exchange(settings.queue, type="topic")  # type: ignore[no-untyped-call]
        queue = Queue(  # type: ignore[no-untyped-call]
            settings.queue, exchange, routing_key=settings.queue, queue_arguments={"x-queue-type": "quorum"}
        )
        return {
            "broker_url": broker,
            "broker_transport_options": {"confirm_publish": True},
            "task_queues": [queue],
            "task_default_exchange": settings.queue,
            "task_default_exchange_type": "topic",
            "task_default_routing_key": settings.queue,
            "broker_native_delayed_delivery_queue_type": "quorum",
            "worker_detect_quorum_queues": True,  # per-consumer prefetch: quorum queues have no global QoS
        }
    url, sentinel = _kombu_redis(broker, for_backend=False)
    transport = {
        # An unacked message older than this is redelivered; Settings checks
        # that it outlives the time limit plus the longest retry countdown.
        "visibility_timeout": settings.visibility_timeout_s,
        "health_check_interval": 10,
        # One Redis list per queue (no priorities are used): the worker then takes a message
        # with BLMOVE into a list of its own instead of BRPOP (worker/reliable_fetch.py).
        "priority_steps": [0],
    }
    redelivery = {"unacked_restore_interval": settings.redelivery_sweep_s, "unacked_restore_throttle": 1}
    return {"broker_url": url, "broker_transport_options": {**transport, **redelivery, **sentinel}}


def result_backend_url(redis_url: str) -> str:
    """``result_backend`` for REDIS_URL: Celery's Redis backend classes made to ride out a full,
    restarting or failing-over Redis (contract/result_backend.py), in Celery's
    ``module:Class+scheme://`` form."""
    url, _ = _kombu_redis(redis_url, for_backend=True)
    if is_sentinel(redis_url):
        return f"contract.result_backend:ImageGenSentinelBackend+{url}"
    return f"contract.result_backend:ImageGenRedisBackend+{url.removeprefix('redis+')}"  # redis+socket://


def celery_config(settings: Settings) -> dict[str, Any]:
    _, sentinel = _kombu_redis(settings.redis_url, for_backend=True)
    return {
        **_broker_config(settings),
        "result_backend": result_backend_url(settings.redis_url),
        "result_backend_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            "health_check_interval": 10,
            **sentinel,
        },
        "broker_connection_retry_on_startup": True,
        "redis_backend_health_check_interval": 10,
        "result_backend_always_retry": True,
        # Sized from the concurrency (Settings.pool_size): redis-py 8 caps a pool at 100
        # connections and raises MaxConnectionsError past it. The worker sizes the broker's
        # pools too (worker/celery_app.py); a producer keeps kombu's, whose limit is global
        # to a process that may hold other Celery apps.
        "redis_max_connections": settings.pool_size,
        "result_expires": settings.result_ttl_s,
        # Off: extended results copy every task's arguments into the backend (the prompt
        # once per variation) and nothing reads them; Flower reads events, not the backend.
        "result_extended": False,
        "result_compression": None if settings.result_compression == "none" else settings.result_compression,
        "result_backend_thread_safe": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.queue,
        "task_routes": {"imagegen.*": {"queue": settings.queue}},
        # Reliability: a task is acked after it ran; a lost worker requeues it.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Off: a running generation keeps going through a broker blip (the threads pool cannot
        # cancel anyway); late acks and deduplication of succeeded tasks cover the redelivery.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Publishing (a retry's countdown, the chord) waits out a Redis restart or failover:
        # up to ~40 s instead of Celery's default ~0.6 s, after which the task itself fails.
        "task_publish_retry_policy": {
            "max_retries": 12,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 5,
        },
        "worker_deduplicate_successful_tasks": True,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        # Off: a STARTED state is two more round trips per task and nothing reads it (the job
        # record says "running"; Flower shows started tasks from the worker's events).
        "task_track_started": False,
        # Flower builds its task list from the workers' events (received, started, succeeded,
        # retried). "sent" events would only add a PENDING row per queued message, one more
        # publish per task: the queue's length (Flower's broker view, KEDA) says the same.
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "worker_pool": settings.worker_pool,
        "worker_concurrency": settings.worker_concurrency,
        "worker_hijack_root_logger": False,
    }


class ImageGenCelery(Celery):  # type: ignore[misc]  # Celery ships no type hints
    """Celery, with countdowns rounded up to whole seconds on RabbitMQ.

    Native delayed delivery routes a countdown by its whole seconds, and Celery 5.7
    raises ValueError for one between 0 and 1 s (a jittered retry or a booked quota
    slot can be); rounding up never delivers early."""

    def send_task(self, *args: Any, **kwargs: Any) -> Any:
        countdown = kwargs.get("countdown")
        if countdown and countdown > 0 and is_amqp(str(self.conf.broker_url)):
            kwargs["countdown"] = math.ceil(countdown)
        return super().send_task(*args, **kwargs)
