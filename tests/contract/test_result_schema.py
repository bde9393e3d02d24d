"""The published JSON Schema is the one the code produces."""

from __future__ import annotations

import json

from contract.result import SCHEMA_FILE, result_json_schema


def test_published_schema_is_up_to_date() -> None:
    published = json.loads(SCHEMA_FILE.read_text())
    assert published == result_json_schema(), (
        "run: python -c 'from contract.result import write_result_schema as w; w()'"
    )


def test_schema_names_the_documented_fields() -> None:
    schema = result_json_schema()
    assert {"job_id", "status", "images", "errors", "usage", "estimated_cost_usd"} <= set(schema["properties"])
    defs = schema["$defs"]
    assert set(defs["ErrorRecord"]["properties"]["kind"]["enum"]) == {
        "transient_exhausted",
        "permanent",
        "blocked",
        "storage",
        "timeout",
        "lost",
        "canceled",
    }
    assert {"url", "uri", "mime_type", "width", "height", "sha256", "attempts"} <= set(
        defs["ImageRecord"]["properties"]
    )
