"""End-to-end fixtures: the fake Gemini server (devtools/fake_gemini.py) and a real worker
whose google-genai SDK talks to it with a canary key (searched for in logs and Redis)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.fake_gemini import FakeGemini
from devtools.worker_process import WorkerProcess
from tests.conftest import StartWorker

GEMINI_KEY = "AIzaCANARY-e2e-5b7d1f9a3c"  # distinctive: searched for everywhere afterwards


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=GEMINI_KEY) as server:
        yield server


@pytest.fixture
def gemini_worker(start_worker: StartWorker, fake: FakeGemini) -> WorkerProcess:
    return start_worker(
        env={
            "GOOGLE_GEMINI_BASE_URL": fake.base_url,
            "GEMINI_API_KEY": GEMINI_KEY,
            "GOOGLE_API_KEY": "",  # the machine's own key would win over ours
            "GOOGLE_GENAI_USE_VERTEXAI": "false",
            "IMAGEGEN_GEMINI_TIMEOUT_S": "10",
            "IMAGEGEN_RETRY_BASE_DELAY_S": "0.1",
        }
    )
