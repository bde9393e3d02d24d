"""Test helpers for the cloud tests: node storage fields per provider, a
fault-injecting HTTP proxy and a throwaway GCP service-account key."""

from __future__ import annotations

import http.client
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from contract.clouds import node_target
from contract.settings import Settings
from worker.storage import ImageStore, location_for

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
META = {"job_id": "job-1", "model": "offline_preview", "model_id": "offline-preview-1", "variation": "0"}

_BUCKET_FIELD = {"aws": "aws_bucket", "azure": "azure_container", "gcp": "gcp_bucket"}
_CREDENTIAL_FIELD = {"aws": "aws_credentials", "azure": "azure_connection_string", "gcp": "gcp_credentials"}


def storage_fields(provider: str, bucket: str, credentials: str | None = None, **extra: Any) -> dict[str, Any]:
    """A node's storage inputs for ``provider`` (credentials: a secret reference)."""
    fields = {"use_cloud": True, "cloud_provider": provider, _BUCKET_FIELD[provider]: bucket, **extra}
    return {**fields, _CREDENTIAL_FIELD[provider]: credentials} if credentials else fields


aws_node = partial(storage_fields, "aws")
azure_node = partial(storage_fields, "azure")
gcp_node = partial(storage_fields, "gcp")


class FlakyProxy:
    """Forwards HTTP to ``upstream``, but answers the first ``failures`` requests
    whose "METHOD /path" starts with ``only`` itself: with ``status`` (e.g. 503),
    or by dropping the connection (status 0). ``requests`` lists those requests."""

    def __init__(self, upstream: str, failures: int = 0, status: int = 503, only: str = ""):
        self.upstream = urlsplit(upstream)
        self.failures = failures
        self.status = status
        self.only = only
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> FlakyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                line = f"{self.command} {self.path}"
                with proxy._lock:
                    counted = line.startswith(proxy.only)
                    if counted:
                        proxy.requests.append(line)
                    fail = counted and len(proxy.requests) <= proxy.failures
                if fail and proxy.status == 0:
                    self.close_connection = True
                    self.connection.close()  # a broken connection, no response at all
                    return
                if fail:
                    self.send_response(proxy.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                upstream.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        return Handler


def store_for_fields(fields: dict[str, Any], settings: Settings) -> tuple[ImageStore, str]:
    """The store (and key prefix) a job with these node storage fields writes to, as the worker opens it."""
    target = node_target(fields, settings.target_policy) if fields.get("use_cloud") else None
    location = location_for(target, settings)
    return location.store, location.prefix
