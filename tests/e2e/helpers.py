"""Reading back what a job left behind: image files and schema conformance."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import jsonschema
from PIL import Image

from contract.result import SCHEMA_FILE, JobResult


def image_file(record_uri: str) -> Path:
    return Path(unquote(urlparse(record_uri).path))


def assert_images_on_disk(result: JobResult) -> None:
    for image in result.images:
        path = image_file(image.uri)
        with Image.open(path) as decoded:
            decoded.load()
            assert (decoded.width, decoded.height) == (image.width, image.height)
        assert path.stat().st_size == image.bytes


def assert_matches_published_schema(result: JobResult) -> None:
    jsonschema.validate(result.model_dump(mode="json"), json.loads(SCHEMA_FILE.read_text()))
