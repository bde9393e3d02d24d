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
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import redis

from contract.errors import ImageGenError
from contract.events import events_key
from contract.queue import dispatch_key, job_key, job_task_id, progress_key, prompt_step_key

JobState = Literal["queued", "running", "succeeded", "partial", "failed", "canceled"]
FINISHED: tuple[JobState, ...] = ("succeeded", "partial", "failed", "canceled")
RERUNNABLE: tuple[JobState, ...] = ("failed", "partial")

ClaimOutcome = Literal["created", "replayed", "exists", "rerun", "conflict", "not_rerunnable", "missing"]

# The record field that marks a chain link's job (``ImageGenClient.signature``): its prompt comes
# from an upstream task, so while it is queued nothing of it has been sent to a worker yet.
AWAITS_UPSTREAM = "upstream"

# KEYS[1]: the job hash; KEYS[2]: the progress index (sorted set: job id -> last progress, epoch s).
# ARGV[1]: TTL in seconds; ARGV[2]: node fingerprint; ARGV[3]: "1" to rerun a failed or partial job;
# ARGV[4]: submitted_at; ARGV[5]: the job id; ARGV[6]: now (epoch s); ARGV[7]: this submit's nonce;
# ARGV[8..]: field, value pairs of a new record.
# Returns {outcome, run, state}. Creating, refusing and starting a rerun are one step,
# so two producers racing on the same job id cannot both enqueue; the nonce tells a
# client's own retry (its first reply was lost) from somebody else's resubmission.
# A rerun of an id without a record is "missing": a rerun runs an existing job again, it never
# quietly creates one (a typo in the id would otherwise start a new job).
_CLAIM = """
local run = tonumber(redis.call('HGET', KEYS[1], 'run') or '1')
if redis.call('HGET', KEYS[1], 'claim') == ARGV[7] then return {'replayed', run, 'queued'} end
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[3] == '1' then return {'missing', 0, 'missing'} end
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[2], 'run', 1, 'submitted_at', ARGV[4], 'claim', ARGV[7])
  redis.call('HSET', KEYS[1], unpack(ARGV, 8))
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[5])
  return {'created', 1, 'queued'}
end
local state = redis.call('HGET', KEYS[1], 'state') or 'queued'
if redis.call('HGET', KEYS[1], 'fingerprint') ~= ARGV[2] then return {'conflict', run, state} end
if ARGV[3] ~= '1' then return {'exists', run, state} end
if state ~= 'failed' and state ~= 'partial' then return {'not_rerunnable', run, state} end
run = run + 1
local undo = {state = state}  -- what undo_rerun puts back if the rerun's message cannot be sent
for _, name in ipairs({'done', 'submitted_at', 'started_at', 'finished_at', 'lost', 'claim'}) do
  undo[name] = redis.call('HGET', KEYS[1], name)
end
redis.call('HSET', KEYS[1], 'run', run, 'state', 'queued', 'done', 0, 'submitted_at', ARGV[4], 'claim', ARGV[7])
redis.call('HSET', KEYS[1], 'undo', cjson.encode(undo))
redis.call('HDEL', KEYS[1], 'started_at', 'finished_at', 'lost')
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[5])
return {'rerun', run, state}
"""

# KEYS[1]: the job hash. ARGV[1]: the run a rerun claimed; ARGV[2]: that claim's nonce.
# Returns 1 when the rerun was undone: its message could not be sent, so the record goes back to
# the finished run it was (state, run, counts, times), and the caller may rerun it again. Only
# while that claim is the record's latest and nothing has started it, and no cancel was asked for
# it: that cancel stands (the run ends "canceled" at the lost-job deadline), rather than waiting
# in the record for the next rerun, which would take its number and find itself canceled.
_UNDO_RERUN = """
if redis.call('HGET', KEYS[1], 'run') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'claim') ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then return 0 end
if redis.call('HGET', KEYS[1], 'cancel_run') == ARGV[1] then return 0 end
local saved = redis.call('HGET', KEYS[1], 'undo')
if not saved then return 0 end
local undo = cjson.decode(saved)
redis.call('HSET', KEYS[1], 'run', tonumber(ARGV[1]) - 1, 'state', undo.state)
for _, name in ipairs({'done', 'submitted_at', 'started_at', 'finished_at', 'lost', 'claim'}) do
  if undo[name] then redis.call('HSET', KEYS[1], name, undo[name]) else redis.call('HDEL', KEYS[1], name) end
end
redis.call('HDEL', KEYS[1], 'undo')
return 1
"""

