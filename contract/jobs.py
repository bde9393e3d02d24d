"""The job's lifecycle record in Redis, written by producer and worker.

One hash per job (``imagegen:job:<id>``): state, counts, timestamps, the run
number and a fingerprint of the node it runs, never the prompt or any secret.
It answers "queued or running, and how far?" before the result document
exists; its atomic creation makes a caller-given job id idempotent, and its
fingerprint tells a resubmission of the same node from a different node that
reuses the id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis

from contract.errors import ImageGenError
from contract.queue import job_key, job_task_id

JobState = Literal["queued", "running", "succeeded", "partial", "failed"]
FINISHED: tuple[JobState, ...] = ("succeeded", "partial", "failed")
RERUNNABLE: tuple[JobState, ...] = ("failed", "partial")

ClaimOutcome = Literal["created", "exists", "rerun", "conflict", "not_rerunnable"]

# KEYS[1]: the job hash.
# ARGV[1]: TTL in seconds; ARGV[2]: node fingerprint; ARGV[3]: "1" to rerun a failed or partial job;
# ARGV[4]: submitted_at; ARGV[5..]: field, value pairs of a new record.
# Returns {outcome, run, state}. Creating, refusing and starting a rerun are one step,
# so two producers racing on the same job id cannot both enqueue.
_CLAIM = """
local run = tonumber(redis.call('HGET', KEYS[1], 'run') or '1')
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[2], 'run', 1, 'submitted_at', ARGV[4], unpack(ARGV, 5))
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  return {'created', 1, 'queued'}
end
local state = redis.call('HGET', KEYS[1], 'state') or 'queued'
if redis.call('HGET', KEYS[1], 'fingerprint') ~= ARGV[2] then return {'conflict', run, state} end
if ARGV[3] ~= '1' then return {'exists', run, state} end
if state ~= 'failed' and state ~= 'partial' then return {'not_rerunnable', run, state} end
run = run + 1
redis.call('HSET', KEYS[1], 'run', run, 'state', 'queued', 'done', 0, 'submitted_at', ARGV[4])
redis.call('HDEL', KEYS[1], 'started_at', 'finished_at')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {'rerun', run, state}
"""


class JobConflict(ImageGenError):
    """A job id reused for a different node, or a rerun of a job that cannot be rerun now."""

    def __init__(self, job_id: str, message: str):
        super().__init__(f"job {job_id}: {message}")
        self.job_id = job_id


def utcnow() -> datetime:
    return datetime.now(UTC)


def fingerprint(payload: Mapping[str, Any]) -> str:
    """The node as the job runs it, hashed canonically (key order and spacing do not matter)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    run: int
    previous_state: str

    @property
    def enqueue(self) -> bool:
        return self.outcome in ("created", "rerun")


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: JobState
    variations: int
    done: int
    model: str
    submitted_at: str
    run: int = 1
    result_run: int | None = None  # the run whose result document is current (None: none yet)
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def task_id(self) -> str:
        """The Celery task id of the current run."""
        return job_task_id(self.job_id, self.run)


class JobRecords:
    def __init__(self, client: redis.Redis, ttl_s: int):
        self.client = client
        self.ttl_s = ttl_s
        self._claim = client.register_script(_CLAIM)

    def claim(
        self,
        job_id: str,
        *,
        node_fingerprint: str,
        model: str,
        variations: int,
        submitted_at: datetime,
        rerun: bool = False,
    ) -> Claim:
        """Create the record as ``queued`` (run 1), or start a rerun; never overwrite another node's job."""
        fields = {"state": "queued", "model": model, "variations": variations, "done": 0}
        flat = [str(item) for pair in fields.items() for item in pair]
        outcome, run, state = self._claim(
            keys=[job_key(job_id)],
            args=[self.ttl_s, node_fingerprint, "1" if rerun else "0", submitted_at.isoformat(), *flat],
        )
        return Claim(_text(outcome), int(run), _text(state))  # type: ignore[arg-type]

    def forget(self, job_id: str) -> None:
        self.client.delete(job_key(job_id))

    def mark_running(self, job_id: str, started_at: datetime) -> None:
        self._update(job_id, {"state": "running", "started_at": started_at.isoformat()})

    def count_done(self, job_id: str) -> None:
        self.client.hincrby(job_key(job_id), "done", 1)

    def mark_finished(self, job_id: str, run: int, state: JobState, finished_at: datetime) -> None:
        """The run's result document is stored: it becomes the job's current result."""
        self._update(job_id, {"state": state, "finished_at": finished_at.isoformat(), "result_run": run})

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
            run=int(data.get("run", 1)),
            result_run=int(data["result_run"]) if data.get("result_run") else None,
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
