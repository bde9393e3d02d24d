"""Signed webhooks through the real path: real worker processes POST a job's
events to a real local HTTP receiver, which verifies them with the
``standardwebhooks`` library; retries, the same webhook-id per event, and the
delivery record the client reads."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import standardwebhooks

from contract.errors import NodeValidationError
from contract.webhooks import DeliveryStatus
from producer.client import ImageGenClient, JobConflict
from tests.conftest import StartWorker, request_keys
from tests.redis_scan import redis_dump
from tests.webhook_receiver import WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"webhook-test-key-0123456789abcdef").decode()
FAST_RETRIES = {
    "WEBHOOK_SECRET_T1": SECRET,
    "IMAGEGEN_WEBHOOK_RETRY_BASE_DELAY_S": "0.2",
    "IMAGEGEN_WEBHOOK_RETRY_MAX_DELAY_S": "0.5",
    "IMAGEGEN_WEBHOOK_TIMEOUT_S": "5",
}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


def verified(received: Any) -> dict[str, Any]:
    """The body, after the receiver-side check a tenant would run."""
    payload: dict[str, Any] = standardwebhooks.Webhook(SECRET).verify(received.body, received.headers)
    return payload


def settled(client: ImageGenClient, job_id: str, count: int, timeout: float = 30) -> list[DeliveryStatus]:
    """The job's deliveries once ``count`` of them are no longer pending."""
    deadline = time.monotonic() + timeout
    while True:
        deliveries = client.webhook_deliveries(job_id)
        if len([d for d in deliveries if d.state != "pending"]) >= count:
            return deliveries
        assert time.monotonic() < deadline, deliveries
        time.sleep(0.1)


def test_every_subscribed_event_arrives_signed(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], receiver: WebhookReceiver
) -> None:
    start_worker(FAST_RETRIES)
    offline_node["inputs"]["variations"] = 2
    webhook = {"url": receiver.url, "events": ["variation", "started"], "secret": "env:WEBHOOK_SECRET_T1"}
    result = client.submit(offline_node, job_id="hook-all", webhook=webhook).wait(timeout=60)

    arrived = receiver.wait_for(4)
    bodies = [verified(r) for r in arrived]  # raises unless the signature, id and timestamp check out
    assert sorted(b["type"] for b in bodies) == ["job.completed", "job.started", "job.variation", "job.variation"]
    assert all(r.path == "/hooks/imagegen?tenant=t1" for r in arrived)
    assert all(r.headers["webhook-signature"].startswith("v1,") for r in arrived)
    assert len({r.headers["webhook-id"] for r in arrived}) == 4  # one id per event
    [completed] = [b for b in bodies if b["type"] == "job.completed"]
    assert completed["data"] == result.model_dump(mode="json")
    assert {b["data"]["index"] for b in bodies if b["type"] == "job.variation"} == {0, 1}
    # A forged or altered body does not verify.
    forged = arrived[0].body.replace(b"job.", b"jab.")
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(forged, arrived[0].headers)

    deliveries = settled(client, "hook-all", 4)
    assert [(d.state, d.attempts, d.last_http_status) for d in deliveries] == [("delivered", 1, 204)] * 4
    assert {d.webhook_id for d in deliveries} == {r.headers["webhook-id"] for r in arrived}
    # The key is resolved in the worker: never in Redis (job record, messages, results, events).
    assert SECRET.encode() not in redis_dump(client.settings.redis_url)


def test_only_completed_by_default(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], receiver: WebhookReceiver
) -> None:
    start_worker(FAST_RETRIES)
    webhook = {"url": receiver.url, "secret": "env:WEBHOOK_SECRET_T1"}
    client.submit(offline_node, job_id="hook-default", webhook=webhook).wait(timeout=60)
    [delivery] = settled(client, "hook-default", 1)
    assert (delivery.event, delivery.state) == ("completed", "delivered")
    assert [verified(r)["type"] for r in receiver.received] == ["job.completed"]


def test_503_twice_then_delivered_on_the_third_attempt_with_the_same_id(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], receiver: WebhookReceiver
) -> None:
    receiver.answer(503, 503)
    worker = start_worker(FAST_RETRIES)
    webhook = {"url": receiver.url, "secret": "env:WEBHOOK_SECRET_T1"}
    client.submit(offline_node, job_id="hook-503", webhook=webhook).wait(timeout=60)

    arrived = receiver.wait_for(3)
    assert [r.status for r in arrived] == [503, 503, 204]
    assert len({r.headers["webhook-id"] for r in arrived}) == 1  # the receiver can dedupe on it
    assert len({r.body for r in arrived}) == 1  # the same event, the same body
    for attempt in arrived:
        verified(attempt)  # each attempt signed afresh (its own timestamp)
    [delivery] = settled(client, "hook-503", 1)
    assert (delivery.state, delivery.attempts, delivery.last_http_status) == ("delivered", 3, 204)
    assert worker.log().count("retrying in") == 2
    assert SECRET not in worker.log()