# KEYS[1]: the job hash; KEYS[2]: the progress index; KEYS[3]: the job's event log.
# ARGV[1]: the job id; ARGV[2]: the nonce of the claim that created the record.
# Returns 1 when the record was removed: its first message could not be sent, so the caller may
# submit the id again. Only while that claim is the record's latest and nothing has started or
# canceled it (a cancel stands: the run ends "canceled" at the lost-job deadline); the event log
# goes with it, so a new job under the id does not begin with the old one's events.
_FORGET = """
if redis.call('HGET', KEYS[1], 'claim') ~= ARGV[2] then return 0 end
if (redis.call('HGET', KEYS[1], 'state') or 'queued') ~= 'queued' then return 0 end
if redis.call('HEXISTS', KEYS[1], 'cancel_run') == 1 then return 0 end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS[1]: the job hash; KEYS[2]: the progress index.
# ARGV[1]: the job id; ARGV[2]: cutoff (epoch s): no progress since then means lost; ARGV[3]: finished_at.
# Returns the run that was ended as lost, or false (finished meanwhile, or progress since the cutoff).
# One step, so of many sweepers (every worker, every waiting client) exactly one ends the job.
# A run whose cancel was asked ends "canceled" (as a worker would have ended it), else "failed".
_END_LOST = """
local last = redis.call('ZSCORE', KEYS[2], ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'running' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
if not last or tonumber(last) > tonumber(ARGV[2]) then return false end
local run = redis.call('HGET', KEYS[1], 'run') or '1'
local ending = 'failed'
if redis.call('HGET', KEYS[1], 'cancel_run') == run then ending = 'canceled' end
redis.call('HSET', KEYS[1], 'state', ending, 'finished_at', ARGV[3], 'result_run', run, 'lost', 1)
redis.call('ZREM', KEYS[2], ARGV[1])
return tonumber(run)
"""

# KEYS[1]: the job hash. ARGV[1]: the run the lost-job sweep ended; ARGV[2]: "partial" or
# "succeeded", as its recovered document says.
# Returns 1 when that run, still the current one and "failed", now has that state (it had stored
# images: they are in its result document); else 0.
_LOST_RECOVERED = """
if redis.call('HGET', KEYS[1], 'run') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'failed' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
return 1
"""


# A run is stale when the job's record names a later run (a rerun) or the run has ended (the
# lost-job sweep ended it: its document is final). Its late messages must not spend or write:
# each script below that starts or finishes work checks this first (a job without a record,
# e.g. expired, is not stale).
_STALE = """
local function stale(job, run)
  local current = redis.call('HGET', job, 'run')
  if current and current ~= run then return true end
  local state = redis.call('HGET', job, 'state')
  return state ~= false and state ~= 'queued' and state ~= 'running'
end
"""

# The leases' deadlines are on Redis' clock, in ms (the pods' clocks may differ).
_NOW_MS = """
local function redis_now_ms()
  local clock = redis.call('TIME')
  return tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
end
"""

# KEYS[1]: the job hash; KEYS[2]: the run's prompt-step guard. ARGV[1]: the run; ARGV[2]: this
# delivery's owner (its Celery task id: the same for the step's own retries and redeliveries,
# another for a copy sent again); ARGV[3]: the lease (ms); ARGV[4]: the guard's TTL (s).
# Returns {outcome, ms}: "done" (the step published the run's chord already: a redelivery),
# "stale" (``_STALE``), "busy" (another copy of the step holds a live lease: it is writing the
# prompts, publishing, or waiting for its next attempt; ms: how long the lease still runs;
# nothing changed), "canceled", else "start" with the guard claimed for the lease
# ("pending:<deadline ms>:<owner>", on Redis' clock). Checks and claim are one step, so two
# copies at once cannot both pay for the text call and publish two chords. A guard without a
# live lease (run out, or "pending" from an older worker) is claimed again.
_BEGIN_PROMPT_STEP = (
    _STALE
    + _NOW_MS
    + """
local guard = redis.call('GET', KEYS[2])
if guard == 'done' then return {'done', 0} end
if stale(KEYS[1], ARGV[1]) then return {'stale', 0} end
local now_ms = redis_now_ms()
if guard then
  local lease_until, owner = string.match(guard, '^pending:(%d+):(.+)$')
  if owner and owner ~= ARGV[2] and tonumber(lease_until) > now_ms then
    return {'busy', tonumber(lease_until) - now_ms}
  end
end
if redis.call('HGET', KEYS[1], 'cancel_run') == ARGV[1] then return {'canceled', 0} end
redis.call('SET', KEYS[2], 'pending:' .. (now_ms + tonumber(ARGV[3])) .. ':' .. ARGV[2], 'EX', ARGV[4])
return {'start', 0}
"""
)

# KEYS[1]: the dispatch guard of one run; KEYS[2]: the job hash; KEYS[3]: the progress index.
# ARGV[1]: TTL (s); ARGV[2]: started_at; ARGV[3]: now (epoch s); ARGV[4]: the job id; ARGV[5]: the run;
# ARGV[6]: the lease (ms) a claim holds while it publishes (renewed by its holder: _RENEW_DISPATCH);
# ARGV[7]: this delivery's token.
# Returns {outcome, ms}: "new" (claimed), "again" (an earlier delivery's lease ran out while it
# dispatched: it died, so this one claims it), "busy" (another delivery holds a live lease and is
# publishing now; ms: how long the lease still runs; nothing changed), "done" (dispatched already:
# nothing changed) or "stale" (the run is not the job's current one, or it ended: nothing
# changed). Claim and "running" are one round trip. The guard reads
# "pending:<deadline ms>:<token>", the deadline on Redis' clock (pods' clocks may differ); a
# guard of "pending" without one (written by an older worker) counts as run out.
_BEGIN_DISPATCH = (
    _STALE
    + _NOW_MS
    + """
local guard = redis.call('GET', KEYS[1])
if guard == 'done' then return {'done', 0} end
if stale(KEYS[2], ARGV[5]) then return {'stale', 0} end
local now_ms = redis_now_ms()
local outcome = 'new'
if guard then
  local lease_until = tonumber(string.match(guard, '^pending:(%d+)') or '0')
  if lease_until > now_ms then return {'busy', lease_until - now_ms} end
  outcome = 'again'
end
redis.call('SET', KEYS[1], 'pending:' .. (now_ms + tonumber(ARGV[6])) .. ':' .. ARGV[7], 'EX', ARGV[1])
redis.call('HSET', KEYS[2], 'state', 'running', 'started_at', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], 'XX', ARGV[3], ARGV[4])
return {outcome, 0}
"""
)

# KEYS[1]: the dispatch guard of one run. ARGV[1]: the holder's token; ARGV[2]: the lease (ms).
# Extends the lease while the guard is still this holder's claim (not "done", not claimed
# again by another delivery after the lease ran out). Returns 1 when extended, else 0.
_RENEW_DISPATCH = (
    _NOW_MS
    + """
