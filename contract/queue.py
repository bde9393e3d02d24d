"""How producer and worker meet: task names, Redis keys, Celery settings.

The producer sends tasks by name, so it never imports the worker (nor its
provider SDKs); both build Celery's configuration from the same function.
"""

from __future__ import annotations

from typing import Any

from contract.settings import Settings

RUN_JOB = "imagegen.run_job"
GENERATE_VARIATION = "imagegen.generate_variation"
FINALIZE = "imagegen.finalize"
SIGN_URL = "imagegen.sign_url"  # a fresh signed URL for a stored image (signed URLs expire)

KEY_PREFIX = "imagegen"


def job_key(job_id: str) -> str:
    """Hash with the job's state, counts and timestamps (no prompt, no secrets)."""
    return f"{KEY_PREFIX}:job:{job_id}"


def dispatch_key(job_id: str) -> str:
    """SET NX guard: a redelivered job task must not start a second chord."""
    return f"{KEY_PREFIX}:job:{job_id}:dispatched"


def celery_config(settings: Settings) -> dict[str, Any]:
    transport = {
        # An unacked message older than this is redelivered; Settings checks
        # that it outlives the time limit plus the longest retry countdown.
        "visibility_timeout": settings.visibility_timeout_s,
        "health_check_interval": 10,
    }
    redelivery = {"unacked_restore_interval": settings.redelivery_sweep_s, "unacked_restore_throttle": 1}
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        "broker_transport_options": {**transport, **redelivery},
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "redis_backend_health_check_interval": 10,
        "result_backend_always_retry": True,
        "result_expires": settings.result_ttl_s,
        "result_extended": True,
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
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_deduplicate_successful_tasks": True,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        "task_track_started": True,
        # Flower needs events from workers and "sent" events from producers.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_pool": settings.worker_pool,
        "worker_concurrency": settings.worker_concurrency,
        "worker_hijack_root_logger": False,
    }
