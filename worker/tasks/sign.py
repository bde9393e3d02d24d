"""Re-signing: a fresh URL for an image already stored (signed URLs expire).

The producer sends the durable ``uri`` and the node's storage fields
(references only); the worker resolves the credentials and signs. Only objects
in the node's own bucket (or, without ``use_cloud``, the platform storage) are
signed, so a caller cannot borrow the worker's identity for other buckets.
Outcomes are returned, not raised, so the producer never unpickles worker errors.
"""

from __future__ import annotations

import logging
from typing import Any

from contract.queue import SIGN_URL
from contract.settings import get_settings
from worker.celery_app import app
from worker.errors import GenerationError, StorageError, TransientError
from worker.storage import store_for_fields

log = logging.getLogger(__name__)


@app.task(name=SIGN_URL)
def sign_url(uri: str, storage: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        store, _ = store_for_fields(storage or {}, get_settings())
        stored = store.url_for(uri)
    except GenerationError as exc:
        kind = (
            "storage"
            if isinstance(exc, StorageError)
            else "transient"
            if isinstance(exc, TransientError)
            else "permanent"
        )
        log.warning("sign %s failed: %s", uri, exc)
        return {"uri": uri, "error": {"kind": kind, "message": str(exc)}}
    expires = stored.url_expires_at.isoformat() if stored.url_expires_at else None
    return {"uri": stored.uri, "url": stored.url, "url_expires_at": expires}