local guard = redis.call('GET', KEYS[1])
if not guard or string.match(guard, '^pending:%d+:(.+)$') ~= ARGV[1] then return 0 end
local now_ms = redis_now_ms()
redis.call('SET', KEYS[1], 'pending:' .. (now_ms + tonumber(ARGV[2])) .. ':' .. ARGV[1], 'KEEPTTL')
return 1
"""
)

# Count variation ``field`` ("v<index>") of ``run`` once per run, whatever the deliveries: its
# field (the run that finished it) lets a redelivered copy skip the work, and its lease
# ("lease:v<index>", ``_BEGIN_VARIATION``) goes in the same step (a copy now finds "done"). Nothing
# is created for a job without a record. 1 when counted now, 0 when counted before (or no record,
# or the run is stale: ``_STALE``).
_COUNT = """
local function count(job, progress, field, run, now, job_id)
  if redis.call('EXISTS', job) == 0 or stale(job, run) then return 0 end
  redis.call('ZADD', progress, 'XX', now, job_id)
  if redis.call('HGET', job, field) == run then return 0 end
  redis.call('HSET', job, field, run)
  redis.call('HDEL', job, 'lease:' .. field)
  redis.call('HINCRBY', job, 'done', 1)
  return 1
end
"""

# KEYS[1]: the job hash; KEYS[2]: the progress index. ARGV[1]: "v<index>" (the variation's
# field); ARGV[2]: the run; ARGV[3]: now (epoch s); ARGV[4]: the job id.
# Returns 1 when counted now, else 0 (``_COUNT``).
_COUNT_DONE = _STALE + _COUNT + "return count(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])"

# KEYS[1]: the job hash; KEYS[2]: the progress index; KEYS[3]: the job's event stream.
# ARGV[1..4]: as ``_COUNT_DONE``; ARGV[5]: the "variation" event's data (JSON); ARGV[6]: the
# stream's MAXLEN; ARGV[7]: the stream's TTL (s).
# Returns {counted, stream id, webhook}: counted now (1), its event's id and the job's webhook
# (JSON, or ""); {0, "", ""} when not counted now, and then nothing is appended: a copy of a
# variation counted before, or a late variation of a run the lost-job sweep ended or a rerun
# replaced, announces nothing (no "variation" after its run's "completed", no second webhook).
_ANNOUNCE_VARIATION = (
    _STALE
    + _COUNT
    + """
