"""The job's cost counts every image the provider billed: stored ones, and ones whose upload
failed after the generation (their price is on their error record)."""

from __future__ import annotations

from contract.result import ErrorRecord, GenerationMetadata, Usage
from worker.tasks.finalize import _total_cost, _total_usage

BILLED = GenerationMetadata(provider="gemini", response_id="r-1", usage=Usage(prompt_tokens=5, total_tokens=9))


def _error(**billed: object) -> ErrorRecord:
    return ErrorRecord.model_validate(
        {"index": 0, "kind": "storage", "message": "S3 bucket 'b': access denied", "attempts": 1, "duration_ms": 5}
        | billed
    )


def test_an_image_billed_but_not_stored_counts_and_other_errors_do_not() -> None:
    errors = [_error(estimated_cost_usd=0.134, metadata=BILLED), _error(), _error(estimated_cost_usd=0.134)]
    assert _total_cost([], None, errors) == 0.268
    assert _total_usage([], None, errors) == BILLED.usage
    assert _total_cost([], None, [_error()]) == 0.0  # nothing billed: free


def test_an_unpriced_image_billed_but_not_stored_makes_the_cost_unknown() -> None:
    assert _total_cost([], None, [_error(metadata=BILLED)]) is None  # unknown, not free
