"""A tenant's job names only that tenant's secrets (contract/tenancy.py): at submit (client and
HTTP API), in the job task and in each variation (raw broker messages), before a webhook is
signed and before an image URL is signed. Tenant acme tries to borrow globex's storage
credentials and webhook key."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest

from api.tenants import Authenticator, TokenConfigError
from contract.clouds import node_target
from contract.errors import NodeValidationError
from contract.queue import GENERATE_VARIATION, SIGN_URL
from contract.settings import Settings
from contract.tenancy import caller_id, check_tenant_refs, tenant_of
from contract.work import SignRequest, VariationWork
from producer.client import ImageGenClient
from tests.api.conftest import StartApi
from tests.conftest import StartWorker
from tests.security.helpers import send_raw_job

TEMPLATES = "vault:secret/imagegen/tenants/{tenant}"
POLICY = {"IMAGEGEN_ALLOWED_SECRET_REFS": "vault:secret/imagegen/tenants", "IMAGEGEN_TENANT_SECRET_REFS": TEMPLATES}
GLOBEX_AWS = "vault:secret/imagegen/tenants/globex#aws"
ACME_AWS = "vault:secret/imagegen/tenants/acme#aws"


def _settings(**values: Any) -> Settings:
    return Settings(**{"allowed_secret_refs": "vault:secret/imagegen/tenants", **values})


def _cloud_node(node: dict[str, Any], credentials: str) -> dict[str, Any]:
    """A copy of ``node`` writing to a bucket of its own with ``credentials``."""
    inputs = {
        **node["inputs"],
        "use_cloud": True,
        "cloud_provider": "aws",
        "aws_bucket": "acme-images",
        "aws_region": "us-east-1",
        "aws_credentials": credentials,
    }
    return {**node, "inputs": inputs}


def test_whose_job_an_id_is() -> None:
    assert (tenant_of("t/acme/job-1"), caller_id("t/acme/job-1")) == ("acme", "job-1")
    assert caller_id("t/acme/runs/7") == "runs/7" and caller_id("engine-1") == "engine-1"
    assert tenant_of("t/acme/runs/7") == "acme"
    assert tenant_of("t/acme") is None  # no job under it
    assert tenant_of("acme/job-1") is None  # the platform's own namespace
    assert tenant_of("job-1") is None


@pytest.mark.parametrize(
    "reference",
    [
        GLOBEX_AWS,  # another tenant
        "vault:secret/imagegen/tenants/acme-evil#aws",  # a string prefix, not a path segment
        "vault:imagegen/tenants/globex#aws",  # the same secret without the mount name
        "vault:secret/imagegen/tenants#aws",  # the parent, shared by all tenants
        "env:GEMINI_API_KEY",  # the platform's own
        "file:/var/run/secrets/platform/key",
    ],
)
def test_a_tenant_cannot_name_what_is_not_under_its_own_prefix(reference: str) -> None:
    settings = _settings(tenant_secret_refs=TEMPLATES)
    with pytest.raises(NodeValidationError) as refused:
        check_tenant_refs("t/acme/job-1", {"inputs.aws_credentials": reference}, settings)
    [problem] = refused.value.problems
    assert problem.field == "inputs.aws_credentials" and "'acme'" in problem.message
    assert reference not in str(refused.value)  # a reference is never echoed


def test_its_own_prefix_is_allowed_and_platform_jobs_are_not_scoped() -> None:
    settings = _settings(tenant_secret_refs=TEMPLATES)
    check_tenant_refs("t/acme/job-1", {"inputs.aws_credentials": ACME_AWS, "webhook.secret": None}, settings)
    check_tenant_refs("t/acme/job-1", {"webhook.secret": "vault:secret/imagegen/tenants/acme/hooks#key"}, settings)
    check_tenant_refs("engine-job-1", {"inputs.aws_credentials": GLOBEX_AWS}, settings)  # trusted engine


def test_without_per_tenant_prefixes_tenants_name_no_secret_outside_development() -> None:
    production = _settings(environment="production", storage_url="s3://platform/images")
    with pytest.raises(NodeValidationError, match="IMAGEGEN_TENANT_SECRET_REFS"):
        check_tenant_refs("t/acme/job-1", {"inputs.aws_credentials": ACME_AWS}, production)
    check_tenant_refs("t/acme/job-1", {"inputs.aws_credentials": ACME_AWS}, _settings())  # development


def test_an_invalid_template_fails_at_start_up() -> None:
    with pytest.raises(ValueError, match="IMAGEGEN_TENANT_SECRET_REFS"):
        _settings(tenant_secret_refs="vault:secret/../{tenant}")


@pytest.mark.parametrize(
    ("templates", "mount", "tenant", "own", "others"),
    [
        # "vault:{tenant}" filled in for tenant "secret" read as the whole mount "secret".
        (
            "vault:{tenant}",
            "secret",
            "secret",
            "vault:secret/secret/aws#k",
            ["vault:acme/aws#k", "vault:secret/acme#k"],
        ),
        # Filled in for "secret", "vault:secret/creds" lost the mount: tenant creds' folder creds/creds.
        (
            "vault:{tenant}/creds",
            "secret",
            "secret",
            "vault:secret/secret/creds/aws#k",
            ["vault:creds/creds/aws#k", "vault:secret/creds/creds#k", "vault:creds/aws#k"],
        ),
        ("vault:{tenant}/creds", "secret", "creds", "vault:creds/creds/aws#k", ["vault:secret/creds/aws#k"]),
        ("vault:team/{tenant}", "team/kv", "kv", "vault:team/kv/team/kv/aws#k", ["vault:team/kv/acme/aws#k"]),
    ],
)
def test_a_tenant_named_like_the_vault_mount_or_a_template_segment_gets_only_its_folder(
    templates: str, mount: str, tenant: str, own: str, others: list[str]
) -> None:
    settings = _settings(allowed_secret_refs="", tenant_secret_refs=templates, vault_mount=mount)
    check_tenant_refs(f"t/{tenant}/job-1", {"inputs.aws_credentials": own}, settings)
    for reference in others:
        with pytest.raises(NodeValidationError, match=f"'{tenant}'"):
            check_tenant_refs(f"t/{tenant}/job-1", {"inputs.aws_credentials": reference}, settings)
    # The documented forms still name the same secret: "vault:a#k" is "vault:secret/a#k".
    plain = _settings(allowed_secret_refs="", tenant_secret_refs="vault:{tenant}")
    for reference in ("vault:acme/aws#k", "vault:secret/acme/aws#k"):
        check_tenant_refs("t/acme/job-1", {"inputs.aws_credentials": reference}, plain)


@pytest.mark.parametrize(
    ("templates", "why"),
    [
        ("vault:secret/t-{tenant}", "whole path segment"),  # "t-{tenant}-x" for a is "t-{tenant}" for a-x
        ("vault:secret/imagegen#{tenant}", "whole path segment"),
        ("file:/run/secrets/{tenant}.d", "whole path segment"),
        ("vault:{tenant},vault:imagegen/{tenant}", "different parents"),  # tenant imagegen: everyone's
        ("vault:imagegen/tenants/{tenant}/aws,vault:imagegen/{tenant}", "different parents"),
        ("env:T_{tenant}_,env:T_X_{tenant}_", "different parents"),  # tenant X: every T_X_<tenant>_
        ("vault:imagegen/tenants/{tenant},vault:secret/imagegen", "shared by every tenant"),
        ("vault:imagegen/tenants/{tenant},vault:imagegen/tenants/shared#hook", "shared by every tenant"),
        ("vault:imagegen/tenants/{tenant},vault:secret", "shared by every tenant"),  # the whole mount
        ("env:T_{tenant}_,env:T_SHARED_", "shared by every tenant"),  # tenant SHARED's prefix
    ],
)
def test_templates_that_could_overlap_between_tenants_fail_at_start_up(templates: str, why: str) -> None:
    with pytest.raises(ValueError, match="IMAGEGEN_TENANT_SECRET_REFS") as refused:
        _settings(allowed_secret_refs="", tenant_secret_refs=templates)
    assert why in str(refused.value) and any(entry in str(refused.value) for entry in templates.split(","))


def test_templates_with_one_parent_and_shared_secrets_beside_it_load() -> None:
    templates = (
        "vault:secret/imagegen/tenants/{tenant},vault:imagegen/tenants/{tenant}/hooks#key,"
        "vault:secret/imagegen/shared#hook,file:/run/secrets/{tenant},env:T_{tenant}_,env:SHARED_HOOK"
    )
    settings = _settings(allowed_secret_refs="", tenant_secret_refs=templates)
    check_tenant_refs("t/acme/job-1", {"webhook.secret": "vault:imagegen/shared#hook"}, settings)
    check_tenant_refs("t/acme/job-1", {"inputs.aws_credentials": "file:/run/secrets/acme/aws"}, settings)


def test_the_client_refuses_another_tenants_credentials_and_webhook_key(
    settings: Settings, offline_node: dict[str, Any]
) -> None:
    scoped = settings.model_copy(update={"allowed_secret_refs": POLICY["IMAGEGEN_ALLOWED_SECRET_REFS"]})
    scoped = scoped.model_copy(update={"tenant_secret_refs": TEMPLATES})
    client = ImageGenClient(scoped)
    try:
        with pytest.raises(NodeValidationError) as refused:
            client.submit(_cloud_node(offline_node, GLOBEX_AWS), job_id="t/acme/borrow-1")
        assert [p.field for p in refused.value.problems] == ["inputs.aws_credentials"]
        webhook = {"url": "https://hooks.example.com/x", "secret": "vault:secret/imagegen/tenants/globex#hook"}
        offline_node["inputs"]["use_cloud"] = False
        with pytest.raises(NodeValidationError) as refused:
            client.submit(offline_node, job_id="t/acme/borrow-2", webhook=webhook)
        assert [p.field for p in refused.value.problems] == ["webhook.secret"]
        assert client.records.read("t/acme/borrow-1") is None and client.records.read("t/acme/borrow-2") is None
    finally:
        client.close()


def test_the_http_api_answers_422_and_enqueues_nothing(start_api: StartApi, offline_node: dict[str, Any]) -> None:
    api = start_api(POLICY)
    response = api.client("acme").post("/v1/jobs", json=_cloud_node(offline_node, GLOBEX_AWS))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [p["field"] for p in problem["problems"]] == ["inputs.aws_credentials"]
    assert GLOBEX_AWS not in response.text
    assert api.client("acme").get("/v1/jobs/does-not-exist").status_code == 404


def test_raw_messages_with_another_tenants_credentials_make_nothing(
    start_worker: StartWorker, client: ImageGenClient, offline_node: dict[str, Any], settings: Settings
) -> None:
    worker = start_worker(POLICY)
    node = _cloud_node(offline_node, GLOBEX_AWS)
    document = send_raw_job(client, "t/acme/raw-1", node).get(timeout=60)
    assert document["status"] == "failed" and document["errors"][0]["kind"] == "permanent"
    assert "'acme'" in document["errors"][0]["message"] and GLOBEX_AWS not in json.dumps(document)

    # A variation sent on its own, past the job task: refused before the provider is called.
    target = node_target(node["inputs"], settings.target_policy)
    work = VariationWork(
        job_id="t/acme/raw-2", run=1, index=0, prompt="x", model="offline_preview", size="1024x1024", target=target
    )
    client.celery.send_task(GENERATE_VARIATION, args=(work.model_dump(mode="json"),))
    deadline = time.monotonic() + 30
    while "job t/acme/raw-2 variation 0 failed" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    [line] = [line for line in worker.log().splitlines() if "job t/acme/raw-2 variation 0 failed" in line]
    assert "permanent (storage credentials refused" in line and "'acme'" in line
    assert GLOBEX_AWS not in worker.log()


# --- signing a stored image's URL: the same rules (POST /v1/sign, raw sign messages) ----------

ENV_POLICY = {
    "IMAGEGEN_ALLOWED_SECRET_REFS": "env:TENANT_",
    "IMAGEGEN_TENANT_SECRET_REFS": "env:TENANT_{tenant}_",
    "TENANT_globex_AWS": json.dumps({"aws_access_key_id": "AKIAGLOBEX0000000001", "aws_secret_access_key": "g" * 40}),
}


def test_the_http_api_does_not_sign_with_another_tenants_credentials(
    start_api: StartApi, start_worker: StartWorker, offline_node: dict[str, Any]
) -> None:
    start_worker(ENV_POLICY)
    acme = start_api(ENV_POLICY).client("acme")
    node = _cloud_node(offline_node, "env:TENANT_globex_AWS")
    node["inputs"]["aws_bucket"] = "globex-images"
    uri = "s3://globex-images/t/acme/anything/variation-0.png"  # under acme's namespace: owns_uri passes
    response = acme.post("/v1/sign", json={"uri": uri, "node": node})
    assert response.status_code == 422, response.text
    assert [p["field"] for p in response.json()["problems"]] == ["inputs.aws_credentials"]
    assert "AKIAGLOBEX" not in response.text and "TENANT_globex_AWS" not in response.text


def test_validate_and_submit_refuse_another_tenants_references_alike(
    start_api: StartApi, offline_node: dict[str, Any]
) -> None:
    """POST /v1/validate (the Playground's live check) applies the tenant rule too: it had said
    valid for a node or webhook naming another tenant's secret, which submit then refused."""
    acme = start_api(ENV_POLICY).client("acme")
    node = _cloud_node(copy.deepcopy(offline_node), "env:TENANT_globex_AWS")
    webhook = {"url": "https://hooks.example.com/x", "secret": "env:TENANT_globex_HOOK"}
    for body, fields in [
        (node, ["inputs.aws_credentials"]),
        ({"node": offline_node, "webhook": webhook}, ["webhook.secret"]),
        ({"node": node, "webhook": webhook}, ["inputs.aws_credentials", "webhook.secret"]),
    ]:
        checked = acme.post("/v1/validate", json=body)
        assert checked.status_code == 200 and checked.json()["valid"] is False, checked.text
        assert [p["field"] for p in checked.json()["problems"]] == fields
        submitted = acme.post("/v1/jobs", json=body)
        assert submitted.status_code == 422, submitted.text
        assert [p["field"] for p in submitted.json()["problems"]] == fields
        assert "TENANT_globex" not in checked.text + submitted.text
    own = _cloud_node(copy.deepcopy(offline_node), "env:TENANT_acme_AWS")
    assert acme.post("/v1/validate", json=own).json()["valid"] is True


def test_a_raw_sign_message_is_checked_in_the_worker(
    start_worker: StartWorker, client: ImageGenClient, settings: Settings
) -> None:
    """A sign request that skipped the producer: a tenant's credentials are checked before they are
    read, and a tenant's request signs only its own jobs' images."""
    worker = start_worker(ENV_POLICY)
    target = node_target(
        {
            "use_cloud": True,
            "cloud_provider": "aws",
            "aws_bucket": "globex-images",
            "aws_region": "us-east-1",
            "aws_credentials": "env:TENANT_globex_AWS",
        },
        settings.target_policy,
    )

    def sign(uri: str, tenant: str | None) -> dict[str, Any]:
        request = SignRequest(uri=uri, target=target, tenant=tenant)
        answer: dict[str, Any] = client.celery.send_task(SIGN_URL, args=(request.model_dump(mode="json"),)).get(
            timeout=30
        )
        return answer

    borrowed = sign("s3://globex-images/t/acme/anything/variation-0.png", "acme")
    assert borrowed["error"]["kind"] == "permanent" and "storage credentials refused" in borrowed["error"]["message"]
    assert "url" not in borrowed
    # globex's own request for an image of acme's jobs: its credentials, but not its image.
    elsewhere = sign("s3://globex-images/t/acme/anything/variation-0.png", "globex")
    assert elsewhere["error"]["kind"] == "not_found" and "url" not in elsewhere
    own = sign("s3://globex-images/t/globex/job-1/variation-0.png", "globex")
    assert own["url"].startswith("https://") and "AKIAGLOBEX0000000001" in own["url"]
    assert "AKIAGLOBEX" not in worker.log() and "g" * 40 not in worker.log()


def test_env_templates_tell_tenants_apart() -> None:
    """``env:`` entries match a name prefix: ``TENANT_acme_`` is also a prefix of ``TENANT_acme_eu_KEY``."""
    with pytest.raises(ValueError, match=r"must be followed by '_'"):
        _settings(allowed_secret_refs="env:TENANT_", tenant_secret_refs="env:TENANT_{tenant}")
    settings = _settings(allowed_secret_refs="env:TENANT_", tenant_secret_refs="env:TENANT_{tenant}_")
    check_tenant_refs("t/acme/job-1", {"inputs.aws_credentials": "env:TENANT_acme_AWS"}, settings)
    # A tenant whose name could extend another's may name no env: reference at all ...
    with pytest.raises(NodeValidationError, match="'acme_eu'"):
        check_tenant_refs("t/acme_eu/job-1", {"inputs.aws_credentials": "env:TENANT_acme_eu_AWS"}, settings)
    # ... and the API does not start with such a tenant beside an env: template.
    tokens = "acme=env:ACME_TOKEN,acme_eu=env:ACME_EU_TOKEN"
    with pytest.raises(TokenConfigError, match="'acme_eu'"):
        Authenticator(settings.model_copy(update={"api_tokens": tokens}))
    vault_only = settings.model_copy(update={"api_tokens": tokens, "tenant_secret_refs": TEMPLATES})
    with pytest.raises(TokenConfigError, match="ACME_TOKEN"):  # past the name check: the tokens are unset
        Authenticator(vault_only)