if count(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) == 0 then return {0, '', ''} end
local id = redis.call(
  'XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'event', 'variation', 'run', ARGV[2], 'data', ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[7])
return {1, id, redis.call('HGET', KEYS[1], 'webhook') or ''}
"""
)


# KEYS[1]: the job hash; KEYS[2]: the job's event stream (contract/events.py).
# ARGV[1]: the run; ARGV[2]: the event's data (JSON); ARGV[3]: the stream's MAXLEN; ARGV[4]: the
# stream's TTL (s). Returns {appended (1/0), stream id, webhook JSON or ''}. A run's "completed"
# is appended once whatever the deliveries: two finalizes of one run (a redelivery while the first
# is between storing its document and announcing it) would each find it missing and each send it
# (and its webhook). The job's ``completed_run`` field remembers the last run announced; a job
# without a record (expired) gets no new one.
_ANNOUNCE_ENDING = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'completed_run') == ARGV[1] then return {0, '', ''} end
  redis.call('HSET', KEYS[1], 'completed_run', ARGV[1])
end
local id = redis.call(
  'XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'event', 'completed', 'run', ARGV[1], 'data', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {1, id, redis.call('HGET', KEYS[1], 'webhook') or ''}
"""

# KEYS[1]: the job hash; KEYS[2]: the job's event stream (contract/events.py); KEYS[3]: the
# progress index. ARGV[1]: requested_at (ISO); ARGV[2]: the stream's MAXLEN; ARGV[3]: TTL (s);
# ARGV[4]: the job id.
# Returns {changed (1/0), state, run, ended (1/0)}. A queued or running job gets its run's cancel
# flag (``cancel_run``) and a "canceled" event, in one step: the flag is either seen by the run's
# finish (the job ends "canceled") or refused because the run had finished already, and the
# event always precedes the run's "completed". A chain link's job still queued (``AWAITS_UPSTREAM``)
# has no message at any worker that would see the flag (its upstream may never end: revoked,
# expired), so it ends "canceled" here and now (ended 1; the caller stores its document and
# announces "completed"); a run_job sent for it later finds the run ended (``_STALE``) and starts
# nothing. Queued means no dispatch claim: claiming the dispatch marks the job "running".
_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 'missing', 0, 0} end
local state = redis.call('HGET', KEYS[1], 'state') or 'queued'
local run = redis.call('HGET', KEYS[1], 'run') or '1'
if state ~= 'queued' and state ~= 'running' then return {0, state, tonumber(run), 0} end
local changed = 0
if redis.call('HGET', KEYS[1], 'cancel_run') ~= run then
  redis.call('HSET', KEYS[1], 'cancel_run', run, 'cancel_requested_at', ARGV[1])
  local data = cjson.encode({requested_at = ARGV[1]})  -- job id and run: implied (contract/events.py)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'event', 'canceled', 'run', run, 'data', data)
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  changed = 1
end
if state == 'queued' and redis.call('HGET', KEYS[1], 'upstream') == '1' then  -- AWAITS_UPSTREAM
  redis.call('HSET', KEYS[1], 'state', 'canceled', 'finished_at', ARGV[1], 'result_run', run)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[4])
  return {changed, state, tonumber(run), 1}
end
return {changed, state, tonumber(run), 0}
"""

# A variation's lease lives in the job hash: field "lease:v<index>" = "<run>:<deadline ms>:<token>"
# (the deadline on Redis' clock, the token the attempt's own, drawn per execution). It guards the
# provider call against a second copy of the same message running at once (a broker that
# requeued it when the first's connection dropped); counting the variation (``_COUNT``) removes it.
_VARIATION_LEASE = """
local function variation_lease(job, index)
  local lease = redis.call('HGET', job, 'lease:v' .. index)
  if not lease then return nil end
  local run, lease_until, owner = string.match(lease, '^(%d+):(%d+):(.+)$')
  if not owner then return nil end
  return {run = run, lease_until = tonumber(lease_until), owner = owner}
end
local function set_variation_lease(job, index, run, lease_until, token)
  redis.call('HSET', job, 'lease:v' .. index, run .. ':' .. lease_until .. ':' .. token)
end
"""

# KEYS[1]: the job hash; KEYS[2]: the job's event stream. ARGV[1]: the run; ARGV[2]: the
# variation's index; ARGV[3]: the stream's MAXLEN; ARGV[4]: TTL (s); ARGV[5]: the attempt;
# ARGV[6]: this execution's token; ARGV[7]: the lease (ms).
# Returns {outcome, ms}: "done" when this variation of the run finished already (a copy: skip the
# work), "stale" when the run is (``_STALE``), "busy" when another execution (another token)
# holds a live lease on this variation of this run (a copy delivered while the first is still
# generating; ms: how long the lease still runs; nothing changed, no event), "canceled" when the
# run was canceled (the variation must not start), else takes the lease ("lease:v<index>", see
# ``_VARIATION_LEASE``; only in an existing record), appends "variation_started" and returns
# "start": the checks a variation makes anyway, its lease and its progress event cost one round
# trip together. "busy" comes before "canceled": the holder is generating already, and its own
# outcome (an image, paid for) is what the copy hands the chord once it finds "done".
_BEGIN_VARIATION = (
    _STALE
    + _NOW_MS
    + _VARIATION_LEASE
    + """
