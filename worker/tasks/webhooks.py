"""Deliver one job event to the job's webhook, signed (Standard Webhooks).

``contract.events.announce`` enqueues one delivery per subscribed event; this
task reads the event from the job's stream by id (no result document in the
broker; a ``completed`` event's document from the result backend) and the
webhook from the job's record, and checks it again (the message may bypass the
producer: its URL must pass the rules, its host is resolved and every address
checked, and the POST goes to that address: worker/webhook_post.py), resolves
the signing key from its reference here in the worker, and POSTs
``{"type": "job.<event>", "timestamp", "data"}`` with the
``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers. The
message names only the job, run and event: the webhook is the job record's.

Every attempt of one event carries the same ``webhook-id`` (receivers dedupe on
it) and a fresh timestamp and signature. 5xx, 408, 429, timeouts and dropped
connections are retried as Celery retries with an exponential countdown
(worker/retry.py) up to ``IMAGEGEN_WEBHOOK_MAX_ATTEMPTS``; other answers are
final. The outcome of every attempt is recorded on the job
(``imagegen:webhook:<job_id>``, ``ImageGenClient.webhook_deliveries``). The
key, the URL's path and query never reach a log line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import standardwebhooks
from celery import Task

from contract.errors import NodeValidationError
from contract.events import JobEvents
from contract.job_ids import check_job_id
from contract.queue import job_key
from contract.result_backend import run_document
from contract.settings import Settings, get_settings
from contract.tenancy import caller_id, check_tenant_refs
from contract.webhooks import (
    DELIVER_WEBHOOK,
    DeliveryLog,
    DeliveryState,
    DeliveryStatus,
    ResolverUnavailable,
    Webhook,
    check_webhook_url,
    public_addresses,
    webhook_message_id,
)
from contract.work import WebhookDelivery
from worker import metrics
from worker.celery_app import app
from worker.errors import TransientError
from worker.retry import RetryPolicy
from worker.secrets import resolve_secret
from worker.state import job_records
from worker.webhook_post import PostOutcome, post_pinned

log = logging.getLogger(__name__)
# A delivery's recorded state -> its metric outcome (worker/metrics.py): "pending" after an
# attempt means it is retried.
WEBHOOK_OUTCOMES: dict[DeliveryState, str] = {
    "pending": "retried",
    "delivered": "delivered",
    "failed": "failed",
    "refused": "refused",
}


def _policy(settings: Settings) -> RetryPolicy:
    attempts = settings.webhook_max_attempts
    return RetryPolicy(
        max_retries=attempts - 1,
        base_delay_s=settings.webhook_retry_base_delay_s,
        # A waiting retry is an unacked message on a Redis broker: the visibility timeout is
        # checked against IMAGEGEN_RETRY_MAX_DELAY_S, so no countdown may exceed it.
        max_delay_s=min(settings.webhook_retry_max_delay_s, settings.retry_max_delay_s),
        max_total_s=attempts * max(settings.webhook_retry_max_delay_s, settings.webhook_timeout_s),
    )


@app.task(name=DELIVER_WEBHOOK, bind=True, max_retries=None, pydantic=True, ignore_result=True)
def deliver_webhook(self: Task, delivery: WebhookDelivery) -> None:
    settings = get_settings()
    records = job_records()
    deliveries = DeliveryLog(records.client, settings.result_ttl_s)
    attempt = self.request.retries + 1
    first_attempt_at = delivery.first_attempt_at or time.time()
    message_id = webhook_message_id(delivery.job_id, delivery.run, delivery.event, delivery.event_id)

    def note(state: DeliveryState, http_status: int | None = None, error: str | None = None) -> None:
        status = DeliveryStatus(
            event_id=delivery.event_id,
            event=delivery.event,
            run=delivery.run,
            webhook_id=message_id,
            state=state,
            attempts=attempt,
            last_http_status=http_status,
            last_error=error,
            updated_at=datetime.now(UTC),
        )
        deliveries.record(delivery.job_id, status)
        metrics.WEBHOOKS.labels(WEBHOOK_OUTCOMES[state]).inc()

    try:
        check_job_id(delivery.job_id)  # again here: the message may bypass the producer
    except NodeValidationError:
        log.warning("webhook delivery refused: not a job id")
        return None
    # Only to the webhook the job was submitted with (the message names none: its URL may carry
    # a token, and task arguments show in Flower), and only if its URL passes the rules now.
    stored = records.client.hget(job_key(delivery.job_id), "webhook")
    if stored is None:
        log.warning("webhook delivery for job %s refused: the job has no webhook", delivery.job_id[:200])
        note("refused", error="the job has no webhook (submitted without one, or its record expired)")
        return None
    webhook = Webhook.model_validate_json(stored)
    where = _host(webhook.url)
    try:
        check_webhook_url(webhook.url, settings)
        address = public_addresses(webhook.url, settings)[0]  # resolved once; POST pinned to it
    except NodeValidationError as exc:
        reason = "; ".join(p.message for p in exc.problems)
        log.warning("webhook for job %s refused (%s): %s", delivery.job_id, where, reason)
        note("refused", error=reason)
        return None
    except ResolverUnavailable as exc:
        return _again(self, delivery, first_attempt_at, attempt, note, PostOutcome(None, f"dns: {exc}"))

    event = JobEvents(records.client, settings.result_ttl_s, settings.events_max_len).get(
        delivery.job_id, delivery.event_id
    )
    if event is None or event.event != delivery.event or event.run != delivery.run:
        note("failed", error="the event is no longer in the job's event log (trimmed or expired)")
        return None

    try:
        check_tenant_refs(delivery.job_id, {"webhook.secret": webhook.secret}, settings)
    except NodeValidationError as exc:
        log.warning("webhook for job %s refused: %s", delivery.job_id, exc.problems[0].message)
        note("refused", error=exc.problems[0].message)
        return None
    try:
        signer = standardwebhooks.Webhook(resolve_secret(webhook.secret, settings))
    except TransientError as exc:
        return _again(self, delivery, first_attempt_at, attempt, note, PostOutcome(None, f"secret: {exc}"))
    except Exception:  # unresolvable, not allowed, or not a whsec_<base64> key: the value is never shown
        log.warning("webhook for job %s refused: its secret reference gives no usable key", delivery.job_id)
        note("refused", error="the secret reference could not be resolved to a whsec_<base64> signing key")
        return None

    data = event.data
    if event.event == "completed":  # the log keeps the outline; the receiver gets the document
        data = run_document(app, delivery.job_id, delivery.run) or data
    body = json.dumps(
        {
            "type": f"job.{event.event}",
            "timestamp": datetime.fromtimestamp(event.timestamp_ms / 1000, UTC).isoformat(),
            # A tenant's receiver sees its own job id, as the HTTP API shows it (contract/tenancy.py).
            "data": {**data, "job_id": caller_id(delivery.job_id)} if "job_id" in data else data,
        },
        separators=(",", ":"),
    )
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "user-agent": "imagegen-webhooks/1",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signer.sign(message_id, now, body),
    }
    outcome = post_pinned(webhook.url, address, body.encode(), headers, settings.webhook_timeout_s)
    if outcome.delivered:
        log.info("webhook for job %s %s delivered to %s (attempt %d)", delivery.job_id, event.event, where, attempt)
        note("delivered", outcome.status)
        return None
    if outcome.retryable:
        return _again(self, delivery, first_attempt_at, attempt, note, outcome)
    why = outcome.error or f"HTTP {outcome.status}, not retried"
    log.warning("webhook for job %s %s to %s failed: %s", delivery.job_id, event.event, where, why)
    note("failed", outcome.status, why)
    return None


def _again(
    task: Task,
    delivery: WebhookDelivery,
    first_attempt_at: float,
    attempt: int,
    note: Callable[..., None],
    outcome: PostOutcome,
) -> None:
    """Retry with backoff while the policy allows, else record the delivery as failed."""
    policy = _policy(get_settings())
    retries = attempt - 1
    # The receiver's Retry-After is honoured up to the ceiling (a waiting retry is an unacked message).
    server_delay = None if outcome.retry_after_s is None else min(outcome.retry_after_s, policy.max_delay_s)
    countdown = policy.countdown(retries, server_delay)
    refusal = policy.refusal(retries, countdown, time.time() - first_attempt_at)
    why = outcome.error or f"HTTP {outcome.status}"
    if refusal is not None:
        log.warning("webhook for job %s %s failed: %s; gave up (%s)", delivery.job_id, delivery.event, why, refusal)
        note("failed", outcome.status, f"{why}; gave up after {attempt} attempt(s) ({refusal})")
        return None
    log.info(
        "webhook for job %s %s attempt %d: %s; retrying in %.1f s",
        delivery.job_id,
        delivery.event,
        attempt,
        why,
        countdown,
    )
    note("pending", outcome.status, why)
    payload = delivery.model_copy(update={"first_attempt_at": first_attempt_at}).model_dump(mode="json")
    raise task.retry(countdown=countdown, args=(payload,), kwargs={})


def _host(url: str) -> str:
    """What a log line may say about the URL: its host (the path and query may carry a token)."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"
