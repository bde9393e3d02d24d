"""``make demo``: the seed's example node, end to end, on embedded defaults.

Uses ``REDIS_URL`` if a Redis answers there, else starts an embedded one;
starts a real worker; submits the seed example with the offline preview model
(no API key, no cloud account); prints the result document and checks the
image files; stops what it started.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from contract.redis_client import redacted_url
from contract.settings import Settings, SettingsError
from devtools.redis_server import RedisUnusable, ensure_redis
from devtools.worker_process import ROOT, WorkerProcess

SEED_NODE = ROOT / "examples" / "seed-node.json"


def main() -> int:
    try:
        settings = Settings()
        redis = ensure_redis(settings.redis_url)
    except (SettingsError, RedisUnusable, RuntimeError) as exc:  # RuntimeError: a server that would not start
        print(f"demo: {exc} (REDIS_URL; unset it to use an embedded Redis)", file=sys.stderr)
        return 2
    print(f"redis:  {'embedded server started at ' if redis.embedded else 'using '}{redacted_url(redis.url)}")
    env = {
        "REDIS_URL": redis.url,
        "IMAGEGEN_STORAGE_URL": os.environ.get("IMAGEGEN_STORAGE_URL", str(ROOT / "var" / "images")),
    }
    os.environ.update(env)
    node = json.loads(SEED_NODE.read_text())
    node["inputs"]["model"] = "offline_preview"
    print(f"node:   {SEED_NODE.relative_to(ROOT)} with model gemini_3_image -> offline_preview (no API key needed)")
    try:
        with WorkerProcess(env, concurrency=4) as worker:
            print(f"worker: started (log {worker.log_path})")
            from producer.client import ImageGenClient  # after REDIS_URL is final

            client = ImageGenClient(Settings())
            handle = client.submit(node)
            print(f"job:    {handle.job_id} submitted; waiting")
            result = handle.wait(timeout=120)
            client.close()
        print(json.dumps(result.model_dump(mode="json"), indent=2))
        return _check_files(result.model_dump(mode="json"), result.status)
    finally:
        redis.stop()


def _check_files(document: dict[str, object], status: str) -> int:
    images = document["images"]
    assert isinstance(images, list)
    for image in images:
        path = Path(unquote(urlparse(image["uri"]).path))
        with Image.open(path) as decoded:
            decoded.load()
            print(f"image:  {path}  {decoded.format} {decoded.width}x{decoded.height}")
    print(f"status: {status}")
    return 0 if status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
