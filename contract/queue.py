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

# Every key kind has its own prefix, and job ids (contract/job_ids.py) contain
# no ":" and no "@": no job id can name another kind's key or another job's.
KEY_PREFIX = "imagegen"


def job_key(job_id: str) -> str:
    """Hash with the job's state, counts, run number and node fingerprint (no prompt, no secrets)."""
    return f"{KEY_PREFIX}:job:{job_id}"


def dispatch_key(job_id: str, run: int) -> str:
    """SET NX guard: a redelivered job task must not start a second chord for the same run."""
    return f"{KEY_PREFIX}:dispatch:{job_id}@{run}"


def progress_key() -> str:
    """Sorted set: unfinished job id -> time of its last progress (the lost-job sweep reads it)."""
    return f"{KEY_PREFIX}:progress"


def job_task_id(job_id: str, run: int) -> str:
    """The Celery task id of one run of a job; its result document lives under this id.
    "@" never occurs in job ids nor in Celery's own uuids, so these ids are the jobs'."""
    return f"{job_id}@{run}"


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
        # Off: extended results copy every task's arguments into the backend (the prompt
        # once per variation) and nothing reads them; Flower reads events, not the backend.
        "result_extended": False,
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