if redis.call('HGET', KEYS[1], 'v' .. ARGV[2]) == ARGV[1] then return {'done', 0} end
if stale(KEYS[1], ARGV[1]) then return {'stale', 0} end
local now_ms = redis_now_ms()
local lease = variation_lease(KEYS[1], ARGV[2])
if lease and lease.run == ARGV[1] and lease.owner ~= ARGV[6] and lease.lease_until > now_ms then
  return {'busy', lease.lease_until - now_ms}
end
if redis.call('HGET', KEYS[1], 'cancel_run') == ARGV[1] then return {'canceled', 0} end
if redis.call('EXISTS', KEYS[1]) == 1 then
  set_variation_lease(KEYS[1], ARGV[2], ARGV[1], now_ms + tonumber(ARGV[7]), ARGV[6])
end
local data = cjson.encode({index = tonumber(ARGV[2]), attempt = tonumber(ARGV[5])})
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'event', 'variation_started', 'run', ARGV[1], 'data', data)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {'start', 0}
"""
)

# KEYS[1..n]: job hashes. ARGV[1]: the lease (ms); ARGV[2..]: for each key in turn, three values:
# the run, the variation's index and the holder's token.
# Extends each lease that is still that holder's (not released, not counted, not taken over by
# another execution after it ran out) to the lease from now. Returns one 1 (extended) or 0 per
# key, in order: one call renews every variation lease a worker process holds.
_RENEW_VARIATIONS = (
    _NOW_MS
    + _VARIATION_LEASE
    + """
local now_ms = redis_now_ms()
local renewed = {}
for i, job in ipairs(KEYS) do
  local run, index, token = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  local lease = variation_lease(job, index)
  if lease and lease.run == run and lease.owner == token then
    set_variation_lease(job, index, run, now_ms + tonumber(ARGV[1]), token)
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
return renewed
"""
)

# KEYS[1]: the job hash. ARGV[1]: the run; ARGV[2]: the variation's index; ARGV[3]: the holder's token.
# Removes the variation's lease while it is that holder's: an attempt that ends without an
# outcome (it retries later, or waits for quota) lets its next attempt, or a copy, start at once.
# Returns 1 when removed, else 0 (not held by that token).
_RELEASE_VARIATION = (
    _VARIATION_LEASE
    + """
local lease = variation_lease(KEYS[1], ARGV[2])
if not lease or lease.run ~= ARGV[1] or lease.owner ~= ARGV[3] then return 0 end
redis.call('HDEL', KEYS[1], 'lease:v' .. ARGV[2])
return 1
"""
)

# KEYS[1]: the job hash; KEYS[2]: the progress index. ARGV[1]: the run; ARGV[2]: its state from
# the variations' outcomes; ARGV[3]: finished_at; ARGV[4]: the job id; ARGV[5]: TTL (s).
# Returns {state, "new"} with the state the run ended with now: "canceled" when its cancel flag
# is set (read and written in one step, so a cancel either lands before this or is told the job
# finished); {state, "again"} for a run that had ended already (a redelivered finalize, or a
# second chord's); {"stale", ""} when the run is not current or the lost-job sweep ended it
# (``_STALE``, with the lost case: such a run's document is final). Nothing changes but for "new".
_FINISH_RUN = """
local current = redis.call('HGET', KEYS[1], 'run')
if current and current ~= ARGV[1] then return {'stale', ''} end
local ended = redis.call('HGET', KEYS[1], 'state')
if ended and ended ~= 'queued' and ended ~= 'running' then
  if redis.call('HGET', KEYS[1], 'lost') then return {'stale', ''} end
  return {ended, 'again'}
