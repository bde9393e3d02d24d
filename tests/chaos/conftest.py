"""The chaos suite (`make chaos`): not part of `make test` (pytest -m chaos).

Each test owns its servers where a fault would disturb others (a Redis it
restarts, pauses or fills), starts real worker processes with their own log
files, and adds one row to the table printed at the end of the session and
written to var/chaos.md (docs/reliability.md holds the latest one).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from contract.settings import Settings
from producer.client import ImageGenClient
from tests.broker.conftest import rabbitmq
from tests.chaos.harness import ROWS, table
from tests.cloud.conftest import moto, s3_admin, s3_bucket
from tests.conftest import ROOT

__all__ = ["moto", "rabbitmq", "s3_admin", "s3_bucket"]

MakeClient = Callable[[dict[str, str]], ImageGenClient]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    text = table()
    terminalreporter.write_sep("=", "chaos table")
    terminalreporter.write_line(text)
    out = ROOT / "var" / "chaos.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(f"load average at the end: {os.getloadavg()[0]:.2f}\n\n{text}\n")


@pytest.fixture
def make_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeClient]:
    """A producer client with ``env`` (its own Redis or broker)."""
    clients: list[ImageGenClient] = []

    def make(env: dict[str, str]) -> ImageGenClient:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        client = ImageGenClient(Settings())
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
