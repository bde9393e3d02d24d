"""CPU and copies per upload, for each storage backend, in one process (a helper of
benchmarks/figures.py).

    python benchmarks/upload_cost.py [--uploads 20]

Run as a script with ``PYTHONPATH`` set to the checkout to measure. It starts the
emulators the tests use (moto for S3, Azurite, gcp-storage-emulator: `make tools`
installs Azurite), each in its own process so their CPU is not counted, and uploads
one photo-like 1024x1024 PNG (the fake Gemini server's, ~1.65 MB) through the
platform store of each backend, as a variation does (``Location.put``). Prints one
JSON object per backend: this process's CPU per upload (the SDK's request building,
checksums, signing and HTTP), the wall time (the emulator's share included: only
for orientation), and the most Python memory one upload held at once beyond the
image itself, in image sizes (tracemalloc, a separate pass): 0 means the bytes
went out as they were, 1 means one whole copy was made on the way.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

META = {"job_id": "bench", "model": "gemini_3_image", "model_id": "bench", "variation": "0"}


@contextmanager
def backends(workdir: Path) -> Iterator[dict[str, str]]:
    """Each backend's IMAGEGEN_STORAGE_URL, with the emulators started and the environment set."""
    import boto3
    from azure.storage.blob import BlobServiceClient
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from devtools.emulators import service_account_json, start_azurite, start_gcs, start_moto

    bucket = f"imagegen-bench-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        moto, azurite, gcs = (start() for start in (start_moto, start_azurite, start_gcs))
        for emulator in (moto, azurite, gcs):
            stack.callback(emulator.stop)
        key_file = workdir / "sa.json"
        key_file.write_text(service_account_json())
        os.environ.update(
            AWS_ENDPOINT_URL_S3=moto.url,
            AWS_ACCESS_KEY_ID="platform-key",
            AWS_SECRET_ACCESS_KEY="platform-secret",
            AWS_EC2_METADATA_DISABLED="true",
            AZURE_STORAGE_CONNECTION_STRING=azurite.extra["connection_string"],
            STORAGE_EMULATOR_HOST=gcs.url,
            GOOGLE_APPLICATION_CREDENTIALS=str(key_file),
            NO_GCE_CHECK="True",
        )
        boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1").create_bucket(Bucket=bucket)
        BlobServiceClient.from_connection_string(azurite.extra["connection_string"]).create_container(bucket)
        anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
        storage.Client(
            project="imagegen-bench", credentials=anonymous, client_options={"api_endpoint": gcs.url}
        ).create_bucket(bucket)
        yield {
            "local": str(workdir / "local"),
            "s3": f"s3://{bucket}/bench",
            "azure": f"az://{bucket}/bench",
            "gcs": f"gs://{bucket}/bench",
        }


def held_beyond(action: Callable[[], Any], size: int) -> float:
    """The most Python memory ``action`` held at once, in multiples of ``size``."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        action()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uploads", type=int, default=20)
    args = parser.parse_args()

    from contract.settings import Settings
    from devtools.fake_gemini import render_photo
    from worker.malloc import keep_image_buffers
    from worker.storage import clear_store_cache, location_for

    keep_image_buffers()  # as the worker does at start
    data = render_photo((1024, 1024))
    with tempfile.TemporaryDirectory(prefix="imagegen-upload-") as workdir, backends(Path(workdir)) as urls:
        for name, url in urls.items():
            clear_store_cache()
            location = location_for(None, Settings(storage_url=url))
            count = iter(range(1_000_000))

            def upload() -> None:
                location.put("bench-job", next(count), 1, "png", data, "image/png", META)  # noqa: B023

            for _ in range(3):  # connections, credentials, imports
                upload()
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            for _ in range(args.uploads):
                upload()
            cpu_ms = (time.process_time() - cpu_start) * 1000 / args.uploads
            wall_ms = (time.perf_counter() - wall_start) * 1000 / args.uploads
            copies = min(held_beyond(upload, len(data)) for _ in range(3))
            figures = {"backend": name, "png_bytes": len(data), "cpu_ms": cpu_ms, "wall_ms": wall_ms, "copies": copies}
            print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
