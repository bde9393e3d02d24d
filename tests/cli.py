"""Run ``imagegen`` as a user does: a separate process with its own environment."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def imagegen(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producer.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
