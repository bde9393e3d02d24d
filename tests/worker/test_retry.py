"""Backoff with jitter, the server's delay honoured, a bounded budget."""

from __future__ import annotations

from worker.retry import RetryPolicy

POLICY = RetryPolicy(max_retries=5, base_delay_s=2.0, max_delay_s=60.0, max_total_s=600.0)


def test_countdown_grows_exponentially_within_jitter_bounds() -> None:
    for retries in range(8):
        ceiling = min(60.0, 2.0 * 2**retries)
        samples = [POLICY.countdown(retries) for _ in range(200)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples)
        assert len(set(samples)) > 1  # jittered, so pods do not retry in lockstep


def test_server_delay_is_a_floor() -> None:
    assert POLICY.countdown(0, server_delay_s=30.0) == 30.0
    assert POLICY.countdown(0, server_delay_s=120.0) == 120.0  # above max_delay: still honoured


def test_budget_limits_retries_and_total_time() -> None:
    assert POLICY.refusal(retries_done=0, countdown_s=2, elapsed_s=0) is None
    assert POLICY.refusal(retries_done=5, countdown_s=2, elapsed_s=0) == "5 retries used"
    assert "retry budget" in str(POLICY.refusal(retries_done=1, countdown_s=50, elapsed_s=560))


def test_a_server_delay_beyond_the_ceiling_ends_the_retries() -> None:
    # e.g. a daily-quota 429 asking for hours: give up now rather than hold a
    # message past the visibility timeout.
    assert POLICY.refusal(retries_done=0, countdown_s=60, elapsed_s=0) is None
    assert "asked to wait 61 s" in str(POLICY.refusal(retries_done=0, countdown_s=61, elapsed_s=0))
