"""The job record's worker-side steps, each one round trip: claiming a run's dispatch,
counting a variation once however often it is delivered, and finishing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from contract.jobs import JobRecords, utcnow
from contract.queue import dispatch_key, job_key, progress_key


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
    assert records.begin_dispatch(job_id, 1, utcnow()) == "new"
    status = records.read(job_id)
    assert status is not None and status.state == "running" and status.started_at
    assert records.begin_dispatch(job_id, 1, utcnow()) == "again"  # pending: the first delivery died
    records.end_dispatch(job_id, 1)
    assert records.begin_dispatch(job_id, 1, utcnow()) == "done"
    assert records.begin_dispatch(job_id, 2, utcnow()) == "new"  # a rerun has its own guard
    assert 0 < records.client.ttl(dispatch_key(job_id, 1)) <= 600


def test_a_variation_counts_once_per_run_however_often_it_is_delivered(records: JobRecords) -> None:
    job_id = claimed(records)
    assert not records.variation_done(job_id, 1, 0)
    assert records.count_done(job_id, 1, 0)
    assert not records.count_done(job_id, 1, 0)  # a redelivered copy
    assert records.variation_done(job_id, 1, 0) and not records.variation_done(job_id, 2, 0)
    assert records.count_done(job_id, 1, 1)
    status = records.read(job_id)
    assert status is not None and status.done == 2
    assert records.client.zscore(progress_key(), job_id) is not None  # progress for the lost-job sweep


def test_counting_creates_no_record_for_an_unknown_job(records: JobRecords) -> None:
    job_id = f"records-{uuid.uuid4().hex[:8]}"
    assert not records.count_done(job_id, 1, 0)
    assert not records.client.exists(job_key(job_id))


def test_finishing_is_one_step(records: JobRecords) -> None:
    job_id = claimed(records)
    records.mark_finished(job_id, 1, "succeeded", utcnow())
    status = records.read(job_id)
    assert status is not None and (status.state, status.result_run) == ("succeeded", 1)
    assert records.client.zscore(progress_key(), job_id) is None
