"""The chord a run publishes is the one Celery's canvas would publish, message for message.

worker/tasks/dispatch.py sends the chord through Celery's own calls instead of the canvas
(which spent twice the CPU on objects a worker never reads). This sends one chord each way to
a real Redis and compares what reached the queue and the result backend, ids aside: a Celery
upgrade that changes the chord's protocol fails here, not in production."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from celery import Celery, chord

import worker.tasks.dispatch as dispatch
from contract.queue import FINALIZE, GENERATE_VARIATION, ImageGenCelery, celery_config
from contract.settings import Settings
from contract.work import JobSummary, VariationWork
from worker.celery_app import _not_watched

NOW = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)


@pytest.fixture
def app(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """The worker's Celery configuration on this test's Redis and queue."""
    test_app = ImageGenCelery("dispatch-test", set_as_current=False)
    test_app.conf.update(celery_config(settings))
    test_app.backend.add_pending_result = _not_watched  # as in a worker (no result subscriptions)
    monkeypatch.setattr(dispatch, "app", test_app)
    yield test_app
    test_app.close()


def the_run(variations: int) -> tuple[list[VariationWork], JobSummary]:
    works = [
        VariationWork(
            job_id="job-7", run=2, index=i, prompt="a red fox", model="offline_preview", size="1024x1024", seed=i
        )
        for i in range(variations)
    ]
    summary = JobSummary(
        job_id="job-7", run=2, name="fox", model="offline_preview", size="1024x1024", variations=variations,
        submitted_at=NOW, started_at=NOW, original_prompt="a red fox",
    )  # fmt: skip
    return works, summary


def canvas_dispatch(app: Celery, works: list[VariationWork], summary: JobSummary, result_id: str) -> None:
    """The chord as the canvas sends it (what dispatch.py did before)."""
    header = [
        app.signature(
            GENERATE_VARIATION,
            args=(w.model_dump(mode="json"),),
            ignore_result=True,
            argsrepr=f"(job {w.job_id} run {w.run} variation {w.index})",
        )
        for w in works
    ]
    body = app.signature(
        FINALIZE,
        args=(summary.model_dump(mode="json"),),
        argsrepr=f"(<{len(header)} variation records>, job {summary.job_id} run {summary.run})",
    )
    sent = chord(header, body)
    sent.freeze(result_id)
    sent.delay()


def published(settings: Settings, before: set[str]) -> dict[str, Any]:
    """What one dispatch left in Redis (chord keys not in ``before``: the suite shares its Redis),
    with every generated id named by its first appearance."""
    client = redis.Redis.from_url(settings.redis_url)
    raw = client.lrange(settings.queue, 0, -1)
    chord_keys = sorted({key.decode() for key in client.scan_iter("celery-taskset-meta-*")} - before)
    sizes = [client.get(key) for key in chord_keys]
    client.delete(settings.queue, *chord_keys)
    client.close()
    messages = []
    for entry in reversed(raw):  # LPUSH: the oldest is last
        message = json.loads(entry)
        message["body"] = json.loads(base64.b64decode(message["body"]))
        message["properties"].pop("delivery_tag")  # the transport's own, per delivery
        messages.append(message)
    names: dict[str, str] = {}

    def named(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: named(item) for key, item in value.items()}
        if isinstance(value, list):
            return [named(item) for item in value]
        if isinstance(value, str) and len(value) == 36 and value.count("-") == 4:  # a uuid
            return names.setdefault(value, f"<id {len(names)}>")
        return value

    groups = [key.removeprefix("celery-taskset-meta-").removesuffix(".s") for key in chord_keys]
    return {"messages": named(messages), "chord keys": named(groups), "sizes": sizes}


def chord_keys(settings: Settings) -> set[str]:
    client = redis.Redis.from_url(settings.redis_url)
    keys = {key.decode() for key in client.scan_iter("celery-taskset-meta-*")}
    client.close()
    return keys


@pytest.mark.parametrize("variations", [1, 4])
def test_the_chord_is_sent_as_the_canvas_sends_it(app: Celery, settings: Settings, variations: int) -> None:
    works, summary = the_run(variations)
    before = chord_keys(settings)
    canvas_dispatch(app, works, summary, "t/acme/job-7@2")
    expected = published(settings, before)
    dispatch.dispatch_variations(works, summary, "t/acme/job-7@2")
    sent = published(settings, before)

    assert len(sent["messages"]) == variations
    assert [m["headers"]["task"] for m in sent["messages"]] == [GENERATE_VARIATION] * variations
    assert [m["headers"]["group_index"] for m in sent["messages"]] == list(range(variations))
    assert sent["messages"][0]["body"][2]["chord"]["options"]["task_id"] == "t/acme/job-7@2"
    assert sent["sizes"] == [str(variations).encode()]  # the chord's size, set for the backend's count
    assert sent == expected
