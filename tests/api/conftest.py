"""The HTTP API as callers meet it: ``imagegen serve`` (real uvicorn) in its own process, on a
free port, against the suite's real Redis and real workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from devtools.api_process import ApiProcess

TOKENS = {"acme": "acme-token-0123456789abcdef", "globex": "globex-token-0123456789abcdef"}
TOKEN_ENV = {
    "IMAGEGEN_API_TOKENS": "acme=env:TEST_API_TOKEN_ACME,globex=env:TEST_API_TOKEN_GLOBEX",
    "TEST_API_TOKEN_ACME": TOKENS["acme"],
    "TEST_API_TOKEN_GLOBEX": TOKENS["globex"],
}


@dataclass
class ApiServer:
    """A running ``imagegen serve`` (devtools/api_process.py) and the HTTP clients a test opened."""

    process: ApiProcess
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.process.url

    def client(self, tenant: str | None = "acme", token: str | None = None, **kwargs: Any) -> httpx.Client:
        """An HTTP client; ``tenant`` picks its token, ``token`` overrides it, both None: no header."""
        token = token if token is not None else TOKENS.get(tenant or "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=kwargs.pop("timeout", 30.0), **kwargs)
        self.clients.append(client)
        return client

    def log(self) -> str:
        return self.process.log()

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.process.stop()


StartApi = Callable[..., ApiServer]


@pytest.fixture
def start_api(job_env: dict[str, str], tmp_path: Path) -> Iterator[StartApi]:
    """Start ``imagegen serve`` with the test's environment (+ ``env``); stopped after the test."""
    servers: list[ApiServer] = []

    def start(env: dict[str, str] | None = None, tokens: bool = True) -> ApiServer:
        log_dir = tmp_path / f"api-{len(servers)}"
        log_dir.mkdir()
        process = ApiProcess({**job_env, **(TOKEN_ENV if tokens else {}), **(env or {})}, log_dir=str(log_dir))
        server = ApiServer(process)
        servers.append(server)
        try:
            process.start()
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def api(start_api: StartApi) -> ApiServer:
    """An API with two tenants (acme, globex)."""
    return start_api()


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def wait_finished(client: httpx.Client, job_id: str, timeout: float = 90) -> dict[str, Any]:
    """The job's view once finished: follows its event stream, which the server closes after the
    current run's ``completed`` (no polling)."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        events = read_sse(response)
        assert events[-1]["event"] == "completed", events
    view = client.get(f"/v1/jobs/{job_id}").json()
    assert view["result"] is not None, (view, [(e["id"], e["event"], e["data"].get("run")) for e in events])
    return dict(view)


def read_sse(
    response: httpx.Response, stop_after: int | None = None, until: Callable[[dict[str, Any]], bool] | None = None
) -> list[dict[str, Any]]:
    """Server-sent events of a streaming response: [{id, event, data}], up to ``stop_after`` of them
    or up to the first for which ``until`` is true (else to the end of the stream)."""
    import json

    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in response.iter_lines():
        if line == "":
            if "event" in current:
                current["data"] = json.loads(current.get("data", "null"))
                events.append(current)
                if (stop_after is not None and len(events) >= stop_after) or (until and until(current)):
                    return events
            current = {}
        elif line.startswith(":"):
            continue  # keep-alive comment
        else:
            name, _, value = line.partition(":")
            current[name] = value.removeprefix(" ")
    return events
