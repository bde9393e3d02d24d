"""The job record's worker-side steps, each one round trip: claiming a run's dispatch,
counting a variation once however often it is delivered, and finishing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from contract.events import JobEvents, announce, events_key
from contract.jobs import JobRecords, VariationClaim, utcnow
from contract.queue import dispatch_key, job_key, progress_key, prompt_step_key
from contract.webhooks import Webhook
from worker.dispatch_lease import LeaseKeeper

LEASE_S = 60.0


@pytest.fixture
def records(redis_url: str) -> Iterator[JobRecords]:
    client = redis.Redis.from_url(redis_url)
    yield JobRecords(client, ttl_s=600)
    client.close()


def claimed(records: JobRecords, variations: int = 2) -> str:
    job_id = f"records-{uuid.uuid4().hex[:8]}"
    claim = records.claim(
        job_id, node_fingerprint="f", model="offline_preview", variations=variations, submitted_at=utcnow()
    )
    assert claim.outcome == "created"
    return job_id


def test_dispatch_is_claimed_once_and_a_died_dispatch_is_claimed_again(records: JobRecords) -> None:
    job_id = claimed(records)
    assert records.begin_dispatch(job_id, 1, utcnow(), LEASE_S, "t1").outcome == "new"
    status = records.read(job_id)
    assert status is not None and status.state == "running" and status.started_at
    records.client.set(dispatch_key(job_id, 1), "pending")  # an older worker's claim, no lease: run out
    assert records.begin_dispatch(job_id, 1, utcnow(), LEASE_S, "t1").outcome == "again"  # the first delivery died
    records.end_dispatch(job_id, 1)
    assert records.begin_dispatch(job_id, 1, utcnow(), LEASE_S, "t1").outcome == "done"
    assert 0 < records.client.ttl(dispatch_key(job_id, 1)) <= 600
    records.finish_run(job_id, 1, "failed", utcnow())
    rerun = records.claim(
        job_id, node_fingerprint="f", model="offline_preview", variations=2, submitted_at=utcnow(), rerun=True
    )
    assert rerun.outcome == "rerun"
    assert records.begin_dispatch(job_id, 2, utcnow(), LEASE_S, "t1").outcome == "new"  # a rerun has its own guard


def test_a_live_dispatch_lease_holds_off_another_delivery_until_it_runs_out(records: JobRecords) -> None:
    job_id = claimed(records)
    assert records.begin_dispatch(job_id, 1, utcnow(), 0.4, "t1").outcome == "new"
    copy = records.begin_dispatch(job_id, 1, utcnow(), LEASE_S, "t2")  # a second delivery, while the first publishes
    assert copy.outcome == "busy" and 0 < copy.lease_left_s <= 0.4
    time.sleep(copy.lease_left_s + 0.05)
    again = records.begin_dispatch(job_id, 1, utcnow(), LEASE_S, "t2")  # the first never finished: it died
    assert again.outcome == "again"
    assert records.renew_dispatches([(job_id, 1, "t1")], LEASE_S) == [False]  # nor take it back from the new holder
    assert (
        records.begin_dispatch(job_id, 1, utcnow(), LEASE_S, "t1").outcome == "busy"
    )  # the new claim holds a lease too
    records.end_dispatch(job_id, 1)
    assert records.begin_dispatch(job_id, 1, utcnow(), LEASE_S, "t1").outcome == "done"
    assert 0 < records.client.ttl(dispatch_key(job_id, 1)) <= 600


def test_a_holder_that_renews_its_dispatch_lease_keeps_other_deliveries_off(records: JobRecords) -> None:
    job_id = claimed(records)
    assert records.begin_dispatch(job_id, 1, utcnow(), 0.5, "holder").outcome == "new"
    keeper = LeaseKeeper(records.renew_dispatches, lease_s=0.5)
    with keeper.holding((job_id, 1, "holder")):  # a publish that takes four leases (a Redis failover)
        for _ in range(8):
            time.sleep(0.25)
            assert records.begin_dispatch(job_id, 1, utcnow(), 0.5, "copy").outcome == "busy"
        records.end_dispatch(job_id, 1)
    assert records.begin_dispatch(job_id, 1, utcnow(), 0.5, "copy").outcome == "done"
    assert records.renew_dispatches([(job_id, 1, "holder")], 0.5) == [False]  # "done" is nobody's claim


def test_a_variation_counts_once_per_run_however_often_it_is_delivered(records: JobRecords) -> None:
    job_id = claimed(records)
    assert records.begin_variation(job_id, 1, 0, 1, 100, "t1", LEASE_S).outcome == "start"
    assert records.count_done(job_id, 1, 0)
    assert not records.count_done(job_id, 1, 0)  # a redelivered copy
    assert records.begin_variation(job_id, 1, 0, 1, 100, "t1", LEASE_S).outcome == "done"  # a copy skips the work
    assert records.begin_variation(job_id, 1, 1, 1, 100, "t1", LEASE_S).outcome == "start"
    assert records.count_done(job_id, 1, 1)
    status = records.read(job_id)
    assert status is not None and status.done == 2
    assert records.client.zscore(progress_key(), job_id) is not None  # progress for the lost-job sweep


def begin(records: JobRecords, job_id: str, token: str, lease_s: float = LEASE_S, run: int = 1) -> VariationClaim:
    """Variation 0 of ``run``, begun by the execution ``token``."""
    return records.begin_variation(job_id, run, 0, 1, 100, token, lease_s)


def started_events(records: JobRecords, job_id: str) -> int:
    return [e.event for e in JobEvents(records.client, 600).read(job_id)].count("variation_started")


def test_a_live_variation_lease_holds_off_a_copy_without_an_event(records: JobRecords) -> None:
    """A copy of the message delivered while the first execution generates (RabbitMQ requeued it
    when that worker's connection dropped) must not call the provider too."""
    job_id = claimed(records)
    assert begin(records, job_id, "first", lease_s=5).outcome == "start"
    copy = begin(records, job_id, "copy")
    assert copy.outcome == "busy" and 4 < copy.lease_left_s <= 5
    assert started_events(records, job_id) == 1  # the copy appended nothing
    assert begin(records, job_id, "first").outcome == "start"  # its holder's own token is not held off
    assert records.begin_variation(job_id, 1, 1, 1, 100, "copy", LEASE_S).outcome == "start"  # another variation


def test_a_released_variation_lease_lets_the_next_attempt_start_at_once(records: JobRecords) -> None:
    job_id = claimed(records)
    assert begin(records, job_id, "attempt-1").outcome == "start"
    assert not records.release_variation(job_id, 1, 0, "someone-else")  # only its owner releases it
    assert begin(records, job_id, "attempt-2").outcome == "busy"
    assert records.release_variation(job_id, 1, 0, "attempt-1")  # it retries later
    assert not records.release_variation(job_id, 1, 0, "attempt-1")
    assert begin(records, job_id, "attempt-2").outcome == "start"  # its retry
    assert started_events(records, job_id) == 2


def test_a_variation_lease_that_ran_out_is_taken_over_and_renewed_only_by_its_owner(records: JobRecords) -> None:
    job_id = claimed(records)
    assert begin(records, job_id, "died", lease_s=0.3).outcome == "start"
    assert records.renew_variations([(job_id, 1, 0, "died")], 0.3) == [True]  # renewed while alive
    copy = begin(records, job_id, "copy")
    assert copy.outcome == "busy" and 0.2 < copy.lease_left_s <= 0.3
    time.sleep(0.35)  # the holder stopped renewing: SIGKILLed
    assert begin(records, job_id, "copy", lease_s=0.3).outcome == "start"
    assert records.renew_variations([(job_id, 1, 0, "died"), (job_id, 1, 0, "copy")], 0.3) == [False, True]
    assert not records.release_variation(job_id, 1, 0, "died")  # nor can it release the new holder's
    assert begin(records, job_id, "died").outcome == "busy"
    assert records.renew_variations([], 1.0) == []


def test_a_holder_that_renews_its_variation_lease_keeps_copies_off(records: JobRecords) -> None:
    jobs = [claimed(records) for _ in range(3)]
    keeper = LeaseKeeper(records.renew_variations, lease_s=0.5, kind="variation")
    for job_id in jobs:
        assert begin(records, job_id, "holder", lease_s=0.5).outcome == "start"
    with keeper.holding((jobs[0], 1, 0, "holder")), keeper.holding((jobs[1], 1, 0, "holder")):
        for _ in range(6):  # a provider call that takes three leases
            time.sleep(0.25)
            assert [begin(records, job_id, "copy", lease_s=0.5).outcome for job_id in jobs[:2]] == ["busy"] * 2
    assert begin(records, jobs[2], "copy").outcome == "start"  # not renewed: ran out long ago


def test_counting_a_variation_removes_its_lease(records: JobRecords) -> None:
    job_id = claimed(records)
    assert begin(records, job_id, "first").outcome == "start"
    assert records.client.hexists(job_key(job_id), "lease:v0")
    counted, _, _ = records.announce_variation(job_id, 1, 0, '{"index":0}', 100)
    assert counted
    assert not records.client.hexists(job_key(job_id), "lease:v0")
    assert begin(records, job_id, "copy").outcome == "done"
    assert records.renew_variations([(job_id, 1, 0, "first")], LEASE_S) == [False]  # nothing to renew
    assert not records.client.hexists(job_key(job_id), "lease:v0")


def test_done_and_stale_win_over_a_live_variation_lease(records: JobRecords) -> None:
    job_id = claimed(records)
    assert begin(records, job_id, "first").outcome == "start"
    records.client.hset(job_key(job_id), "v0", 1)  # counted (by a holder whose lease was taken over)
    assert begin(records, job_id, "copy").outcome == "done"
    records.client.hdel(job_key(job_id), "v0")
    end_as_lost(records, job_id)
    assert begin(records, job_id, "copy").outcome == "stale"


def test_a_canceled_run_is_told_canceled_once_the_lease_is_gone_and_a_copy_waits_for_the_holder(
    records: JobRecords,
) -> None:
    """Cancel stops variations from starting; a copy of one that started already waits for the
    holder's outcome (its image, paid for) rather than counting the variation "canceled"."""
    job_id = claimed(records)
    assert begin(records, job_id, "first").outcome == "start"
    assert records.request_cancel(job_id, 100)[0]
    assert begin(records, job_id, "copy").outcome == "busy"
    assert records.release_variation(job_id, 1, 0, "first")  # e.g. the holder retries after a failure
    assert begin(records, job_id, "copy").outcome == "canceled"
    assert not records.client.hexists(job_key(job_id), "lease:v0")  # "canceled" takes no lease
    assert records.begin_variation(job_id, 1, 1, 1, 100, "other", LEASE_S).outcome == "canceled"


def test_a_rerun_is_not_held_off_by_the_previous_runs_variation_lease(records: JobRecords) -> None:
    job_id = claimed(records)
    assert begin(records, job_id, "run-1").outcome == "start"
    records.finish_run(job_id, 1, "failed", utcnow())
    rerun = records.claim(
        job_id, node_fingerprint="f", model="offline_preview", variations=2, submitted_at=utcnow(), rerun=True
    )
    assert (rerun.outcome, rerun.run) == ("rerun", 2)
    assert begin(records, job_id, "run-2", run=2).outcome == "start"
    assert begin(records, job_id, "run-1").outcome == "stale"
    assert records.renew_variations([(job_id, 1, 0, "run-1"), (job_id, 2, 0, "run-2")], LEASE_S) == [False, True]
    assert not records.release_variation(job_id, 1, 0, "run-1")  # run 1's holder cannot free run 2's lease
    assert begin(records, job_id, "copy", run=2).outcome == "busy"


def test_a_variation_of_a_job_without_a_record_makes_no_record(records: JobRecords) -> None:
    job_id = f"records-gone-{uuid.uuid4().hex[:8]}"  # its record expired
    assert begin(records, job_id, "first").outcome == "start"
    assert not records.client.exists(job_key(job_id))
    assert records.renew_variations([(job_id, 1, 0, "first")], LEASE_S) == [False]
    assert not records.client.exists(job_key(job_id))


def test_counting_creates_no_record_for_an_unknown_job(records: JobRecords) -> None:
    job_id = f"records-{uuid.uuid4().hex[:8]}"
    assert not records.count_done(job_id, 1, 0)
    assert not records.client.exists(job_key(job_id))


def test_finishing_is_one_step(records: JobRecords) -> None:
    job_id = claimed(records)
    assert records.finish_run(job_id, 1, "succeeded", utcnow()) == ("succeeded", True)
    status = records.read(job_id)
    assert status is not None and (status.state, status.result_run) == ("succeeded", 1)
    assert records.client.zscore(progress_key(), job_id) is None


def end_as_lost(records: JobRecords, job_id: str) -> None:
    records.client.zadd(progress_key(), {job_id: 0})  # no progress since the epoch
    assert records.end_lost(job_id, deadline_s=60) is not None


def test_a_run_the_lost_job_sweep_ended_spends_and_writes_nothing(records: JobRecords) -> None:
    """A worker that picks up a lost run's messages later: the document the sweep stored is final."""
    job_id = claimed(records)
    end_as_lost(records, job_id)
    assert records.begin_dispatch(job_id, 1, utcnow(), LEASE_S, "t1").outcome == "stale"
    assert not records.client.exists(dispatch_key(job_id, 1))
    assert records.begin_variation(job_id, 1, 0, 1, 100, "t1", LEASE_S).outcome == "stale"
    assert not records.count_done(job_id, 1, 0)
    assert records.finish_run(job_id, 1, "succeeded", utcnow()) == ("stale", False)
    assert records.begin_prompt_step(job_id, 1, "step-a", LEASE_S).outcome == "stale"
    status = records.read(job_id)
    assert status is not None and (status.state, status.done, status.lost) == ("failed", 0, True)


def test_a_run_a_rerun_replaced_spends_and_writes_nothing(records: JobRecords) -> None:
    job_id = claimed(records)
    end_as_lost(records, job_id)
    rerun = records.claim(
        job_id, node_fingerprint="f", model="offline_preview", variations=2, submitted_at=utcnow(), rerun=True
    )
    assert (rerun.outcome, rerun.run) == ("rerun", 2)
    assert records.begin_dispatch(job_id, 2, utcnow(), LEASE_S, "t1").outcome == "new"
    # Run 1's late messages: nothing starts, nothing counts into run 2, nothing finishes it.
    assert records.begin_dispatch(job_id, 1, utcnow(), LEASE_S, "t1").outcome == "stale"
    assert records.begin_variation(job_id, 1, 0, 1, 100, "t1", LEASE_S).outcome == "stale"
    assert not records.count_done(job_id, 1, 0)
    assert records.finish_run(job_id, 1, "succeeded", utcnow()) == ("stale", False)
    status = records.read(job_id)
    assert status is not None and (status.run, status.state, status.done, status.result_run) == (2, "running", 0, 1)
    assert records.begin_variation(job_id, 2, 0, 1, 100, "t1", LEASE_S).outcome == "start"
    assert records.begin_prompt_step(job_id, 1, "step-a", LEASE_S).outcome == "stale"
    assert records.begin_prompt_step(job_id, 2, "step-a", LEASE_S).outcome == "start"


def test_a_redelivered_finalize_gets_the_state_its_run_ended_with(records: JobRecords) -> None:
    job_id = claimed(records)
    records.begin_dispatch(job_id, 1, utcnow(), LEASE_S, "t1")
    assert records.request_cancel(job_id, 100)[0]
    assert records.finish_run(job_id, 1, "succeeded", utcnow()) == ("canceled", True)
    assert records.finish_run(job_id, 1, "succeeded", utcnow()) == ("canceled", False)  # unchanged


def test_a_runs_finished_records_are_found_at_the_end_of_a_long_log(records: JobRecords) -> None:
    """The log is trimmed to about its MAXLEN: the current run's newest events are at its end,
    past the first MAXLEN entries a forward read would see."""
    job_id = claimed(records)
    events = JobEvents(records.client, 600, max_len=100)
    events.append(job_id, "started", {"run": 1}, 1)
    for attempt in range(150):
        events.append(job_id, "variation_retrying", {"index": 1, "attempt": attempt}, 1)
    error = {"index": 1, "kind": "permanent", "message": "no", "attempts": 150, "duration_ms": 5}
    events.append(job_id, "variation", {"index": 1, "kind": "error", "record": error}, 1)
    assert records.client.xlen(events_key(job_id)) < 200  # trimmed
    found = events.finished_records(job_id, 1)
    assert list(found) == [1] and found[1].message == "no"
    assert events.finished_records(job_id, 2) == {}


def test_the_prompt_steps_checks_are_one_step(records: JobRecords) -> None:
    job_id = claimed(records)
    assert records.begin_prompt_step(job_id, 1, "step-a", LEASE_S).outcome == "start"
    assert records.request_cancel(job_id, 100)[0]
    assert records.begin_prompt_step(job_id, 1, "step-a", LEASE_S).outcome == "canceled"
    records.client.set(prompt_step_key(job_id, 1), "done")
    assert records.begin_prompt_step(job_id, 1, "step-a", LEASE_S).outcome == "done"  # published: a redelivery stops


def test_a_live_prompt_step_lease_holds_off_another_copy_but_not_the_steps_own_retry(records: JobRecords) -> None:
    job_id = claimed(records)
    assert records.begin_prompt_step(job_id, 1, "step-a", 0.4).outcome == "start"
    copy = records.begin_prompt_step(job_id, 1, "step-b", LEASE_S)  # sent again while the first pays
    assert copy.outcome == "busy" and 0 < copy.lease_left_s <= 0.4
    assert records.begin_prompt_step(job_id, 1, "step-a", 0.4).outcome == "start"  # its own retry
    time.sleep(0.45)
    assert records.begin_prompt_step(job_id, 1, "step-b", LEASE_S).outcome == "start"  # the first died
    assert records.begin_prompt_step(job_id, 1, "step-a", LEASE_S).outcome == "busy"
    records.client.set(prompt_step_key(job_id, 1), "done")
    assert records.begin_prompt_step(job_id, 1, "step-a", LEASE_S).outcome == "done"


def test_a_variation_is_announced_only_when_counted_now(records: JobRecords) -> None:
    job_id = claimed(records)
    counted, entry_id, _ = records.announce_variation(job_id, 1, 0, '{"index":0}', 100)
    assert counted and entry_id
    assert records.announce_variation(job_id, 1, 0, '{"index":0}', 100) == (False, "", None)  # a copy
    end_as_lost(records, job_id)
    assert records.announce_variation(job_id, 1, 1, '{"index":1}', 100) == (False, "", None)  # a late one
    assert [e.event for e in JobEvents(records.client, 600).read(job_id)] == ["variation"]


class SentTasks:
    """What ``announce`` sends the broker (the webhook deliveries), kept instead of sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def send_task(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.sent.append((name, kwargs))


def test_a_runs_ending_is_announced_once_however_many_deliveries_end_it(records: JobRecords) -> None:
    """Two finalizes of one run (a redelivery while the first is between storing its document
    and announcing it) each find "completed" missing: only one may append it, and schedule its
    webhook."""
    job_id = claimed(records)
    webhook = Webhook(url="https://hooks.example.com/x", secret="env:HOOK_SECRET")
    records.client.hset(job_key(job_id), "webhook", webhook.model_dump_json())
    records.finish_run(job_id, 1, "succeeded", utcnow())
    sender = SentTasks()

    def deliver(_: int) -> str | None:
        return announce(records, sender, job_id, 1, "completed", {"status": "succeeded"}, 100, 60)

    with ThreadPoolExecutor(8) as pool:
        appended = [entry for entry in pool.map(deliver, range(16)) if entry is not None]
    assert len(appended) == 1
    assert [(e.event, e.run) for e in JobEvents(records.client, 600).read(job_id)] == [("completed", 1)]
    assert len(sender.sent) == 1  # one webhook delivery
    assert 0 < records.client.ttl(events_key(job_id)) <= 60  # the log's retention after the ending

    records.finish_run(job_id, 1, "failed", utcnow())  # (already ended: no change)
    records.client.hset(job_key(job_id), mapping={"state": "failed"})
    assert (
        records.claim(
            job_id, node_fingerprint="f", model="offline_preview", variations=2, submitted_at=utcnow(), rerun=True
        ).outcome
        == "rerun"
    )
    assert deliver(0) is None  # run 1 still announced
    assert announce(records, sender, job_id, 2, "completed", {"status": "failed"}, 100, 60) is not None  # the rerun's
    assert [(e.event, e.run) for e in JobEvents(records.client, 600).read(job_id)] == [
        ("completed", 1),
        ("completed", 2),
    ]


def test_the_ending_of_a_job_without_a_record_is_appended_without_making_one(records: JobRecords) -> None:
    job_id = f"records-gone-{uuid.uuid4().hex[:8]}"  # its record expired
    appended, entry_id, webhook = records.announce_ending(job_id, 1, '{"status":"failed"}', 100, 60)
    assert appended and entry_id and webhook is None
    assert not records.client.exists(job_key(job_id))
