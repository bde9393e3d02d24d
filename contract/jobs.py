"""The job's lifecycle record in Redis, written by producer and worker.

One hash per job (``imagegen:job:<id>``): state, counts and timestamps, never
the prompt or any secret. It answers "queued or running, and how far?" before
the result document exists, and its atomic creation makes submission with a
caller-given job id idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis

from contract.queue import job_key

JobState = Literal["queued", "running", "succeeded", "partial", "failed"]
FINISHED: tuple[JobState, ...] = ("succeeded", "partial", "failed")

# Create the hash only if absent, with its TTL, in one step: two producers
# racing on the same job id cannot both enqueue.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: JobState
    variations: int
    done: int
    model: str
    submitted_at: str
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class JobRecords:
    def __init__(self, client: redis.Redis, ttl_s: int):
        self.client = client
        self.ttl_s = ttl_s
        self._claim = client.register_script(_CLAIM)

    def claim(self, job_id: str, *, model: str, variations: int, submitted_at: datetime) -> bool:
        """Create the record as ``queued``; False when the job id exists already."""
        fields = {
            "state": "queued",
            "model": model,
            "variations": variations,
            "done": 0,
            "submitted_at": submitted_at.isoformat(),
        }
        flat = [str(item) for pair in fields.items() for item in pair]
        return bool(self._claim(keys=[job_key(job_id)], args=[self.ttl_s, *flat]))

    def forget(self, job_id: str) -> None:
        self.client.delete(job_key(job_id))

    def mark_running(self, job_id: str, started_at: datetime) -> None:
        self._update(job_id, {"state": "running", "started_at": started_at.isoformat()})

    def count_done(self, job_id: str) -> None:
        self.client.hincrby(job_key(job_id), "done", 1)

    def mark_finished(self, job_id: str, state: JobState, finished_at: datetime) -> None:
        self._update(job_id, {"state": state, "finished_at": finished_at.isoformat()})

    def read(self, job_id: str) -> JobStatus | None:
        raw = self.client.hgetall(job_key(job_id))
        if not raw:
            return None
        data = {_text(k): _text(v) for k, v in raw.items()}
        variations = int(data.get("variations", 0))
        return JobStatus(
            job_id=job_id,
            state=data.get("state", "queued"),  # type: ignore[arg-type]
            variations=variations,
            done=min(int(data.get("done", 0)), variations),  # a redelivery may count twice
            model=data.get("model", ""),
            submitted_at=data.get("submitted_at", ""),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
        )

    def _update(self, job_id: str, fields: Mapping[Any, Any]) -> None:
        pipe = self.client.pipeline()
        pipe.hset(job_key(job_id), mapping=fields)
        pipe.expire(job_key(job_id), self.ttl_s)
        pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
