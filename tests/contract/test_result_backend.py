"""The result backend's payloads: compressed where that saves something, readable by any reader."""

from __future__ import annotations

import json

import redis
from celery import Celery
from celery.backends.base import COMPRESSED_PAYLOAD_MAGIC

from contract.queue import celery_config
from contract.result_backend import COMPRESS_FROM_BYTES
from contract.settings import Settings


def test_only_payloads_worth_compressing_are_compressed(redis_url: str) -> None:
    app = Celery("compression")
    app.conf.update(celery_config(Settings(_env_file=None, redis_url=redis_url)))  # type: ignore[call-arg]
    small = {"kind": "image", "record": {"index": 0, "url": "file:///images/job/variation-0.png"}}
    document = {"images": [{"index": i, "url": f"file:///images/job/variation-{i}.png"} for i in range(40)]}
    assert len(json.dumps(small)) < COMPRESS_FROM_BYTES < len(json.dumps(document))
    app.backend.store_result("compression-small", small, "SUCCESS")
    app.backend.store_result("compression-document", document, "SUCCESS")

    raw = redis.Redis.from_url(redis_url)
    stored_small = raw.get("celery-task-meta-compression-small") or b""
    stored_document = raw.get("celery-task-meta-compression-document") or b""
    assert not stored_small.startswith(COMPRESSED_PAYLOAD_MAGIC) and json.loads(stored_small)["result"] == small
    assert stored_document.startswith(COMPRESSED_PAYLOAD_MAGIC)
    assert len(stored_document) < len(json.dumps(document)) // 2
    # Either kind reads back, here and in a reader that compresses nothing itself.
    plain = Celery("plain", backend=redis_url)
    for reader in (app, plain):
        assert reader.backend.get_task_meta("compression-small")["result"] == small
        assert reader.backend.get_task_meta("compression-document")["result"] == document
