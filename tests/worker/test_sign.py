"""The sign task's outcomes at its seam: whatever goes wrong, the caller gets an outcome, not a
worker exception (the producer never unpickles worker errors), and the log gets the traceback."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from contract.work import SignRequest
from worker.tasks import sign


def test_an_internal_error_is_an_outcome_and_a_logged_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> Any:
        raise TypeError("sequence item 0: expected str instance, NoneType found")

    monkeypatch.setattr(sign, "location_for", broken)
    request = SignRequest(uri="s3://bucket/t/acme/job/variation-0.png")
    with caplog.at_level(logging.ERROR, logger=sign.__name__):
        outcome = sign.sign_url.apply(args=(request.model_dump(mode="json"),)).get()
    assert outcome == {
        "uri": request.uri,
        "error": {"kind": "permanent", "message": "internal error in the worker (logged)"},
    }
    assert "TypeError: sequence item 0" in caplog.text


def test_a_sign_past_its_time_limit_is_worth_asking_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # The catch-all called a slow Vault or IAM call a permanent internal error.
    def slow(*args: Any) -> Any:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(sign, "location_for", slow)
    request = SignRequest(uri="s3://bucket/t/acme/job/variation-0.png")
    outcome = sign.sign_url.apply(args=(request.model_dump(mode="json"),)).get()
    assert outcome["error"]["kind"] == "transient"
