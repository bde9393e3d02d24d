"""Re-signing: a fresh URL for an image already stored (signed URLs expire).

The producer sends the durable ``uri`` and, for an image in the node's own
cloud, the node's target (references only); the worker resolves the
credentials and signs. It signs only images this service stored under that
target's prefix (or the platform storage's), and the worker's own identity
serves only the platform and allow-listed targets, so a caller cannot borrow
it for other buckets or other objects. A tenant's request (the HTTP API's) is
signed only for that tenant's jobs, and only with credentials the tenant may
name (contract/tenancy.py), checked before they are read.

The URL is a bearer credential: it is returned through the result backend
(which the producer deletes at once) and never logged; the worker's task
events and success log lines carry no return values (worker/redaction.py). A
request carries the time its caller stops waiting (Celery's ``expires``): not
run after it, and a URL signed too late is not returned (nobody would delete it).
Outcomes are returned, not raised, so the producer never unpickles worker errors.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from contract.errors import printable
from contract.queue import SIGN_URL
from contract.settings import get_settings
from contract.work import SignRequest
from worker.celery_app import app
from worker.errors import GenerationError, NotStoredHere, StorageError, TransientError
from worker.payloads import PayloadRefused
from worker.storage import check_credentials_of, check_image_uri_shape, location_for

log = logging.getLogger(__name__)


def _refused(task: Task, refusal: PayloadRefused) -> dict[str, Any]:
    """A request that does not parse gets a failure, as every sign does: its caller is waiting."""
    request = refusal.arguments.get("request")
    uri = request.get("uri") if isinstance(request, dict) else None
    printed = _printed(uri) if isinstance(uri, str) else ""
    return _failed(printed, "permanent", f"the sign request was refused: {refusal.problem}")


@app.task(name=SIGN_URL, pydantic=True, bind=True, refused=_refused)
def sign_url(self: Task, request: SignRequest) -> dict[str, Any]:
    settings = get_settings()
    try:
        check_image_uri_shape(request.uri)  # before a store is opened or a credential read
        check_credentials_of(request.tenant, request.target, settings)
        stored = location_for(request.target, settings).url_for(request.uri, request.tenant)
    except NotStoredHere as exc:  # the caller learns only that there is no such image, not where we looked
        log.info("sign %s refused: %s", _printed(request.uri), printable(str(exc)))
        return _failed(request.uri, "not_found", "no image this service stored has this uri")
    except GenerationError as exc:
        kind = (
            "storage"
            if isinstance(exc, StorageError)
            else "transient"
            if isinstance(exc, TransientError)
            else "permanent"
        )
        log.warning("sign %s failed: %s", _printed(request.uri), printable(str(exc)))
        return _failed(request.uri, kind, str(exc))
    except SoftTimeLimitExceeded:  # a slow Vault or IAM: worth asking again
        log.warning("sign %s ran past its time limit", _printed(request.uri))
        return _failed(request.uri, "transient", "signing took too long; try again")
    except Exception:  # a bug: logged here; the caller gets an outcome, never a worker exception
        log.exception("sign %s failed with an internal error", _printed(request.uri))
        return _failed(request.uri, "permanent", "internal error in the worker (logged)")
    if _caller_gone(self.request.expires):
        log.info("signed %s after its caller stopped waiting: not returned", stored.uri)
        return _failed(request.uri, "transient", "the caller stopped waiting")
    log.info("signed a fresh URL for %s", stored.uri)
    expires = stored.url_expires_at.isoformat() if stored.url_expires_at else None
    return {"uri": stored.uri, "url": stored.url, "url_expires_at": expires}


def _caller_gone(expires: datetime | str | None) -> bool:
    if expires is None:
        return False
    deadline = datetime.fromisoformat(expires) if isinstance(expires, str) else expires
    return datetime.now(deadline.tzinfo or UTC) > deadline


def _printed(uri: str) -> str:
    """The uri as logged: without a query or fragment, which may hold a token; control characters
    escaped (a request may not come from our producer: no forged log lines)."""
    return printable(uri.partition("?")[0].partition("#")[0][:300])


def _failed(uri: str, kind: str, message: str) -> dict[str, Any]:
    """The outcome of a sign that gave no URL, as the producer reads it (SignError)."""
    return {"uri": uri, "error": {"kind": kind, "message": message}}
