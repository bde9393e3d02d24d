"""CPU per Gemini image, stage by stage, in one process (a helper of benchmarks/figures.py).

    python benchmarks/decode_cost.py --base-url http://127.0.0.1:PORT [--images 30]

Run as a script with ``PYTHONPATH`` set to the checkout to measure. The fake
Gemini server at ``--base-url`` must answer with photo-like images
(``image_kind="photo"``) and run in another process, so its CPU is not counted.
Prints one JSON object: milliseconds of this thread's CPU per image for each stage, and per
whole SDK call for a tiny PNG with and without ``worker/providers/genai_lookup.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any


def cpu_ms(action: Callable[[], Any], repeat: int) -> float:
    start = time.thread_time()
    for _ in range(repeat):
        action()
    return (time.thread_time() - start) * 1000 / repeat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--images", type=int, default=30)
    args = parser.parse_args()
    os.environ.update(GEMINI_API_KEY="benchmark-key", GOOGLE_API_KEY="", GOOGLE_GEMINI_BASE_URL=args.base_url)

    from PIL import Image

    from contract.catalog import load_catalog
    from contract.settings import Settings
    from worker.imaging import inspect_image
    from worker.malloc import keep_image_buffers
    from worker.providers import GenerationRequest, provider_for
    from worker.storage.local import LocalStore

    keep_image_buffers()  # as the worker does at start: no page faults per image buffer
    settings = Settings()
    provider = provider_for("gemini", settings)
    entry = load_catalog().models["gemini_3_image"]
    request = GenerationRequest("a red car", "gemini_3_image", entry, "1024x1024", 0, 7, 1)
    data = provider.generate(request).data  # warm: connection, imports
    store = LocalStore(tempfile.mkdtemp(prefix="imagegen-decode-"))

    def header() -> None:
        with Image.open(io.BytesIO(data)) as image:
            image.size  # noqa: B018

    n = args.images
    figures = {
        "png_bytes": len(data),
        "decode_ms": cpu_ms(lambda: provider.generate(request), n),  # HTTP read, JSON, base64, SDK types
        "verify_ms": cpu_ms(header, n),  # the header only
        "hash_ms": cpu_ms(lambda: hashlib.sha256(data).hexdigest(), n),
        "inspect_ms": cpu_ms(lambda: inspect_image(data), n),  # verify + hash as the worker does it
        "upload_ms": cpu_ms(lambda: store.put("job/variation-0.png", data, "image/png", {}), n),  # local disk
    }
    figures.update(tiny_call_ms(provider, request, args.base_url, n))
    print(json.dumps(figures))


def tiny_call_ms(provider: Any, request: Any, base_url: str, n: int) -> dict[str, float]:
    """A whole SDK call whose answer is a tiny PNG (its cost is the request and the SDK's types),
    as the worker makes it and with the SDK's own ``in`` (a checkout without the module: both alike)."""
    from google.genai import _common

    from devtools.fake_gemini import FakeGeminiControl

    fake = FakeGeminiControl(base_url)
    fake.set_image_kind("solid")
    ours = vars(_common.BaseModel).get("__contains__")
    try:
        figures = {"call_ms": cpu_ms(lambda: provider.generate(request), 3 * n)}
        if ours is not None:
            delattr(_common.BaseModel, "__contains__")
        figures["call_plain_ms"] = cpu_ms(lambda: provider.generate(request), 3 * n)
    finally:
        if ours is not None:
            _common.BaseModel.__contains__ = ours  # type: ignore[operator]
        fake.set_image_kind("photo")
    return figures


if __name__ == "__main__":
    main()
