"""``GET /v1/jobs/{id}/events``: a job's event log (contract/events.py) as server-sent events.

Each stream entry becomes one event: ``id:`` the stream id (the resume point a
client sends back as ``Last-Event-ID``), ``event:`` its type (started,
variation, canceled, completed), ``data:`` its JSON with the caller's own job
id. Reading blocks on ``XREAD`` (redis.asyncio, at most ``MAX_BLOCK_MS`` per
call), so an idle stream costs no Redis round trips beyond one per block;
sse-starlette sends a keep-alive comment every ``KEEP_ALIVE_S``. The stream
closes after the ``completed`` event of the run that was current when it opened.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from sse_starlette import ServerSentEvent

from contract.events import MAX_BLOCK_MS, decode, events_key
from contract.jobs import JobStatus
from contract.redis_client import SentinelURL, is_sentinel
from contract.settings import POOL_HEADROOM

log = logging.getLogger("api.events")

KEEP_ALIVE_S = 15
BATCH = 100


def async_redis(url: str, max_streams: int) -> aioredis.Redis:
    """An asyncio client for REDIS_URL (``redis://``, ``rediss://``, ``unix://`` or ``sentinel://``);
    its socket timeout outlives one blocking XREAD, and its pool has a connection for each of
    ``max_streams`` open streams and some to spare (the readiness probe)."""
    timeouts: dict[str, Any] = {
        "socket_timeout": MAX_BLOCK_MS / 1000 + 5,
        "socket_connect_timeout": 5,
        "max_connections": max_streams + POOL_HEADROOM,
    }
    if not is_sentinel(url):
        return aioredis.Redis.from_url(url, **timeouts)
    parsed = SentinelURL.parse(url)
    sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
        list(parsed.sentinels), sentinel_kwargs={"socket_timeout": 2.0}
    )
    master: aioredis.Redis = sentinel.master_for(
        parsed.service_name, db=parsed.db, username=parsed.username, password=parsed.password, **timeouts
    )
    return master


def caller_data(data: dict[str, Any], caller_id: str) -> dict[str, Any]:
    """An event's data (or a result document) showing the caller's job id, not the internal one."""
    return {**data, "job_id": caller_id} if "job_id" in data else data


async def job_events(
    client: aioredis.Redis,
    status: JobStatus,
    caller_id: str,
    after: str | None,
    finished_result: Callable[[], Any],
) -> AsyncIterator[ServerSentEvent]:
    """Events strictly after ``after`` until the current run's ``completed``.

    ``finished_result`` (awaitable factory) gives the result document when the job has finished
    but its ``completed`` event is gone (the stream trimmed or expired): then one ``completed``
    without an id ends the stream, so a reader never waits for an event that cannot come."""
    key = events_key(status.job_id)
    cursor = after or "0-0"
    try:
        while True:
            reply: Any = await client.xread({key: cursor}, count=BATCH, block=MAX_BLOCK_MS)
            entries = [entry for _, batch in (reply or []) for entry in batch]
            if not entries:
                document = await finished_result()
                if document is None:
                    continue  # still running: block again
                # Finished meanwhile: its completed event may have landed after the read.
                reply = await client.xread({key: cursor}, count=BATCH)
                entries = [entry for _, batch in (reply or []) for entry in batch]
                if not entries:
                    yield ServerSentEvent(event="completed", data=json.dumps(caller_data(document, caller_id)))
                    return
            for entry_id, fields in entries:
                event = decode(entry_id, fields, status.job_id)
                cursor = event.id
                data = event.data
                if event.event == "completed" and event.run >= status.run:
                    # The log keeps the outline; the reader gets the document (contract/events.py).
                    document = await finished_result()
                    if document is not None and "status" in document and document.get("status") != "expired":
                        data = document
                yield ServerSentEvent(
                    id=event.id, event=event.event, data=json.dumps(caller_data(data, caller_id), default=str)
                )
                if event.event == "completed" and event.run >= status.run:
                    return
    except (redis.RedisError, OSError) as exc:
        # The stream ends; the client reconnects with Last-Event-ID and misses nothing.
        log.warning("event stream of %s ended: Redis unreachable (%s)", status.job_id, type(exc).__name__)