def test_a_400_is_not_retried(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], receiver: WebhookReceiver
) -> None:
    receiver.answer(400)
    start_worker(FAST_RETRIES)
    webhook = {"url": receiver.url, "secret": "env:WEBHOOK_SECRET_T1"}
    client.submit(offline_node, job_id="hook-400", webhook=webhook).wait(timeout=60)
    [delivery] = settled(client, "hook-400", 1)
    assert (delivery.state, delivery.attempts, delivery.last_http_status) == ("failed", 1, 400)
    time.sleep(1.5)  # a retry, if any, would have come by now (the countdown is at most 0.5 s)
    assert len(receiver.received) == 1


def test_retries_stop_at_the_attempts_setting(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], receiver: WebhookReceiver
) -> None:
    receiver.answer(500, 502, 503, 504)
    start_worker({**FAST_RETRIES, "IMAGEGEN_WEBHOOK_MAX_ATTEMPTS": "3"})
    webhook = {"url": receiver.url, "secret": "env:WEBHOOK_SECRET_T1"}
    client.submit(offline_node, job_id="hook-exhausted", webhook=webhook).wait(timeout=60)
    [delivery] = settled(client, "hook-exhausted", 1)
    assert (delivery.state, delivery.attempts, delivery.last_http_status) == ("failed", 3, 503)
    assert delivery.last_error is not None and "gave up after 3 attempt(s)" in delivery.last_error
    assert [r.status for r in receiver.received] == [500, 502, 503]


def test_a_refused_connection_is_retried_and_reported_as_refused(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any]
) -> None:
    # It was reported as "timeout: no answer within 10 s" (urllib3's NewConnectionError is a
    # subclass of its connect timeout), though the refusal came back at once.
    start_worker({**FAST_RETRIES, "IMAGEGEN_WEBHOOK_MAX_ATTEMPTS": "2"})
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once this socket closes
    webhook = {"url": f"http://127.0.0.1:{port}/hook", "secret": "env:WEBHOOK_SECRET_T1"}
    client.submit(offline_node, job_id="hook-refused", webhook=webhook).wait(timeout=60)
    [delivery] = settled(client, "hook-refused", 1)
    assert (delivery.state, delivery.attempts) == ("failed", 2)
    assert delivery.last_error is not None and "connection: refused" in delivery.last_error
    assert "timeout" not in delivery.last_error


def test_an_unresolvable_secret_is_refused_without_a_request(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], receiver: WebhookReceiver
) -> None:
    start_worker(FAST_RETRIES)
    webhook = {"url": receiver.url, "secret": "env:WEBHOOK_SECRET_MISSING"}
    client.submit(offline_node, job_id="hook-nosecret", webhook=webhook).wait(timeout=60)
    [delivery] = settled(client, "hook-nosecret", 1)
    assert delivery.state == "refused" and "secret reference" in (delivery.last_error or "")
    assert receiver.received == []


def test_the_webhook_is_part_of_the_job(
    client: ImageGenClient, offline_node: dict[str, Any], receiver: WebhookReceiver
) -> None:
    webhook = {"url": receiver.url, "secret": "env:WEBHOOK_SECRET_T1"}
    assert client.submit(offline_node, job_id="hook-identity", webhook=webhook).created
    # Same node, same webhook (the events list normalised): the same job.
    same = {**webhook, "events": ["completed", "completed"]}
    assert not client.submit(offline_node, job_id="hook-identity", webhook=same).created
    for other in ({**webhook, "url": receiver.url + "&x=1"}, {**webhook, "events": ["started"]}, None):
        with pytest.raises(JobConflict, match="different node or webhook"):
            client.submit(offline_node, job_id="hook-identity", webhook=other)
    stored = client.records.client.hget("imagegen:job:hook-identity", "webhook")
    assert json.loads(stored or b"{}") == {
        "url": receiver.url,
        "events": ["completed"],
        "secret": "env:WEBHOOK_SECRET_T1",
    }


def test_a_raw_key_instead_of_a_reference_is_refused_and_not_echoed(
    client: ImageGenClient, offline_node: dict[str, Any], receiver: WebhookReceiver
) -> None:
    before = request_keys(client.records.client)
    with pytest.raises(NodeValidationError) as refused:
        client.submit(offline_node, webhook={"url": receiver.url, "secret": SECRET, "events": ["everything"]})
    fields = {p.field for p in refused.value.problems}
    assert fields == {"webhook.secret", "webhook.events"}
    assert SECRET not in str(refused.value) and SECRET[6:20] not in str(refused.value)
    assert not request_keys(client.records.client) - before  # refused before anything was written
