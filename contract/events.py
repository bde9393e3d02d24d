"""Each job's event log: a Redis Stream that readers follow without polling.

One stream per job (``imagegen:events:<job_id>``), appended by the worker as the
job moves and read by the Python client, the HTTP API (server-sent events, with
``Last-Event-ID`` resumption) and the webhook deliveries. Entries:

* ``started``: a run was dispatched (``job_id``, ``run``, ``variations``, ``started_at``);
* ``variation``: one variation finished (``job_id``, ``run``, ``index``, ``kind`` "image" or
  "error", and ``record``: its image or error record as in the result document, less the
  provider's ``metadata`` and the empty fields: ``event_record``);
* ``variation_started``: an attempt of a variation begins (``index``, ``attempt``), written
  by the variation's cancel check (contract/jobs.py ``begin_variation``) in the same step;
* ``variation_retrying``: an attempt failed transiently or waits for the provider quota
  (``index``, ``attempt``, ``reason``, ``retry_in_s``);
* ``canceled``: a cancel was requested (``job_id``, ``run``, ``requested_at``), written by the
  cancel script itself (contract/jobs.py) so it always comes before the run's ``completed``;
* ``completed``: the run ended (every ending: finished, canceled, invalid, lost); ``data`` is
  its outline (``completed_data``: status, counts), not the result document, which the worker
  stores first. Readers hand the document on in its place (the Python client, the HTTP API's
  server-sent events, the webhook deliveries), so a follower still gets it whole; a copy in
  the log had doubled what a finished job keeps in Redis.

Each entry also carries its ``run`` (a rerun appends to the same stream). The stream is
bounded (``XADD MAXLEN ~ IMAGEGEN_EVENTS_MAX_LEN``) and expires with the job record
(``IMAGEGEN_RESULT_TTL_S``, renewed on every append) while the job runs, and
``IMAGEGEN_EVENTS_RETENTION_S`` (1 h) after its ``completed``: it is for following a job, the
result document stays; a reader after that gets the document as the one ``completed``.
Events are at least once: a redelivered job task may announce ``started`` twice.

``announce`` is the one place an event is appended *and* handed to the job's webhook.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import redis
from pydantic import BaseModel, ConfigDict, ValidationError

from contract.errors import MISSING, NodeValidationError, Problem
from contract.queue import KEY_PREFIX, job_key
from contract.result import ErrorRecord, ImageRecord

if TYPE_CHECKING:
    from contract.jobs import JobRecords

log = logging.getLogger(__name__)

EventType = Literal["started", "variation_started", "variation_retrying", "variation", "canceled", "completed"]
EVENT_TYPES: tuple[EventType, ...] = (
    "started",
    "variation_started",
    "variation_retrying",
    "variation",
    "canceled",
    "completed",
)
DEFAULT_MAX_LEN = 1000
MAX_BLOCK_MS = 5000  # one XREAD blocks at most this long: below the client's 10 s socket timeout

_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")  # with fullmatch: "$" would let a final newline in
_MAX_ID_PART = 2**64 - 1  # each part of a Redis stream id is an unsigned 64-bit number


def events_key(job_id: str) -> str:
    """Stream of the job's events (job ids contain no ":": no id names another key)."""
    return f"{KEY_PREFIX}:events:{job_id}"