end
local state = ARGV[2]
if redis.call('HGET', KEYS[1], 'cancel_run') == ARGV[1] then state = 'canceled' end
redis.call('HSET', KEYS[1], 'state', state, 'finished_at', ARGV[3], 'result_run', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZREM', KEYS[2], ARGV[4])
return {state, 'new'}
"""


def _count_done_call(job_id: str, run: int, index: int) -> tuple[list[str], list[str | int | float]]:
    """KEYS and ARGV of ``_COUNT_DONE`` (see its header)."""
    return [job_key(job_id), progress_key()], [f"v{index}", run, utcnow().timestamp(), job_id]


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
    nonce: str = ""  # this claim's: undo_rerun touches the record only while it is the latest

    @property
    def enqueue(self) -> bool:
        return self.outcome in ("created", "replayed", "rerun")


class CancelRequest(NamedTuple):
    changed: bool  # this call asked the run to stop
    state: str  # the job's state when asked ("missing": no record)
    run: int
    ended: bool  # a chain link's job waiting for its upstream: ended "canceled" by this call


@dataclass(frozen=True)
class DispatchClaim:
    outcome: Literal["new", "again", "busy", "done", "stale"]
    lease_left_s: float = 0.0  # "busy": how long the other delivery's lease still runs


@dataclass(frozen=True)
class VariationClaim:
    outcome: Literal["start", "busy", "canceled", "stale", "done"]
    lease_left_s: float = 0.0  # "busy": how long the other execution's lease still runs


@dataclass(frozen=True)
class PromptStepClaim:
    outcome: Literal["start", "busy", "canceled", "stale", "done"]
    lease_left_s: float = 0.0  # "busy": how long the other copy's lease still runs


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: JobState
    variations: int
    done: int
    model: str
    submitted_at: str
    name: str = ""
    run: int = 1
    result_run: int | None = None  # the run whose result document is current (None: none yet)
    lost: bool = False  # ended by the lost-job sweep: no worker made progress within the deadline
    cancel_requested: bool = False  # ImageGenClient.cancel asked this run to stop
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
        self._undo_rerun = client.register_script(_UNDO_RERUN)
        self._forget = client.register_script(_FORGET)
        self._end_lost = client.register_script(_END_LOST)
        self._lost_recovered = client.register_script(_LOST_RECOVERED)
        self._begin_dispatch = client.register_script(_BEGIN_DISPATCH)
        self._renew_dispatch = client.register_script(_RENEW_DISPATCH)
        self._count_done = client.register_script(_COUNT_DONE)
        self._announce_variation = client.register_script(_ANNOUNCE_VARIATION)
        self._announce_ending = client.register_script(_ANNOUNCE_ENDING)
        self._cancel = client.register_script(_CANCEL)
        self._finish_run = client.register_script(_FINISH_RUN)
        self._begin_variation = client.register_script(_BEGIN_VARIATION)
        self._renew_variations = client.register_script(_RENEW_VARIATIONS)
        self._release_variation = client.register_script(_RELEASE_VARIATION)
        self._begin_prompt_step = client.register_script(_BEGIN_PROMPT_STEP)

    def claim(
        self,
        job_id: str,
        *,
        node_fingerprint: str,
        model: str,
        variations: int,
        submitted_at: datetime,
        rerun: bool = False,
        name: str = "",
        webhook: str | None = None,
        awaits_upstream: bool = False,
    ) -> Claim:
        """Create the record as ``queued`` (run 1), or start a rerun; never overwrite another node's job.
        ``webhook``: the job's webhook as JSON (contract/webhooks.py; a secret reference, no secret).
        ``awaits_upstream``: a chain link's job, whose run waits for its upstream task (``_CANCEL``).
        "missing": a rerun of an id without a record (nothing created)."""
        fields: dict[str, str | int] = {
            "state": "queued",
            "name": name,
            "model": model,
            "variations": variations,
            "done": 0,
        }
        if webhook is not None:
            fields["webhook"] = webhook
        if awaits_upstream:
            fields[AWAITS_UPSTREAM] = 1
        flat = [str(item) for pair in fields.items() for item in pair]
        nonce = uuid.uuid4().hex
        outcome, run, state = self._claim(
            keys=[job_key(job_id), progress_key()],
            args=[
                self.ttl_s,
                node_fingerprint,
                "1" if rerun else "0",
                submitted_at.isoformat(),
                job_id,
                submitted_at.timestamp(),
                nonce,  # the same for redis-py's own retries of this call
                *flat,
            ],
        )
        return Claim(_text(outcome), int(run), _text(state), nonce)  # type: ignore[arg-type]

    def undo_rerun(self, job_id: str, claim: Claim) -> bool:
        """Put a rerun whose message could not be sent back to the run it was; whether it was."""
        return bool(self._undo_rerun(keys=[job_key(job_id)], args=[claim.run, claim.nonce]))

    def forget(self, job_id: str, claim: Claim) -> bool:
        """Remove a record ``claim`` created whose message could not be sent; whether it was."""
        return bool(
            self._forget(keys=[job_key(job_id), progress_key(), events_key(job_id)], args=[job_id, claim.nonce])
        )

    def mark_running(self, job_id: str, started_at: datetime) -> None:
        self._update(job_id, {"state": "running", "started_at": started_at.isoformat()}, progress=True)

    def begin_dispatch(self, job_id: str, run: int, started_at: datetime, lease_s: float, token: str) -> DispatchClaim:
        """Claim the dispatch of ``run`` for ``lease_s`` (as ``token``, this delivery) and mark the
        job running, in one round trip. "done": an earlier delivery dispatched it already
        (acks_late redelivers a job task whose worker died); "busy": another delivery is
        publishing it now (a chain link sent twice, a duplicate delivery), so this one must not;
        "again": one died while dispatching (its lease ran out), so this one dispatches;
        "stale": a rerun replaced the run or the lost-job sweep ended it, so nothing starts."""
        outcome, lease_left_ms = self._begin_dispatch(
            keys=[dispatch_key(job_id, run), job_key(job_id), progress_key()],
            args=[self.ttl_s, started_at.isoformat(), utcnow().timestamp(), job_id, run, int(lease_s * 1000), token],
        )
        return DispatchClaim(_text(outcome), int(lease_left_ms) / 1000)  # type: ignore[arg-type]

    def renew_dispatches(self, claims: Sequence[tuple[str, int, str]], lease_s: float) -> list[bool]:
        """Extend each (job id, run, token) claim on a run's dispatch by ``lease_s`` from now, in one
        round trip (a pipeline); whether each was (False: the claim is no longer its token's:
        dispatched, or claimed again after its lease ran out)."""
        if not claims:
            return []
        pipe = self.client.pipeline(transaction=False)
        for job_id, run, token in claims:
            self._renew_dispatch(keys=[dispatch_key(job_id, run)], args=[token, int(lease_s * 1000)], client=pipe)
        return [bool(flag) for flag in pipe.execute()]

    def end_dispatch(self, job_id: str, run: int) -> None:
        """The run's chord is published: a redelivery of its job task stops at ``begin_dispatch``."""
        self.client.set(dispatch_key(job_id, run), "done", xx=True, keepttl=True)

    def count_done(self, job_id: str, run: int, index: int) -> bool:
        """Variation ``index`` of ``run`` finished: counted once, however often it is delivered
        (False when it was counted before). One round trip."""
        keys, args = _count_done_call(job_id, run, index)
        return bool(self._count_done(keys=keys, args=args))

    def announce_variation(
        self, job_id: str, run: int, index: int, event_data: str, max_len: int
    ) -> tuple[bool, str, str | None]:
        """Count variation ``index`` of ``run`` and append its "variation" event (``event_data``:
        the stream entry's JSON) in one step: (counted now, the event's stream id, the job's
        webhook JSON or None). Appended only when counted now (``_ANNOUNCE_VARIATION``)."""
        keys, args = _count_done_call(job_id, run, index)
        counted, entry_id, webhook = self._announce_variation(
            keys=[*keys, events_key(job_id)], args=[*args, event_data, max_len, self.ttl_s]
        )
        return bool(counted), _text(entry_id), (_text(webhook) or None)

    def announce_ending(
        self, job_id: str, run: int, event_data: str, max_len: int, retention_s: int
    ) -> tuple[bool, str, str | None]:
        """Append the "completed" event of ``run`` (``event_data``: the stream entry's JSON) unless
        it was appended before (``_ANNOUNCE_ENDING``): (appended now, its stream id, the job's
        webhook JSON or None)."""
        appended, entry_id, webhook = self._announce_ending(
            keys=[job_key(job_id), events_key(job_id)], args=[run, event_data, max_len, retention_s]
        )
        return bool(appended), _text(entry_id), (_text(webhook) or None)

    def finish_run(
        self, job_id: str, run: int, state: JobState, finished_at: datetime
    ) -> tuple[JobState | Literal["stale"], bool]:
        """The run's result document is stored: it becomes the job's current result, ended with
        ``state``, except that a run whose cancel was requested ends ``canceled``: the state it
        ended with, and whether it ended now (one round trip). False: it had ended
        before (a finalize delivered again), nothing changed. "stale": the run is not the job's
        current one, or the lost-job sweep ended it; nothing changed."""
        ended, now = self._finish_run(
            keys=[job_key(job_id), progress_key()], args=[run, state, finished_at.isoformat(), job_id, self.ttl_s]
        )
        return _text(ended), _text(now) == "new"  # type: ignore[return-value]

    def request_cancel(self, job_id: str, events_max_len: int) -> CancelRequest:
        """Flag the current run of a queued or running job as canceled. state "missing": no such
        record. Not changed: finished already, or canceled before. ``ended``: a chain link's job
        still waiting for its upstream ended ``canceled`` now (``_CANCEL``); its result document
        and "completed" event are the caller's to write."""
        changed, state, run, ended = self._cancel(
            keys=[job_key(job_id), events_key(job_id), progress_key()],
            args=[utcnow().isoformat(), events_max_len, self.ttl_s, job_id],
        )
        return CancelRequest(bool(changed), _text(state), int(run), bool(ended))

    def awaits_upstream(self, job_id: str) -> bool:
        """Whether the job is a chain link's (``ImageGenClient.signature``): its prompt comes from
        an upstream task, so only a link runs it."""
        return self.client.hget(job_key(job_id), AWAITS_UPSTREAM) is not None

    def begin_variation(
        self, job_id: str, run: int, index: int, attempt: int, events_max_len: int, token: str, lease_s: float
    ) -> VariationClaim:
        """Before an attempt's provider call, in one round trip: "start" (the variation is leased
        to ``token``, this execution, for ``lease_s``, and a "variation_started" event is on the
        job's log), "busy" (another execution holds a live lease on it: a copy of the message
        delivered while the first is generating; nothing changed), "canceled" (the run was
        canceled), "stale" (a rerun replaced the run, or the lost-job sweep ended it) or "done"
        (this variation of the run finished already: a copy the broker delivered again). Only
        "start" may spend; its holder renews the lease (``renew_variations``) until the outcome is
        counted (which removes it) or it releases it (``release_variation``)."""
        outcome, lease_left_ms = self._begin_variation(
            keys=[job_key(job_id), events_key(job_id)],
            args=[run, index, events_max_len, self.ttl_s, attempt, token, int(lease_s * 1000)],
        )
        return VariationClaim(_text(outcome), int(lease_left_ms) / 1000)  # type: ignore[arg-type]

    def renew_variations(self, leases: Sequence[tuple[str, int, int, str]], lease_s: float) -> list[bool]:
        """Extend each (job id, run, index, token) lease still held by its token to ``lease_s``
        from now, in one round trip; whether each was (False: counted, released, or taken over)."""
        if not leases:
            return []
        args: list[str | int] = [int(lease_s * 1000)]
        for _, run, index, token in leases:
            args += [run, index, token]
        renewed = self._renew_variations(keys=[job_key(job_id) for job_id, *_ in leases], args=args)
        return [bool(flag) for flag in renewed]

    def release_variation(self, job_id: str, run: int, index: int, token: str) -> bool:
        """Give up ``token``'s lease on variation ``index`` of ``run`` (its attempt retries
        later): whether it held it."""
        return bool(self._release_variation(keys=[job_key(job_id)], args=[run, index, token]))

    def begin_prompt_step(self, job_id: str, run: int, owner: str, lease_s: float) -> PromptStepClaim:
        """Before the prompt step's text call, in one round trip: "start" (the step is claimed by
        ``owner``, its task id, for ``lease_s``), "busy" (another copy of the step holds a live
        lease: it must neither pay nor publish), "done" (the step published the run's chord
        already), "stale" (a rerun replaced the run, or the lost-job sweep ended it) or
        "canceled". Only "start" may spend."""
        outcome, lease_left_ms = self._begin_prompt_step(
            keys=[job_key(job_id), prompt_step_key(job_id, run)], args=[run, owner, int(lease_s * 1000), self.ttl_s]
        )
        return PromptStepClaim(_text(outcome), int(lease_left_ms) / 1000)  # type: ignore[arg-type]

    def stalled(self, deadline_s: float, limit: int = 500) -> list[str]:
        """Ids of unfinished jobs with no progress for ``deadline_s`` (candidates for ``end_lost``)."""
        cutoff = utcnow().timestamp() - deadline_s
        members = self.client.zrangebyscore(progress_key(), "-inf", cutoff, start=0, num=limit)
        return [_text(m) for m in members if isinstance(m, bytes | str)]

    def end_lost(self, job_id: str, deadline_s: float) -> JobStatus | None:
        """End the job ``failed`` if it made no progress for ``deadline_s``; its status then, else None."""
        now = utcnow()
        run = self._end_lost(
            keys=[job_key(job_id), progress_key()], args=[job_id, now.timestamp() - deadline_s, now.isoformat()]
        )
        return self.read(job_id) if run else None

    def lost_run_recovered(self, job_id: str, run: int, state: Literal["partial", "succeeded"]) -> bool:
        """A lost run whose stored images were recovered ends ``partial``, or ``succeeded`` when
        every variation had finished (only its chord's gathering was lost): contract/lost_jobs.py."""
        return bool(self._lost_recovered(keys=[job_key(job_id)], args=[run, state]))

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
            name=data.get("name", ""),
            run=int(data.get("run", 1)),
            result_run=int(data["result_run"]) if data.get("result_run") else None,
            lost=data.get("lost") == "1",
            cancel_requested=data.get("cancel_run") == data.get("run", "1"),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
        )

    def _update(self, job_id: str, fields: Mapping[Any, Any], progress: bool = False) -> None:
        pipe = self.client.pipeline()
        pipe.hset(job_key(job_id), mapping=fields)
        pipe.expire(job_key(job_id), self.ttl_s)
        if progress:
            pipe.zadd(progress_key(), {job_id: utcnow().timestamp()}, xx=True)
        pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
