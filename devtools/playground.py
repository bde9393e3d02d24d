"""``make playground``: Redis (yours, or an embedded one), a worker and the API, then the URL.

Development mode on embedded defaults: no token (one anonymous tenant), the offline
preview model, images under var/images served by the API at /files so the page can
show them. Ctrl-C stops what it started.
"""

from __future__ import annotations

import os
import sys
import time

from contract.redis_client import redacted_url
from contract.settings import Settings
from devtools.api_process import ApiProcess
from devtools.redis_server import ensure_redis
from devtools.worker_process import ROOT, WorkerProcess


def main() -> int:
    settings = Settings()
    redis = ensure_redis(settings.redis_url)
    port = int(os.environ.get("IMAGEGEN_PLAYGROUND_PORT", "8000"))
    images = os.environ.get("IMAGEGEN_STORAGE_URL", str(ROOT / "var" / "images"))
    env = {
        "REDIS_URL": redis.url,
        "IMAGEGEN_STORAGE_URL": images,
        "IMAGEGEN_STORAGE_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}/files",
    }
    try:
        with ApiProcess(env, port=port) as api, WorkerProcess(env, concurrency=8) as worker:
            print(f"redis:      {'embedded server at ' if redis.embedded else ''}{redacted_url(redis.url)}")
            print(f"worker:     log {worker.log_path}")
            print(f"api:        log {api.log_path}")
            print(f"\nPlayground: {api.url}/playground/   (Ctrl-C to stop)\n", flush=True)
            while api.process is not None and api.process.poll() is None:
                time.sleep(1)
            print(f"the API stopped; log:\n{api.log()[-2000:]}")
            return 1
    except KeyboardInterrupt:
        return 0
    finally:
        redis.stop()


if __name__ == "__main__":
    sys.exit(main())
