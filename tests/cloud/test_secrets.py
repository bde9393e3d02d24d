"""Secret references resolved in the worker: vault: against a real OpenBao
server (token and Kubernetes auth), env: and file:; and raw secrets in node
JSON refused before anything is sent."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import hvac
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from api.tenants import Authenticator, Tenant, TokenConfigError
from contract import secret_reader
from contract.node import NodeValidationError, validate_node
from contract.secret_reader import forget_vault_clients
from contract.settings import Settings
from devtools.emulators import Emulator
from devtools.redis_server import free_port
from producer.cli import main as cli_main
from producer.client import ImageGenClient
from tests.cloud.conftest import PutSecret
from tests.conftest import request_keys
from tests.redis_scan import redis_dump
from worker.errors import TransientError
from worker.secrets import SecretError, clear_cache, resolve_secret

# --- vault: with a token ---------------------------------------------------------


def test_vault_reads_kv_v2_with_and_without_the_mount_in_the_path(
    cloud_settings: Settings, put_secret: PutSecret
) -> None:
    ref = put_secret({"token": "s3cr3t-value"})["token"]
    assert ref.startswith("vault:secret/imagegen/")
    assert resolve_secret(ref, cloud_settings) == "s3cr3t-value"
    clear_cache()
    assert resolve_secret(ref.replace("vault:secret/", "vault:"), cloud_settings) == "s3cr3t-value"


def test_a_json_object_value_comes_back_as_json_text(cloud_settings: Settings, put_secret: PutSecret) -> None:
    keys = {"aws_access_key_id": "AKIA1", "aws_secret_access_key": "abc"}
    ref = put_secret({"credentials": keys})["credentials"]
    assert json.loads(resolve_secret(ref, cloud_settings)) == keys


def test_a_vault_value_larger_than_a_credential_is_refused(cloud_settings: Settings, put_secret: PutSecret) -> None:
    """Values are cached and handed to the cloud SDKs: bounded as a secret file is (64 KiB)."""
    refs = put_secret({"huge": "x" * (secret_reader.MAX_FILE_BYTES + 1), "fits": "y" * secret_reader.MAX_FILE_BYTES})
    with pytest.raises(SecretError, match=r"the Vault value is larger than 65536 characters; not used"):
        resolve_secret(refs["huge"], cloud_settings)
    assert resolve_secret(refs["fits"], cloud_settings) == "y" * secret_reader.MAX_FILE_BYTES


def test_missing_path_and_missing_key_name_the_reference(cloud_settings: Settings, put_secret: PutSecret) -> None:
    with pytest.raises(SecretError, match=r"^vault:secret/imagegen/nope#k: no such secret in Vault \(KV v2 mount"):
        resolve_secret("vault:secret/imagegen/nope#k", cloud_settings)
    ref = put_secret({"present": "hidden-value"})["present"]
    other = ref.replace("#present", "#absent")
    with pytest.raises(SecretError) as caught:
        resolve_secret(other, cloud_settings)
    assert str(caught.value) == f"{other}: the Vault secret has no key 'absent'"


def test_a_token_without_the_policy_is_denied(
    cloud_settings: Settings, vault: hvac.Client, put_secret: PutSecret
) -> None:
    ref = put_secret({"k": "guarded-value"})["k"]
    vault.sys.create_or_update_policy(
        "imagegen-elsewhere", 'path "secret/data/elsewhere/*" { capabilities = ["read"] }'
    )
    weak = vault.auth.token.create(policies=["imagegen-elsewhere"], ttl="5m")["auth"]["client_token"]
    settings = cloud_settings.model_copy(update={"vault_token": SecretStr(weak)})
    with pytest.raises(SecretError) as caught:
        resolve_secret(ref, settings)
    assert str(caught.value) == f"{ref}: Vault denied access (check the token or role policy)"
    assert weak not in str(caught.value)


def test_no_vault_credentials_is_a_clear_error(cloud_settings: Settings) -> None:
    settings = cloud_settings.model_copy(update={"vault_token": None})
    with pytest.raises(
        SecretError, match="no Vault credentials in this process \\(set VAULT_TOKEN or VAULT_K8S_ROLE\\)"
    ):
        resolve_secret("vault:secret/imagegen/x#k", settings)


def test_unreachable_vault_is_transient(cloud_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    settings = cloud_settings.model_copy(update={"vault_addr": address})
    with pytest.raises(
        TransientError, match=r"^vault:secret/imagegen/x#k: cannot reach Vault \(ConnectionError\)$"
    ) as caught:
        resolve_secret("vault:secret/imagegen/x#k", settings)
    # The error reaches the tenant's result; the platform's Vault address only the operator's log.
    assert address not in str(caught.value)
    assert f"cannot reach Vault at {address}" in caplog.text


def test_the_kv_mount_is_configurable(cloud_settings: Settings, vault: hvac.Client) -> None:
    mount = f"kv-{uuid.uuid4().hex[:6]}"
    vault.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    vault.secrets.kv.v2.create_or_update_secret(
        path="imagegen/gcp", secret={"sa": "from-custom-mount"}, mount_point=mount
    )
    settings = cloud_settings.model_copy(update={"vault_mount": mount})
    assert resolve_secret(f"vault:{mount}/imagegen/gcp#sa", settings) == "from-custom-mount"
    with pytest.raises(SecretError, match="no such secret"):
        resolve_secret("vault:imagegen/gcp#sa", cloud_settings)  # default mount "secret"


def test_values_are_cached_for_the_ttl_then_reread(
    cloud_settings: Settings, vault: hvac.Client, put_secret: PutSecret
) -> None:
    ref = put_secret({"k": "v1"})["k"]
    path = ref.removeprefix("vault:secret/").split("#")[0]
    assert resolve_secret(ref, cloud_settings) == "v1"
    vault.secrets.kv.v2.create_or_update_secret(path=path, secret={"k": "v2"}, mount_point="secret")
    assert resolve_secret(ref, cloud_settings) == "v1"  # within the TTL
    clear_cache()
    uncached = cloud_settings.model_copy(update={"secret_cache_ttl_s": 0})
    assert resolve_secret(ref, uncached) == "v2"
    vault.secrets.kv.v2.create_or_update_secret(path=path, secret={"k": "v3"}, mount_point="secret")
    assert resolve_secret(ref, uncached) == "v3"


# --- vault: with Kubernetes auth ---------------------------------------------------
# OpenBao's kubernetes auth method is real; it asks a TokenReview API, stubbed
# here because no Kubernetes API server runs in the tests.


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


SA_JWT = (
    _b64({"alg": "RS256", "kid": "test"})
    + "."
    + _b64(
        {
            "iss": "kubernetes/serviceaccount",
            "sub": "system:serviceaccount:imagegen:worker",
            "kubernetes.io/serviceaccount/namespace": "imagegen",
            "kubernetes.io/serviceaccount/service-account.name": "worker",
            "kubernetes.io/serviceaccount/service-account.uid": "uid-1",
        }
    )
    + ".c2lnbmF0dXJl"
)


def _self_signed_ca() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-kubernetes-ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


TOKEN_REVIEWS: list[int] = []


@pytest.fixture(scope="session")
def kubernetes_auth(vault: hvac.Client) -> Iterator[str]:
    """Kubernetes auth enabled in OpenBao, role ``imagegen-worker`` reading ``secret/imagegen/*``."""

    class TokenReview(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            TOKEN_REVIEWS.append(1)  # one per Kubernetes login to Vault
            review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status = {
                "authenticated": review["spec"]["token"] == SA_JWT,
                "user": {"username": "system:serviceaccount:imagegen:worker", "uid": "uid-1"},
            }
            body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status})
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), TokenReview)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    vault.sys.enable_auth_method("kubernetes", path="kubernetes")
    vault.adapter.post(
        "/v1/auth/kubernetes/config",
        json={
            "kubernetes_host": f"http://127.0.0.1:{server.server_port}",
            "kubernetes_ca_cert": _self_signed_ca(),
            "token_reviewer_jwt": "reviewer-token",
            "disable_local_ca_jwt": True,
        },
    )
    vault.sys.create_or_update_policy("imagegen-read", 'path "secret/data/imagegen/*" { capabilities = ["read"] }')
    vault.adapter.post(
        "/v1/auth/kubernetes/role/imagegen-worker",
        json={
            "bound_service_account_names": ["worker"],
            "bound_service_account_namespaces": ["imagegen"],
            "policies": ["imagegen-read"],
            "ttl": "10m",
        },
    )
    yield "imagegen-worker"
    server.shutdown()


def test_kubernetes_auth_reads_with_the_service_account_token(
    cloud_settings: Settings, kubernetes_auth: str, put_secret: PutSecret, tmp_path: Path
) -> None:
    ref = put_secret({"k": "via-kubernetes"})["k"]
    token_file = tmp_path / "token"
    token_file.write_text(SA_JWT + "\n")
    settings = cloud_settings.model_copy(
        update={"vault_token": None, "vault_k8s_role": kubernetes_auth, "vault_k8s_token_file": str(token_file)}
    )
    assert resolve_secret(ref, settings) == "via-kubernetes"

    clear_cache()
    token_file.write_text(SA_JWT.replace("c2lnbmF0dXJl", "Zm9yZ2Vk"))  # not the token the cluster issued
    with pytest.raises(SecretError, match="Vault refused the Kubernetes login for role 'imagegen-worker'"):
        resolve_secret(ref, settings)

    clear_cache()
    missing = settings.model_copy(update={"vault_k8s_token_file": str(tmp_path / "absent")})
    with pytest.raises(SecretError, match=r"VAULT_K8S_ROLE is set but the service-account token .* cannot be read"):
        resolve_secret(ref, missing)


def test_a_denied_path_does_not_log_in_again_but_a_revoked_token_does(
    cloud_settings: Settings, kubernetes_auth: str, put_secret: PutSecret, vault: hvac.Client, tmp_path: Path
) -> None:
    ref = put_secret({"k": "via-kubernetes"})["k"]
    vault.secrets.kv.v2.create_or_update_secret(path="outside/x", secret={"k": "v"}, mount_point="secret")
    token_file = tmp_path / "token"
    token_file.write_text(SA_JWT)
    settings = cloud_settings.model_copy(
        update={"vault_token": None, "vault_k8s_role": kubernetes_auth, "vault_k8s_token_file": str(token_file)}
    )
    clear_cache()
    forget_vault_clients()
    assert resolve_secret(ref, settings) == "via-kubernetes"
    logins = len(TOKEN_REVIEWS)
    for _ in range(3):  # the role's policy does not cover it: the answer, not an expired login
        with pytest.raises(SecretError, match="Vault denied access"):
            resolve_secret("vault:secret/outside/x#k", settings)
    assert len(TOKEN_REVIEWS) == logins

    (client,) = secret_reader._vault.values()
    vault.auth.token.revoke(client.token)  # as when the login's TTL ran out
    clear_cache()
    assert resolve_secret(ref, settings) == "via-kubernetes"  # logged in again, once
    assert len(TOKEN_REVIEWS) == logins + 1


# --- env: and file: ----------------------------------------------------------------


def test_env_and_file_references(cloud_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_TEST_SECRET", "from-env")
    assert resolve_secret("env:IMAGEGEN_TEST_SECRET", cloud_settings) == "from-env"
    with pytest.raises(SecretError, match=r"^env:IMAGEGEN_TEST_ABSENT: the variable is not set"):
        resolve_secret("env:IMAGEGEN_TEST_ABSENT", cloud_settings)

    mounted = tmp_path / "conn"
    mounted.write_text("from-file\n")  # Kubernetes secret volumes often end with a newline
    assert resolve_secret(f"file:{mounted}", cloud_settings) == "from-file"
    with pytest.raises(SecretError, match=rf"^file:{tmp_path}/absent: cannot read the file"):
        resolve_secret(f"file:{tmp_path}/absent", cloud_settings)


def test_the_worker_enforces_the_allow_list_too(
    cloud_settings: Settings, put_secret: PutSecret, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A task sent straight to the broker skips the producer's validation.
    ref = put_secret({"k": "v"})["k"]
    monkeypatch.setenv("IMAGEGEN_PLATFORM_SECRET", "platform-canary")
    monkeypatch.setenv("IMAGEGEN_ALLOWED_SECRET_REFS", ref.split("#")[0])
    settings = Settings()
    assert resolve_secret(ref, settings) == "v"
    with pytest.raises(SecretError, match="outside the allowed references") as caught:
        resolve_secret("env:IMAGEGEN_PLATFORM_SECRET", settings)
    assert "platform-canary" not in str(caught.value)


def test_a_raw_value_is_not_resolved_nor_echoed(cloud_settings: Settings) -> None:
    with pytest.raises(SecretError) as caught:
        resolve_secret("AccountKey=canary-raw-value", cloud_settings)
    assert "canary" not in str(caught.value) and "is not a secret reference" in str(caught.value)


# --- the API's tenant tokens: the same reader --------------------------------------


def test_the_api_reads_tenant_tokens_from_vault_and_keeps_them_through_an_outage(
    cloud_settings: Settings, put_secret: PutSecret
) -> None:
    refs = put_secret({"acme": "acme-token-0123456789", "short": "too-short"})
    settings = cloud_settings.model_copy(
        update={"api_tokens": f"acme={refs['acme']}", "allowed_secret_refs": "", "secret_cache_ttl_s": 0}
    )
    auth = Authenticator(settings)
    assert auth.tenant_for("acme-token-0123456789") == Tenant("acme")
    assert auth.tenant_for("acme-token-0123456788") is None
    # Vault unreachable on a re-read: logged, and the tokens in use stay.
    forget_vault_clients()
    auth.settings = settings.model_copy(update={"vault_addr": f"http://127.0.0.1:{free_port()}"})
    auth.refresh()
    assert auth.tenant_for("acme-token-0123456789") == Tenant("acme")
    # A reference whose value cannot be a token stops the start, naming the reference only.
    with pytest.raises(TokenConfigError) as caught:
        Authenticator(settings.model_copy(update={"api_tokens": f"acme={refs['short']}"}))
    assert str(caught.value) == f"{refs['short']}: the token is shorter than 16 characters"
    with pytest.raises(TokenConfigError, match="no such secret in Vault"):
        Authenticator(settings.model_copy(update={"api_tokens": "acme=vault:secret/imagegen/absent#k"}))


# --- raw secrets in node JSON ------------------------------------------------------

RAW_SECRETS = {
    "aws_credentials": '{"aws_access_key_id": "AKIAQWERTY", "aws_secret_access_key": "canary-raw-aws"}',
    "azure_connection_string": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=canary-raw-azure==",
    "gcp_credentials": '{"type": "service_account", "private_key": "canary-raw-gcp"}',
}
PROVIDER_FIELDS = {
    "aws_credentials": {"cloud_provider": "aws", "aws_bucket": "imagegen-bucket"},
    "azure_connection_string": {"cloud_provider": "azure", "azure_container": "imagegen-container"},
    "gcp_credentials": {"cloud_provider": "gcp", "gcp_bucket": "imagegen-bucket"},
}


def _node_with(offline_node: dict[str, Any], field: str) -> dict[str, Any]:
    inputs = {**offline_node["inputs"], "use_cloud": True, **PROVIDER_FIELDS[field], field: RAW_SECRETS[field]}
    return {**offline_node, "inputs": inputs}


@pytest.mark.parametrize("field", sorted(RAW_SECRETS))
def test_raw_secret_in_node_is_refused_everywhere_without_echo(
    field: str,
    offline_node: dict[str, Any],
    client: ImageGenClient,
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    node = _node_with(offline_node, field)
    canary = RAW_SECRETS[field].split("canary-")[1].split('"')[0]

    with pytest.raises(NodeValidationError) as caught:
        validate_node(node, client.settings)
    assert [p["field"] for p in caught.value.as_dicts()] == [f"inputs.{field}"]
    assert "holds a raw secret, which is refused" in str(caught.value)
    assert canary not in str(caught.value) and canary not in json.dumps(caught.value.as_dicts())

    # Compared without the workers' own housekeeping (an earlier test's worker may still be
    # handing back its in-flight records), as every "wrote nothing" check is.
    before = request_keys(client.records.client)
    with pytest.raises(NodeValidationError):
        client.submit(node, job_id=f"raw-{field}")
    with pytest.raises(NodeValidationError):
        client.sign("s3://imagegen-bucket/k.png", node)
    assert not request_keys(client.records.client) - before  # nothing was written, let alone sent
    assert canary.encode() not in redis_dump(redis_url)

    node_file = tmp_path / "node.json"
    node_file.write_text(json.dumps(node))
    assert cli_main(["validate", str(node_file)]) == 2
    assert cli_main(["sign", "s3://imagegen-bucket/k.png", "--node", str(node_file)]) == 2
    out = capsys.readouterr()
    assert "holds a raw secret" in out.err and canary not in out.err + out.out


def test_references_pass_validation(offline_node: dict[str, Any], openbao: Emulator) -> None:
    for field, ref in [
        ("aws_credentials", "vault:secret/imagegen/aws#credentials"),
        ("azure_connection_string", "env:AZURE_CONN"),
        ("gcp_credentials", "file:/var/run/secrets/gcp/key.json"),
    ]:
        node = _node_with(offline_node, field)
        node["inputs"][field] = ref
        assert getattr(validate_node(node, Settings()).inputs, field) == ref
