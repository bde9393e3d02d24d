"""Node validation: every problem at once, each naming field, value and what is allowed."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from contract.catalog import load_catalog
from contract.node import NodeValidationError, validate_node
from contract.settings import Settings


def problems(node: Any, settings: Settings | None = None) -> dict[str, str]:
    with pytest.raises(NodeValidationError) as caught:
        validate_node(node, settings or Settings())
    return {p.field: str(p) for p in caught.value.problems}


def with_inputs(node: dict[str, Any], **inputs: Any) -> dict[str, Any]:
    changed = copy.deepcopy(node)
    changed["inputs"].update(inputs)
    return changed


def test_seed_json_is_accepted_verbatim(seed_node: dict[str, Any]) -> None:
    node = validate_node(json.dumps(seed_node), Settings())
    assert node.name == "Test Image Generation"
    assert node.inputs.variations == 1  # the seed's string "1"
    assert node.inputs.use_cloud is False
    assert node.inputs.model == "gemini_3_image"


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), (3, 3), (" 2 ", 2)])
def test_variations_accept_strings_and_integers(seed_node: dict[str, Any], raw: Any, expected: int) -> None:
    assert validate_node(with_inputs(seed_node, variations=raw), Settings()).inputs.variations == expected


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("false", False), (True, True), ("False", False)])
def test_use_cloud_accepts_booleans_and_ui_strings(seed_node: dict[str, Any], raw: Any, expected: bool) -> None:
    cloud = {"aws_bucket": "bucket", "aws_credentials": "env:TENANT_AWS"} if expected else {}
    node = with_inputs(seed_node, use_cloud=raw, **cloud)
    assert validate_node(node, Settings()).inputs.use_cloud is expected


def test_cloud_fields_with_use_cloud_false_are_named_not_ignored(seed_node: dict[str, Any]) -> None:
    # They validated, and the images went to the platform storage instead of the named bucket.
    node = with_inputs(seed_node, use_cloud=False, aws_bucket="bucket", aws_credentials="env:TENANT_AWS")
    found = problems(node)
    assert set(found) == {"inputs.aws_bucket", "inputs.aws_credentials"}
    assert "is used only when use_cloud is true" in found["inputs.aws_bucket"]
    assert "TENANT_AWS" not in found["inputs.aws_credentials"]
    validate_node(with_inputs(seed_node, use_cloud=False, cloud_provider="gcp"), Settings())  # the seed's own shape
    validate_node(
        with_inputs(seed_node, use_cloud=False, aws_bucket="", gcp_credentials=None), Settings()
    )  # a form's blanks
    validate_node(with_inputs(seed_node, use_cloud=False, cloud_provider=""), Settings())  # ... its empty dropdown
    required = problems(with_inputs(seed_node, use_cloud=True, cloud_provider=" "))["inputs.cloud_provider"]
    assert "is required when use_cloud is true; allowed: aws, azure, gcp" in required


def test_every_problem_is_reported_at_once(seed_node: dict[str, Any]) -> None:
    node = with_inputs(seed_node, user_query="  ", model="gemini_9", variations="0", size="big", promt="x")
    node["type"] = "image_gen"
    found = problems(node)
    assert set(found) == {
        "type",
        "inputs.user_query",
        "inputs.model",
        "inputs.variations",
        "inputs.size",
        "inputs.promt",
    }
    assert found["type"] == "type = \"image_gen\": must be 'image_generation'"
    assert "must be a non-empty prompt" in found["inputs.user_query"]
    assert '"gemini_9"' in found["inputs.model"] and "gemini_2_5_image, " in found["inputs.model"]
    assert found["inputs.variations"] == 'inputs.variations = "0": must be from 1 to 8'
    assert '"big"' in found["inputs.size"] and "WIDTHxHEIGHT" in found["inputs.size"]
    assert "did you mean 'user_query'?" in found["inputs.promt"]


def test_size_unsupported_by_model_lists_that_models_sizes(seed_node: dict[str, Any]) -> None:
    found = problems(with_inputs(seed_node, model="gemini_2_5_image", size="1000x1000"))
    message = found["inputs.size"]
    assert '"1000x1000"' in message and "gemini_2_5_image" in message
    allowed = load_catalog().models["gemini_2_5_image"].sizes
    assert all(size in message for size in allowed)
    assert "2048x2048" not in message  # another model's size is not offered


@pytest.mark.parametrize("model", load_catalog().names())
def test_every_catalog_size_validates_for_its_model(seed_node: dict[str, Any], model: str) -> None:
    for size in load_catalog().models[model].sizes:
        assert validate_node(with_inputs(seed_node, model=model, size=size), Settings()).inputs.size == size


def test_sizes_differ_per_model(seed_node: dict[str, Any]) -> None:
    assert validate_node(with_inputs(seed_node, model="gemini_3_image", size="4096x4096"), Settings())
    assert "inputs.size" in problems(with_inputs(seed_node, model="gemini_2_5_image", size="4096x4096"))
    assert "inputs.size" in problems(with_inputs(seed_node, model="gemini_3_image", size="832x1248"))


def test_variations_maximum_is_configurable(seed_node: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    assert "inputs.variations" in problems(with_inputs(seed_node, variations=9))
    monkeypatch.setenv("IMAGEGEN_MAX_VARIATIONS", "12")
    assert validate_node(with_inputs(seed_node, variations=12), Settings()).inputs.variations == 12


@pytest.mark.parametrize("bad", [True, "1.5", 2.5, "two", None, [1], "\uff12", "9" * 40])
def test_variations_must_be_whole_numbers(seed_node: dict[str, Any], bad: Any) -> None:
    found = problems(with_inputs(seed_node, variations=bad))
    assert "inputs.variations" in found
    if not isinstance(bad, float):  # 2.5: pydantic's own "fractional part" message
        assert 'must be a whole number such as 1 or "1"' in found["inputs.variations"]


@pytest.mark.parametrize("bad", [[7], "\uff17", True])
def test_seeds_must_be_whole_numbers_by_the_same_rule(seed_node: dict[str, Any], bad: Any) -> None:
    assert 'must be a whole number such as 7 or "7"' in problems(with_inputs(seed_node, seed=bad))["inputs.seed"]


def test_a_missing_type_says_what_it_must_be(seed_node: dict[str, Any]) -> None:
    del seed_node["type"]
    assert problems(seed_node)["type"] == "type: is required: 'image_generation'"


def test_prompt_length_is_capped(seed_node: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_MAX_PROMPT_CHARS", "10")
    found = problems(with_inputs(seed_node, user_query="x" * 11), Settings())
    assert "is 11 characters; at most 10 are allowed" in found["inputs.user_query"]


def test_missing_inputs_and_required_fields(seed_node: dict[str, Any]) -> None:
    assert problems({"type": "image_generation"}) == {"inputs": "inputs: is required"}
    node = copy.deepcopy(seed_node)
    del node["inputs"]["user_query"], node["inputs"]["model"]
    assert set(problems(node)) == {"inputs.user_query", "inputs.model"}


@pytest.mark.parametrize("document", ["{not json", "[1, 2]", "42"])
def test_documents_that_are_not_objects(document: str) -> None:
    assert "(document)" in problems(document)


def test_unknown_top_level_keys_from_canvases_are_ignored(seed_node: dict[str, Any]) -> None:
    seed_node.update(id="node-7", position={"x": 1, "y": 2})
    assert validate_node(seed_node, Settings()).name == "Test Image Generation"


@pytest.mark.parametrize(
    ("field", "hint"),
    [("prompt", "user_query"), ("num_images", "variations"), ("resolution", "size"), ("modle", "model")],
)
def test_did_you_mean_hints(seed_node: dict[str, Any], field: str, hint: str) -> None:
    assert f"did you mean '{hint}'?" in problems(with_inputs(seed_node, **{field: "x"}))[f"inputs.{field}"]


def test_a_far_name_gets_no_guess(seed_node: dict[str, Any]) -> None:
    found = problems(with_inputs(seed_node, colour="red"))["inputs.colour"]
    assert "did you mean" not in found and "allowed: " in found  # not "use_cloud"


def test_cloud_provider_fields_required_when_use_cloud(seed_node: dict[str, Any]) -> None:
    # Every missing field at once: with no allow-listed Azure target, only a credential will do.
    found = problems(with_inputs(seed_node, use_cloud=True, cloud_provider="azure"))
    assert set(found) == {"inputs.azure_container", "inputs.azure_connection_string"}
    assert "a credential reference" in found["inputs.azure_connection_string"]
    for cloud, bucket, credential in (
        ("aws", "aws_bucket", "aws_credentials"),
        ("gcp", "gcp_bucket", "gcp_credentials"),
    ):
        found = problems(with_inputs(seed_node, use_cloud=True, cloud_provider=cloud))
        assert set(found) == {f"inputs.{bucket}", f"inputs.{credential}"}, cloud
    # With one, the account URL alone (the worker's identity) is the other way for Azure, and an
    # allow-listed bucket needs no credential: only the bucket is named until it is given.
    allowing = Settings(allowed_targets="az://acct.blob.core.windows.net/images,s3://platform-bucket")
    found = problems(with_inputs(seed_node, use_cloud=True, cloud_provider="azure"), allowing)
    assert set(found) == {"inputs.azure_container", "inputs.azure_account_url"}
    assert "unless azure_connection_string is given" in found["inputs.azure_account_url"]
    assert set(problems(with_inputs(seed_node, use_cloud=True, cloud_provider="aws"), allowing)) == {
        "inputs.aws_bucket"
    }
    both = with_inputs(
        seed_node,
        use_cloud=True,
        cloud_provider="azure",
        azure_container="images",
        azure_account_url="https://acct.blob.core.windows.net",
        azure_connection_string="vault:secret/imagegen/acme#azure",
    )
    assert set(problems(both)) == {"inputs.azure_account_url"}
    assert problems(both)["inputs.azure_account_url"].endswith(
        "give azure_account_url or azure_connection_string, not both"
    )
    node = with_inputs(seed_node, use_cloud="true")
    del node["inputs"]["cloud_provider"]
    assert "allowed: aws, azure, gcp" in problems(node)["inputs.cloud_provider"]
    assert "inputs.cloud_provider" in problems(with_inputs(seed_node, cloud_provider="gcs"))


@pytest.mark.parametrize("raw", ["y", "t", "on", 1, "YES"])
def test_every_true_the_model_reads_gets_the_storage_checks(seed_node: dict[str, Any], raw: Any) -> None:
    """The cloud checks read use_cloud as the model does: a "y" that the model takes for true
    cannot skip them and reach the worker with a missing bucket."""
    node = with_inputs(seed_node, use_cloud=raw, cloud_provider="azure")
    assert set(problems(node)) == {"inputs.azure_container", "inputs.azure_connection_string"}


def test_raw_secret_is_refused_and_never_echoed(seed_node: dict[str, Any]) -> None:
    canary = "AKIA-CANARY-9f3c2e"
    with pytest.raises(NodeValidationError) as caught:
        validate_node(with_inputs(seed_node, aws_credentials=canary, aws_bucket="b"), Settings())
    text = str(caught.value) + json.dumps(caught.value.as_dicts())
    assert canary not in text
    assert "vault:<path>#<key>" in text and "inputs.aws_credentials" in text


def test_unknown_field_values_are_not_echoed(seed_node: dict[str, Any]) -> None:
    canary = "sk-CANARY-unknown-field"
    with pytest.raises(NodeValidationError) as caught:
        validate_node(with_inputs(seed_node, aws_secret_access_key=canary), Settings())
    assert canary not in str(caught.value)


@pytest.mark.parametrize("ref", ["vault:secret/imagegen/aws#credentials", "env:AWS_CREDS", "file:/var/run/secrets/x"])
def test_secret_references_are_accepted(seed_node: dict[str, Any], ref: str) -> None:
    node = validate_node(
        with_inputs(seed_node, use_cloud=True, aws_bucket="imagegen-bucket", aws_credentials=ref), Settings()
    )
    assert node.inputs.aws_credentials == ref


def test_secret_references_outside_the_allow_list_are_refused(
    seed_node: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "IMAGEGEN_ALLOWED_SECRET_REFS", "vault:secret/imagegen/tenants/acme/, file:/var/run/secrets/acme/"
    )
    settings = Settings()
    allowed = with_inputs(
        seed_node,
        use_cloud=True,
        aws_bucket="imagegen-bucket",
        aws_credentials="vault:secret/imagegen/tenants/acme/aws#keys",
    )
    assert validate_node(allowed, settings).inputs.aws_credentials
    for ref in ("env:AWS_SECRET_ACCESS_KEY", "vault:secret/imagegen/tenants/other/aws#keys", "file:/etc/shadow"):
        found = problems(
            with_inputs(seed_node, use_cloud=True, aws_bucket="imagegen-bucket", aws_credentials=ref), settings
        )
        assert "outside the allowed references: vault:secret/imagegen/tenants/acme/" in found["inputs.aws_credentials"]


def test_sas_token_in_account_url_is_refused(seed_node: dict[str, Any]) -> None:
    url = "https://acct.blob.core.windows.net/?sv=2024&sig=CANARYSIG"
    found = problems(
        with_inputs(seed_node, use_cloud=True, cloud_provider="azure", azure_container="c", azure_account_url=url)
    )
    assert "SAS token" in found["inputs.azure_account_url"]
    assert "CANARYSIG" not in found["inputs.azure_account_url"]


def test_payload_for_the_worker_is_json_safe(seed_node: dict[str, Any]) -> None:
    payload = validate_node(seed_node, Settings()).to_task_payload()
    assert json.loads(json.dumps(payload)) == payload
    assert payload["inputs"]["variations"] == 1


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("model", 5, "must be a model name (a string); allowed: gemini_2_5_image, "),
        ("model", ["gemini_3_image"], "must be a model name (a string); allowed: "),
        ("size", 1024, 'must be WIDTHxHEIGHT as a string, e.g. "1024x1024"'),
        ("variations", 2.5, 'must be a whole number such as 1 or "1"'),
        ("seed", 3.5, 'must be a whole number such as 7 or "7"'),
    ],
)
def test_a_value_of_the_wrong_type_is_told_what_is_allowed(
    seed_node: dict[str, Any], field: str, value: Any, said: str
) -> None:
    # pydantic said only "input should be a valid string" or "a number with a fractional part".
    found = problems(with_inputs(seed_node, **{field: value}))
    assert set(found) == {f"inputs.{field}"} and said in found[f"inputs.{field}"]
    assert "valid string" not in found[f"inputs.{field}"]
