"""Provider quotas are configuration, checked at start-up."""

from __future__ import annotations

import pytest

from contract.rate_limits import RateLimit, parse_rate_limits
from contract.settings import Settings, SettingsError


def test_parse_rate_limits() -> None:
    limits = parse_rate_limits(" gemini-3-pro-image=20:5 , gemini-2.5-flash-image=100 ")
    assert limits == {"gemini-3-pro-image": RateLimit(20, 5), "gemini-2.5-flash-image": RateLimit(100, 1)}
    assert limits["gemini-3-pro-image"].interval_s == 3.0
    assert parse_rate_limits("") == {}


@pytest.mark.parametrize(
    "spec",
    ["gemini=fast", "=10", "gemini-3-pro-image", "m=0", "m=10:0", "m=10:x", "m=nan", "m=inf", "m=1e-300", "m=-5"],
)
def test_bad_rate_limits_fail_at_start_up(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_RATE_LIMITS", spec)
    with pytest.raises(SettingsError, match="MODEL_ID=PER_MINUTE"):
        Settings()