class JobEvent(BaseModel):
    """One entry of a job's event log; ``id`` is the stream id (``<ms>-<seq>``), the resume point."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    event: EventType
    run: int = 1
    data: dict[str, Any]

    @property
    def timestamp_ms(self) -> int:
        """When Redis appended it (the stream id's milliseconds)."""
        return int(self.id.split("-", 1)[0])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# Not stored in an entry's data (the stream's key names the job, a field the run) and given
# back by ``decode``: ten copies of a job id were a tenth of a finished job's footprint.
_IMPLIED = ("job_id", "run")


def decode(entry_id: bytes | str, fields: Mapping[Any, Any], job_id: str | None = None) -> JobEvent:
    """A stream entry (as XRANGE / XREAD return it, bytes or str) as a ``JobEvent``; with
    ``job_id`` (the stream's job), its data names the job and the run again."""
    values = {_text(k): _text(v) for k, v in fields.items()}
    data = json.loads(values.get("data") or "{}")
    run = int(values.get("run") or 1)
    data = data if isinstance(data, dict) else {"value": data}
    return JobEvent(
        id=_text(entry_id),
        event=values.get("event", ""),  # validated by pydantic
        run=run,
        data={"job_id": job_id, "run": run, **data} if job_id is not None else data,
    )


def _json_value(value: Any) -> Any:
    """Datetimes as ISO 8601 (as in the result document); anything else as its text."""
    return value.isoformat() if isinstance(value, datetime | date) else str(value)


def _entry_data(data: Mapping[str, Any]) -> str:
    """An entry's ``data`` field: its JSON, without what the entry implies (``_IMPLIED``)."""
    stored = {k: v for k, v in data.items() if k not in _IMPLIED}
    return json.dumps(stored, separators=(",", ":"), default=_json_value)


def event_record(record: BaseModel) -> dict[str, Any]:
    """A variation's record as its ``variation`` event carries it: what a follower shows (URL,
    size, cost, the error) without the provider's metadata or the null fields; the result
    document keeps the record whole."""
    return record.model_dump(mode="json", exclude_none=True, exclude={"metadata"})


# What stands in for the metadata an event leaves out, in a record recovered from it.
NOT_KEPT = "recovered from the job's event log; the provider's metadata was not kept"


def record_from_event(event: JobEvent) -> ImageRecord | ErrorRecord | None:
    """The record a ``variation`` event carries, whole again (``event_record``'s inverse, with the
    provider's metadata stood in for); None for an entry that does not parse."""
    record = event.data.get("record") or {}
    try:
        if event.data.get("kind") == "image":
            return ImageRecord.model_validate({**record, "metadata": {"provider": "", "text": NOT_KEPT}})
        return ErrorRecord.model_validate(record)
    except (ValidationError, TypeError):
        return None


def completed_data(document: Mapping[str, Any]) -> dict[str, Any]:
    """What a ``completed`` event stores: the run's ending, not its result document."""
    return {
        "job_id": document.get("job_id"),
        "status": document.get("status"),
        "images": len(document.get("images") or []),
        "errors": len(document.get("errors") or []),
        "finished_at": document.get("finished_at"),
    }


def check_event_id(value: str, field: str = "after") -> str:
    """A stream id a reader may resume after (``Last-Event-ID``): ``<ms>-<seq>``, nothing else."""
    if (
        not isinstance(value, str)
        or not _STREAM_ID.fullmatch(value)
        or any(int(part) > _MAX_ID_PART for part in value.split("-"))
    ):
        raise NodeValidationError(
            [
                Problem(
                    field, value if isinstance(value, str) else MISSING, "must be an event id such as 1700000000000-0"
                )
            ],
            subject="event id",
        )
    return value


class JobEvents:
    """Append to and read a job's event stream (sync, redis-py)."""

    def __init__(self, client: redis.Redis, ttl_s: int, max_len: int = DEFAULT_MAX_LEN, retention_s: int | None = None):
        self.client = client
        self.ttl_s = ttl_s
        self.max_len = max_len
        # After "completed" the log is kept this long, not ttl_s (IMAGEGEN_EVENTS_RETENTION_S).
        self.retention_s = ttl_s if retention_s is None else min(retention_s, ttl_s)

    def append(self, job_id: str, event: EventType, data: Mapping[str, Any], run: int = 1) -> str:
        """Append one event; its stream id."""
        return self.append_for_delivery(job_id, event, data, run)[0]

    def append_for_delivery(
        self, job_id: str, event: EventType, data: Mapping[str, Any], run: int = 1
    ) -> tuple[str, str | None]:
        """Append one event and read the job's webhook (its JSON, or None) in the same round trip."""
        pipe = self.client.pipeline(transaction=True)
        self.queue_append(pipe, job_id, event, data, run)
        entry_id, _, webhook = pipe.execute()
        return _text(entry_id), (_text(webhook) if webhook else None)

    def queue_append(self, pipe: Any, job_id: str, event: EventType, data: Mapping[str, Any], run: int = 1) -> None:
        """Queue on ``pipe`` what ``append_for_delivery`` sends: XADD, EXPIRE, HGET webhook (3 replies)."""
        key = events_key(job_id)
        fields = {"event": event, "run": str(run), "data": _entry_data(data)}
        pipe.xadd(key, fields, maxlen=self.max_len, approximate=True)
        pipe.expire(key, self.retention_s if event == "completed" else self.ttl_s)
        pipe.hget(job_key(job_id), "webhook")

    def read(
        self, job_id: str, after: str | None = None, block_ms: int | None = None, count: int = 100
    ) -> list[JobEvent]:
        """Events strictly after ``after`` (None: from the beginning), at most ``count``. With
        ``block_ms``, wait up to that long (at most MAX_BLOCK_MS) for one when there is none yet."""
        start = "0-0" if after is None else check_event_id(after)
        block = None if block_ms is None else max(1, min(int(block_ms), MAX_BLOCK_MS))
        reply: Any = self.client.xread({events_key(job_id): start}, count=max(1, min(count, 1000)), block=block)
        return [decode(entry_id, fields, job_id) for _, entries in (reply or []) for entry_id, fields in entries]

    def finished_records(self, job_id: str, run: int) -> dict[int, ImageRecord | ErrorRecord]:
        """Each finished variation of ``run`` by index, from its ``variation`` event: newest first,
        since a long log (retries, reruns) keeps the current run's events at its end."""
        found: dict[int, ImageRecord | ErrorRecord] = {}
        entries: Any = self.client.xrevrange(events_key(job_id))  # bounded by the stream's MAXLEN
        for entry_id, fields in entries:
            event = decode(entry_id, fields, job_id)
            if event.event == "variation" and event.run == run:
                record = record_from_event(event)
                if record is not None and record.index not in found:
                    found[record.index] = record
        return found

    def get(self, job_id: str, entry_id: str) -> JobEvent | None:
        """One event by its id (None: trimmed or expired)."""
        entries: Any = self.client.xrange(events_key(job_id), check_event_id(entry_id, "id"), entry_id, count=1)
        return decode(entries[0][0], entries[0][1], job_id) if entries else None


def announce_variation(
    records: JobRecords, sender: TaskSender, job_id: str, run: int, index: int, data: Mapping[str, Any], max_len: int
) -> bool:
    """Count variation ``index`` of ``run`` once and append its ``variation`` event, in one step
    (``JobRecords.announce_variation``); whether it was counted now. Only a variation counted now
    is announced: a copy of one counted before, or a late one of a run that ended (lost) or was
    replaced, adds no event and no webhook delivery. Unlike ``announce``, a Redis fault
    propagates: the count is what lets a redelivered copy skip the work."""
    counted, entry_id, webhook = records.announce_variation(job_id, run, index, _entry_data(data), max_len)
    if counted and webhook:
        _schedule(records, sender, job_id, run, "variation", entry_id, webhook)
    return counted


def _schedule(
    records: JobRecords, sender: TaskSender, job_id: str, run: int, event: EventType, entry_id: str, webhook: str
) -> None:
    from contract.webhooks import DeliveryLog, schedule_delivery  # here: webhooks imports this module

    try:
        schedule_delivery(sender, DeliveryLog(records.client, records.ttl_s), job_id, run, event, entry_id, webhook)
    except Exception as exc:  # the broker, Redis, or a stored webhook that no longer parses
        log.warning("job %s run %d: webhook for %s not scheduled: %s", job_id, run, event, type(exc).__name__)


class TaskSender(Protocol):
    """What ``announce`` needs of a Celery app: sending a task by name."""

    def send_task(self, name: str, *args: Any, **kwargs: Any) -> Any: ...


def announce(
    records: JobRecords,
    sender: TaskSender,
    job_id: str,
    run: int,
    event: EventType,
    data: Mapping[str, Any],
    max_len: int | None = None,
    retention_s: int | None = None,
) -> str | None:
    """Append ``event`` to the job's log and, if the job's webhook subscribed to it, enqueue its
    delivery; the stream id, or None when Redis or the broker refused (logged, never raised:
    the event log is a notification, the result document and job record stay authoritative).
    A run's "completed" is appended once (``JobRecords.announce_ending``): None when it was before."""
    if max_len is None or retention_s is None:
        from contract.settings import get_settings

        settings = get_settings()
        max_len = settings.events_max_len if max_len is None else max_len
        retention_s = settings.events_retention_s if retention_s is None else retention_s
    try:
        if event == "completed":  # once per run, however many deliveries end it
            appended, entry_id, webhook = records.announce_ending(job_id, run, _entry_data(data), max_len, retention_s)
            if not appended:
                log.info("job %s run %d: its ending was announced already", job_id, run)
                return None
        else:
            events = JobEvents(records.client, records.ttl_s, max_len, retention_s)
            entry_id, webhook = events.append_for_delivery(job_id, event, data, run)
    except (redis.RedisError, OSError) as exc:
        log.warning("job %s run %d: event %s not recorded: %s", job_id, run, event, type(exc).__name__)
        return None
    if webhook is not None:
        _schedule(records, sender, job_id, run, event, entry_id, webhook)
    return entry_id
