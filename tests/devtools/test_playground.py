"""``make playground`` prints where things are, never a credential."""

from __future__ import annotations

from typing import Any

import pytest

from devtools import playground
from devtools.redis_server import RedisServer


class _Stopped:
    def poll(self) -> int:
        return 1


class _Fake:
    def __init__(self, env: dict[str, str], **_: Any) -> None:
        self.url, self.log_path, self.process = "http://127.0.0.1:1", "/dev/null", _Stopped()

    def __enter__(self) -> _Fake:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def log(self) -> str:
        return ""


def test_playground_does_not_print_the_redis_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "redis://:playground-secret-pw@127.0.0.1:6390/0"
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setattr(playground, "ensure_redis", lambda _: RedisServer(url))
    monkeypatch.setattr(playground, "ApiProcess", _Fake)
    monkeypatch.setattr(playground, "WorkerProcess", _Fake)
    assert playground.main() == 1
    out = capsys.readouterr().out
    assert "redis:" in out and "127.0.0.1:6390" in out
    assert "playground-secret-pw" not in out
