"""Prometheus metrics of one worker process: outcomes operators alert on.

Flower counts Celery's task events, and there every variation, job and webhook
delivery ends ``task-succeeded``: outcomes are returned as records so the chord
always runs, never raised. These count the outcomes themselves, at
``:IMAGEGEN_METRICS_PORT/metrics`` (0, the default, serves nothing: several
workers share a test machine; the Kubernetes ConfigMap sets it).

Labels are bounded: a model is a catalog name, an outcome one of a fixed list,
a queue the configured one. Never a tenant, a job id or a message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from contract.queue import is_amqp
from contract.redis_client import is_sentinel
from contract.settings import Settings
from worker.providers.answer_gate import process_gate

log = logging.getLogger(__name__)

VARIATIONS = Counter(
    "imagegen_variations",
    "Variations finished, by model and outcome: succeeded, or the error kind of the record "
    "(transient_exhausted, permanent, blocked, storage, timeout, canceled); a variation whose job's prompt "
    "step failed counts with the step's error kind",
    ["model", "outcome"],
)
VARIATION_SECONDS = Histogram(
    "imagegen_variation_seconds",
    "Time from a variation's first attempt to its stored image, by model (retries included)",
    ["model"],
    buckets=(1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600),
)
RETRIES = Counter(
    "imagegen_variation_retries",
    "Variation attempts put off to later, by model and reason: transient (a failure that is "
    "retried), quota (waiting for the shared provider quota: IMAGEGEN_RATE_LIMITS) or copy (a copy "
    "of the message, delivered while another execution holds the variation's lease, looks again later)",
    ["model", "reason"],
)
PROMPT_STEP_RETRIES = Counter(
    "imagegen_prompt_step_retries",
    "Prompt-step attempts put off to later, by text model and reason: transient or quota (as "
    "imagegen_variation_retries for the image calls)",
    ["text_model", "reason"],
)
JOBS = Counter("imagegen_jobs", "Jobs finished by this worker, by status", ["status"])
JOBS_LOST = Counter(
    "imagegen_jobs_lost", "Jobs this worker's sweep ended as lost: no progress within IMAGEGEN_JOB_DEADLINE_S"
)
WEBHOOKS = Counter(
    "imagegen_webhook_deliveries",
    "Webhook delivery attempts, by outcome: delivered, retried, failed (gave up or not retried), "
    "refused (the URL, its address or the secret reference was refused)",
    ["outcome"],
)


class QueueLength(Collector):
    """``imagegen_queue_messages``: messages waiting in the Redis broker's queue (LLEN), read at
    each scrape; no sample when Redis does not answer. What KEDA scales on, for dashboards."""

    def __init__(self, url: str, queue: str):
        self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "imagegen_queue_messages", "Messages waiting in the broker's queue (Redis broker)", labels=["queue"]
        )
        try:
            family.add_metric([self._queue], float(self._client.llen(self._queue)))
        except (redis.RedisError, OSError) as exc:
            log.debug("queue length not read: %s", type(exc).__name__)
        yield family


class AnswerMemory(Collector):
    """The answer gate's state (worker/providers/answer_gate.py), read at each scrape: how much of
    the providers' answers the process holds now and at most, and how many waited their turn.
    No samples when the gate is off (IMAGEGEN_ANSWER_MEMORY_MB=0)."""

    def __init__(self, settings: Settings):
        self._gate = process_gate(settings.answer_memory_mb)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        gate = self._gate
        held = GaugeMetricFamily(
            "imagegen_answer_memory_bytes", "Image answers being read, decoded or stored, by estimated size"
        )
        peak = GaugeMetricFamily(
            "imagegen_answer_memory_peak_bytes",
            "The most imagegen_answer_memory_bytes has been (IMAGEGEN_ANSWER_MEMORY_MB)",
        )
        waits = CounterMetricFamily(
            "imagegen_answer_memory_waits", "Image answers that waited for IMAGEGEN_ANSWER_MEMORY_MB before being read"
        )
        if gate is not None:
            stats = gate.stats()
            held.add_metric([], stats.held_bytes)
            peak.add_metric([], stats.peak_bytes)
            waits.add_metric([], stats.waits)
        yield from (held, peak, waits)


def serve(settings: Settings) -> bool:
    """Start the metrics endpoint in this process if a port is set; False when not served."""
    if not settings.metrics_port:
        return False
    if settings.worker_pool == "prefork":
        # Each child would count in its own registry, which this endpoint cannot see.
        log.warning("IMAGEGEN_METRICS_PORT is set, but the prefork pool is not measured: no metrics endpoint")
        return False
    try:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    except OSError as exc:  # Celery swallows a start-up hook's exception: say it here
        log.error(
            "no metrics endpoint: cannot listen on %s:%d (IMAGEGEN_METRICS_HOST/PORT): %s",
            settings.metrics_host,
            settings.metrics_port,
            exc.strerror or exc,
        )
        return False
    url = settings.broker_url or settings.redis_url
    if not is_amqp(url) and not is_sentinel(url):
        REGISTRY.register(QueueLength(url, settings.queue))
    REGISTRY.register(AnswerMemory(settings))
    log.info("metrics at http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    return True


def variation_finished(model: str, outcome: str, seconds: float | None) -> None:
    VARIATIONS.labels(model, outcome).inc()
    if outcome == "succeeded" and seconds is not None:
        VARIATION_SECONDS.labels(model).observe(seconds)
