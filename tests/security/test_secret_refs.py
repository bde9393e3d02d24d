"""Hostile secret references, at both layers.

Node JSON is written by tenants; the worker holds the platform's credentials.
Every vector here is refused by the producer (``validate_node``: a problem on
the credential field) and by the worker (``resolve_secret``: SecretError,
nothing read). Controls show that each target *would* be read otherwise, so
the tests can fail: the secrets and files exist and are readable when asked
for directly under a broader allow-list (or none).

Filesystem tricks (symbolic links, FIFOs, devices, huge files) cannot be seen
by the producer, which runs elsewhere: the worker alone refuses those.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest

from contract import secret_reader
from contract.node import NodeValidationError, validate_node
from contract.secret_reader import MAX_FILE_BYTES
from contract.secret_refs import (
    MAX_REF_CHARS,
    SecretRef,
    check_allowed,
    parse_allowed_ref,
    parse_secret_ref,
    vault_kv_path,
)
from contract.settings import Settings, SettingsError
from devtools.emulators import Emulator
from devtools.redis_server import free_port
from worker.errors import TransientError
from worker.secrets import SecretError, clear_cache, resolve_secret

MakeSettings = Callable[[str], Settings]

# --- vectors ------------------------------------------------------------------------
# "{R}" is the tenant tree's root inside the KV mount; the allow-list is
# vault:secret/{R}/tenants/acme. Each refused vector aims at a secret outside it.

VAULT_ALLOWED = [
    "vault:secret/{R}/tenants/acme/aws#k",
    "vault:{R}/tenants/acme/aws#k",  # path inside the mount: the same secret
    "vault:secret//{R}//tenants///acme//aws#k",  # empty segments collapse
    "vault:/secret/{R}/tenants/acme/aws/#k",
]
VAULT_REFUSED = {
    "dotdot": "vault:secret/{R}/tenants/acme/../../other/aws#k",
    "dotdot-sibling": "vault:secret/{R}/tenants/acme/../acme-evil/aws#k",
    "dotdot-path-form": "vault:{R}/tenants/acme/../../other/aws#k",
    "dot-then-dotdot": "vault:secret/{R}/tenants/acme/./../../other/aws#k",
    "trailing-dotdot": "vault:secret/{R}/tenants/acme/aws/..#k",
    "triple-dot": "vault:secret/{R}/tenants/acme/.../aws#k",
    "double-slash-dotdot": "vault:secret/{R}/tenants//acme/..//..//other/aws#k",
    "encoded-dots": "vault:secret/{R}/tenants/acme/%2e%2e/%2e%2e/other/aws#k",
    "encoded-slash": "vault:secret/{R}/tenants/acme/..%2F..%2Fother/aws#k",
    "double-encoded": "vault:secret/{R}/tenants/acme/%252e%252e/other/aws#k",
    "backslashes": "vault:secret/{R}/tenants/acme\\..\\..\\other/aws#k",
    "fullwidth-dots": "vault:secret/{R}/tenants/acme/\uff0e\uff0e/\uff0e\uff0e/other/aws#k",
    "sibling-prefix": "vault:secret/{R}/tenants/acme-evil/aws#k",
    "trailing-dot-sibling": "vault:secret/{R}/tenants/acme./aws#k",
    "mount-twice": "vault:secret/secret/{R}/tenants/acme/aws#k",
    "outside": "vault:secret/{R}/other/aws#k",
    "query": "vault:secret/{R}/tenants/acme/aws?version=1#k",
    "second-hash": "vault:secret/{R}/tenants/acme/aws#k#../../other",
    "key-traversal": "vault:secret/{R}/tenants/acme/aws#../k",
    "nul": "vault:secret/{R}/tenants/acme/\x00/../../other/aws#k",
    "newline": "vault:secret/{R}/tenants/acme/aws\n/../../other#k",
    "tab": "vault:secret/{R}/tenants/acme/\t../../other/aws#k",
    "del": "vault:secret/{R}/tenants/acme/\x7f/aws#k",
    "too-long": "vault:secret/{R}/tenants/acme/" + "a/" * MAX_REF_CHARS + "aws#k",
    "no-key": "vault:secret/{R}/tenants/acme/aws",
}
# Vectors whose canonical form parses but falls outside the allow-list: the
# worker says so (rather than "not a reference").
VAULT_PARSES = {"sibling-prefix", "trailing-dot-sibling", "mount-twice", "outside"}

ENV_ALLOW = "env:TENANT_ACME_"
ENV_REFUSED = {
    "platform": "env:PLATFORM_SECRET",
    "sibling-prefix": "env:TENANT_ACMEX",
    "prefix-without-underscore": "env:TENANT_ACME",
    "lower-case": "env:tenant_acme_key",
    "dotdot": "env:TENANT_ACME_KEY/../PLATFORM_SECRET",
    "dollar": "env:$PLATFORM_SECRET",
    "nul": "env:TENANT_ACME_\x00PLATFORM_SECRET",
    "too-long": "env:TENANT_ACME_" + "A" * MAX_REF_CHARS,
}
ENV_VALUES = {
    "TENANT_ACME_KEY": "acme-env-value",
    "PLATFORM_SECRET": "canary-env-platform",
    "TENANT_ACMEX": "canary-env-sibling",
    "TENANT_ACME": "canary-env-short",
}

# "{A}" is the allowed directory ("{T}/mounted"), "{T}" its parent.
FILE_LEXICAL_REFUSED = {
    "dotdot": "file:{A}/../outside/secret",
    "proc-environ": "file:{A}/../../../../../../../../../proc/self/environ",
    "dot-then-dotdot": "file:{A}/./../outside/secret",
    "double-slash-dotdot": "file:{A}//..//outside/secret",
    "trailing-dotdot": "file:{A}/sub/..",
    "encoded-dots": "file:{A}/%2e%2e/outside/secret",
    "backslashes": "file:{A}\\..\\outside\\secret",
    "sibling-prefix": "file:{T}/mounted-evil/secret",
    "outside": "file:{T}/outside/secret",
    "proc-direct": "file:/proc/self/environ",
    "relative": "file:mounted/../outside/secret",
    "nul": "file:{A}/key\x00/../../outside/secret",
    "newline": "file:{A}/ke\ny",  # mid-text: surrounding whitespace is stripped by the node model
    "too-long": "file:{A}/" + "a/" * MAX_REF_CHARS + "key",
}
FILE_PARSES = {"sibling-prefix", "outside", "proc-direct"}
# Lexically inside the allowed directory; only the filesystem says otherwise.
FILE_WORKER_REFUSED = {
    "symlink-out": ("file:{A}/link", "symbolic link outside the allowed directories"),
    "symlinked-dir": ("file:{A}/dirlink/secret", "symbolic link outside the allowed directories"),
    "symlink-to-dev-zero": ("file:{A}/zero", "symbolic link outside the allowed directories"),
    "symlink-to-proc": ("file:{A}/environ", "symbolic link outside the allowed directories"),
    "fifo": ("file:{A}/fifo", "is not a regular file"),
    "directory": ("file:{A}/subdir", "is not a regular file"),
    "huge": ("file:{A}/huge", f"larger than {MAX_FILE_BYTES} bytes"),
    "sparse-8-gib": ("file:{A}/sparse", f"larger than {MAX_FILE_BYTES} bytes"),
}

FIELDS = {
    "aws_credentials": {"cloud_provider": "aws", "aws_bucket": "imagegen-bucket", "aws_region": "eu-west-1"},
    "gcp_credentials": {"cloud_provider": "gcp", "gcp_bucket": "imagegen-bucket"},
    "azure_connection_string": {"cloud_provider": "azure", "azure_container": "imagegen-container"},
}


def fill(template: str, **names: str) -> str:
    for name, value in names.items():
        template = template.replace("{" + name + "}", value)
    return template


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture
def make_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeSettings]:
    """Worker settings with a given allow-list; Vault is a dead port (a read attempt would be a TransientError)."""
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("VAULT_TOKEN", "dead-vault-token")
    for name in ("VAULT_K8S_ROLE", "VAULT_NAMESPACE", "IMAGEGEN_ALLOWED_SECRET_REFS", "IMAGEGEN_VAULT_MOUNT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in ENV_VALUES.items():
        monkeypatch.setenv(name, value)
    clear_cache()
    yield lambda allowed: Settings(allowed_secret_refs=allowed)
    clear_cache()


@pytest.fixture
def vault_settings(openbao: Emulator, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch) -> MakeSettings:
    """As ``make_settings``, against the real OpenBao server."""
    monkeypatch.setenv("VAULT_ADDR", openbao.url)
    monkeypatch.setenv("VAULT_TOKEN", openbao.extra["token"])
    return make_settings


@pytest.fixture(scope="session")
def vault_root(vault: hvac.Client) -> str:
    """A tenant tree in OpenBao: acme's secret, and canaries everywhere an attack might land."""
    root = f"imagegen/sec-{uuid.uuid4().hex[:8]}"
    for path, value in [
        (f"{root}/tenants/acme/aws", "acme-value"),
        (f"{root}/tenants/acme-evil/aws", "canary-vault-sibling"),
        (f"{root}/tenants/acme./aws", "canary-vault-trailing-dot"),
        (f"{root}/other/aws", "canary-vault-other"),
        (f"secret/{root}/tenants/acme/aws", "canary-vault-mount-twice"),  # the path "secret/..." inside the mount
    ]:
        vault.secrets.kv.v2.create_or_update_secret(path=path, secret={"k": value, "k2": value}, mount_point="secret")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, str]:
    """An allowed directory with traps, and secrets outside it."""
    allowed, outside, evil = tmp_path / "mounted", tmp_path / "outside", tmp_path / "mounted-evil"
    for directory in (allowed, outside, evil, allowed / "subdir"):
        directory.mkdir()
    (allowed / "key").write_text("acme-file-value\n")
    (outside / "secret").write_text("canary-file-outside\n")
    (evil / "secret").write_text("canary-file-sibling\n")
    (allowed / "link").symlink_to(outside / "secret")
    (allowed / "dirlink").symlink_to(outside)
    (allowed / "zero").symlink_to("/dev/zero")
    (allowed / "environ").symlink_to("/proc/self/environ")
    os.mkfifo(allowed / "fifo")
    (allowed / "huge").write_bytes(b"x" * (MAX_FILE_BYTES + 1))
    with (allowed / "sparse").open("wb") as sparse:
        sparse.truncate(8 << 30)
    (allowed / "limit").write_bytes(b"y" * MAX_FILE_BYTES)
    # A Kubernetes secret volume: key -> ..data/key, ..data -> ..<timestamp> (links inside the directory).
    (allowed / "..2024_01_01_00_00_00.1").mkdir()
    (allowed / "..2024_01_01_00_00_00.1" / "token").write_text("rotated-value")
    (allowed / "..data").symlink_to("..2024_01_01_00_00_00.1")
    (allowed / "token").symlink_to("..data/token")
    return {"A": str(allowed), "T": str(tmp_path)}


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path the secret reader opens (proof that nothing was read)."""
    calls: list[str] = []
    real_open = os.open

    def spy(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        calls.append(str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(secret_reader.os, "open", spy)
    return calls


def _node(offline_node: dict[str, Any], field: str, ref: str) -> dict[str, Any]:
    return {**offline_node, "inputs": {**offline_node["inputs"], "use_cloud": True, **FIELDS[field], field: ref}}


def _producer_refuses(offline_node: dict[str, Any], field: str, ref: str, settings: Settings) -> str:
    with pytest.raises(NodeValidationError) as caught:
        validate_node(_node(offline_node, field, ref), settings)
    found = {p["field"]: p["message"] for p in caught.value.as_dicts()}
    assert f"inputs.{field}" in found, found
    return found[f"inputs.{field}"]


# --- canonical form -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("vault:secret//imagegen///tenants/acme/#k", "vault:secret/imagegen/tenants/acme#k"),
        ("vault:/secret/imagegen/aws#credentials", "vault:secret/imagegen/aws#credentials"),
        ("file://var//run/secrets/acme/", "file:/var/run/secrets/acme"),
        ("file:/var/run/secrets/acme/..data/key", "file:/var/run/secrets/acme/..data/key"),  # a name, not ".."
        ("env:TENANT_ACME_KEY", "env:TENANT_ACME_KEY"),
    ],
)
def test_references_are_canonicalised(text: str, canonical: str) -> None:
    assert str(parse_secret_ref(text)) == canonical


@pytest.mark.parametrize("template", [*VAULT_REFUSED.values(), *ENV_REFUSED.values(), *FILE_LEXICAL_REFUSED.values()])
def test_unparseable_references_are_not_echoed(template: str) -> None:
    text = fill(template, R="imagegen", A="/var/run/secrets/acme", T="/var/run/secrets") + "CANARY"
    try:
        parse_secret_ref(text)
    except ValueError as exc:
        assert "CANARY" not in str(exc)
        assert "\x00" not in str(exc)


def test_vault_mount_and_path_forms_read_the_same_path() -> None:
    assert vault_kv_path(parse_secret_ref("vault:secret/a/b#k")) == "a/b"
    assert vault_kv_path(parse_secret_ref("vault:a/b#k")) == "a/b"
    assert vault_kv_path(parse_secret_ref("vault:secret/secret/a#k")) == "secret/a"
    assert vault_kv_path(parse_secret_ref("vault:secret#k")) == "secret"
    assert vault_kv_path(parse_secret_ref("vault:team/kv/a#k"), "team/kv") == "a"


# --- the allow-list ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "entries",
    [
        ["vault:secret/imagegen/tenants", "vault:secret/imagegen/tenants/", "vault:imagegen/tenants//"],
        ["file:/var/run/secrets/acme", "file:/var/run/secrets/acme/", "file://var/run//secrets/acme"],
    ],
)
def test_a_trailing_slash_or_the_mount_form_makes_no_difference(entries: list[str]) -> None:
    assert len({parse_allowed_ref(e).segments for e in entries}) == 1


@pytest.mark.parametrize(
    ("entry", "ref", "allowed"),
    [
        ("vault:secret/imagegen/tenants", "vault:secret/imagegen/tenants/acme#k", True),
        ("vault:secret/imagegen/tenants", "vault:imagegen/tenants/acme#k", True),
        ("vault:imagegen/tenants/", "vault:secret/imagegen/tenants/acme#k", True),
        ("vault:secret/imagegen/tenants/", "vault:imagegen/tenants/acme#k", True),  # refused by the old string check
        ("vault:secret/imagegen/tenants", "vault:secret/imagegen/tenants-evil/x#k", False),
        ("vault:secret/imagegen/tenants", "vault:secret/imagegen/tenants.#k", False),
        ("vault:secret/imagegen/tenants", "vault:secret/imagegen#k", False),
        ("vault:secret/imagegen/tenants", "vault:secret/secret/imagegen/tenants/x#k", False),
        ("vault:secret", "vault:anything/at/all#k", True),  # the whole mount, explicitly
        ("vault:secret/imagegen/aws#credentials", "vault:imagegen/aws#credentials", True),
        ("vault:secret/imagegen/aws#credentials", "vault:imagegen/aws#other", False),
        ("vault:secret/imagegen/aws#credentials", "vault:imagegen/aws/deeper#credentials", False),
        ("file:/var/run/secrets/acme/", "file:/var/run/secrets/acme/key", True),
        ("file:/var/run/secrets/acme", "file:/var/run/secrets/acme-evil/key", False),
        ("file:/var/run/secrets/acme", "file:/var/run/secrets/key", False),
        ("env:TENANT_ACME_", "env:TENANT_ACME_KEY", True),
        ("env:TENANT_ACME_", "env:TENANT_ACMEX", False),
        ("env:TENANT_ACME_", "vault:TENANT_ACME_/x#k", False),
        ("vault:secret/imagegen", "env:imagegen", False),
    ],
)
def test_allow_list_matches_whole_segments(entry: str, ref: str, allowed: bool) -> None:
    reference = parse_secret_ref(ref)
    if allowed:
        check_allowed(reference, (entry,))
    else:
        with pytest.raises(ValueError, match="outside the allowed references"):
            check_allowed(reference, (entry,))


def test_a_hand_built_reference_is_canonicalised_before_matching() -> None:
    smuggled = SecretRef("vault", "imagegen/tenants/acme/../../other", "k")
    with pytest.raises(ValueError, match="not a valid vault: reference"):
        check_allowed(smuggled, ("vault:secret/imagegen/tenants/acme",))


@pytest.mark.parametrize(
    "entry",
    [
        "vault:secret/imagegen/../other",
        "vault:secret/%2e%2e/other",
        "vault:",
        "vault:secret/a#",
        "vault:secret/a b",
        "file:relative/dir",
        "file:/",
        "file:/var/run/../secrets",
        "env:",
        "env:1BAD",
        "s3://bucket",
        "secret/imagegen/tenants",
        "vault:" + "a/" * MAX_REF_CHARS,
    ],
)
def test_invalid_allow_list_entries_fail_at_start_up(entry: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_ALLOWED_SECRET_REFS", f"vault:secret/imagegen/tenants, {entry}")
    with pytest.raises(SettingsError, match="IMAGEGEN_ALLOWED_SECRET_REFS: entry"):
        Settings()


def test_the_worker_refuses_an_allow_list_that_skipped_validation(make_settings: MakeSettings) -> None:
    settings = make_settings("").model_copy(update={"allowed_secret_refs": "vault:secret/../x"})
    with pytest.raises(SecretError, match="IMAGEGEN_ALLOWED_SECRET_REFS is invalid"):
        resolve_secret("env:TENANT_ACME_KEY", settings)


# --- vault: producer -----------------------------------------------------------------------


@pytest.mark.parametrize("vector", sorted(VAULT_REFUSED))
def test_producer_refuses_vault_vectors(vector: str, offline_node: dict[str, Any]) -> None:
    settings = Settings(allowed_secret_refs="vault:secret/imagegen/tenants/acme")
    ref = fill(VAULT_REFUSED[vector], R="imagegen")
    message = _producer_refuses(offline_node, "aws_credentials", ref, settings)
    assert ref not in message or vector in VAULT_PARSES


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_producer_checks_every_credential_field(field: str, offline_node: dict[str, Any]) -> None:
    settings = Settings(allowed_secret_refs=f"vault:secret/imagegen/tenants/acme, {ENV_ALLOW}")
    for template in VAULT_ALLOWED:
        ref = fill(template, R="imagegen")
        assert getattr(validate_node(_node(offline_node, field, ref), settings).inputs, field) == ref  # control
    for ref in (
        "vault:secret/imagegen/tenants/acme/../../other/aws#k",
        "vault:secret/imagegen/tenants/acme-evil/aws#k",
        "env:PLATFORM_SECRET",
        "file:/proc/self/environ",
    ):
        _producer_refuses(offline_node, field, ref, settings)


# --- vault: worker, against the real OpenBao server ---------------------------------------------


def test_vault_controls_the_canaries_exist(vault_settings: MakeSettings, vault_root: str) -> None:
    """Without the tenant allow-list each canary *is* readable: the refusals below are real."""
    broad = vault_settings(f"vault:secret/{vault_root}, vault:secret/secret")
    for path, canary in [
        ("tenants/acme-evil/aws", "canary-vault-sibling"),
        ("tenants/acme./aws", "canary-vault-trailing-dot"),
        ("other/aws", "canary-vault-other"),
    ]:
        assert resolve_secret(f"vault:secret/{vault_root}/{path}#k", broad) == canary
    assert resolve_secret(f"vault:secret/secret/{vault_root}/tenants/acme/aws#k", broad) == "canary-vault-mount-twice"


@pytest.mark.parametrize("template", VAULT_ALLOWED)
@pytest.mark.parametrize("entry", ["vault:secret/{R}/tenants/acme", "vault:{R}/tenants/acme/"])
def test_vault_allowed_forms_read_the_tenant_secret(
    template: str, entry: str, vault_settings: MakeSettings, vault_root: str
) -> None:
    settings = vault_settings(fill(entry, R=vault_root))
    assert resolve_secret(fill(template, R=vault_root), settings) == "acme-value"


@pytest.mark.parametrize("vector", sorted(VAULT_REFUSED))
def test_vault_worker_refuses_and_returns_no_canary(vector: str, vault_settings: MakeSettings, vault_root: str) -> None:
    settings = vault_settings(f"vault:secret/{vault_root}/tenants/acme")
    ref = fill(VAULT_REFUSED[vector], R=vault_root)
    with pytest.raises(SecretError) as caught:
        resolve_secret(ref, settings)
    message = str(caught.value)
    assert "canary" not in message and "acme-value" not in message
    expected = "outside the allowed references" if vector in VAULT_PARSES else "a credential field is "
    assert expected in message
    if vector not in VAULT_PARSES:
        assert ref not in message


def test_vault_key_entry_allows_exactly_that_key(vault_settings: MakeSettings, vault_root: str) -> None:
    settings = vault_settings(f"vault:secret/{vault_root}/tenants/acme/aws#k")
    assert resolve_secret(f"vault:{vault_root}/tenants/acme/aws#k", settings) == "acme-value"
    with pytest.raises(SecretError, match="outside the allowed references"):
        resolve_secret(f"vault:{vault_root}/tenants/acme/aws#k2", settings)


@pytest.mark.parametrize("vector", sorted(VAULT_REFUSED))
def test_vault_worker_refuses_before_any_request(vector: str, make_settings: MakeSettings) -> None:
    """Vault is a dead port here: any read attempt would be a TransientError, not a SecretError."""
    settings = make_settings("vault:secret/imagegen/tenants/acme")
    with pytest.raises(TransientError):
        resolve_secret("vault:secret/imagegen/tenants/acme/aws#k", settings)  # control: an allowed ref tries
    with pytest.raises(SecretError):
        resolve_secret(fill(VAULT_REFUSED[vector], R="imagegen"), settings)


# --- env: ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", sorted(ENV_REFUSED))
def test_env_vectors_are_refused_at_both_layers(
    vector: str, make_settings: MakeSettings, offline_node: dict[str, Any]
) -> None:
    settings = make_settings(ENV_ALLOW)
    assert resolve_secret("env:TENANT_ACME_KEY", settings) == "acme-env-value"  # control
    if vector in {"platform", "sibling-prefix", "prefix-without-underscore"}:
        assert resolve_secret(ENV_REFUSED[vector], make_settings("")).startswith("canary-")  # exists, readable
    _producer_refuses(offline_node, "aws_credentials", ENV_REFUSED[vector], settings)
    with pytest.raises(SecretError) as caught:
        resolve_secret(ENV_REFUSED[vector], settings)
    assert "canary" not in str(caught.value)


# --- file: --------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", sorted(FILE_LEXICAL_REFUSED))
def test_file_lexical_vectors_are_refused_at_both_layers_unread(
    vector: str, tree: dict[str, str], make_settings: MakeSettings, offline_node: dict[str, Any], opened: list[str]
) -> None:
    settings = make_settings(f"file:{tree['A']}")
    ref = fill(FILE_LEXICAL_REFUSED[vector], **tree)
    _producer_refuses(offline_node, "aws_credentials", ref, settings)
    with pytest.raises(SecretError) as caught:
        resolve_secret(ref, settings)
    assert "canary" not in str(caught.value)
    assert opened == []  # not even opened


@pytest.mark.timeout(20)
@pytest.mark.parametrize("vector", sorted(FILE_WORKER_REFUSED))
def test_file_filesystem_tricks_are_refused_by_the_worker_unread(
    vector: str, tree: dict[str, str], make_settings: MakeSettings, offline_node: dict[str, Any], opened: list[str]
) -> None:
    template, why = FILE_WORKER_REFUSED[vector]
    ref = fill(template, **tree)
    settings = make_settings(f"file:{tree['A']}/")
    validate_node(_node(offline_node, "aws_credentials", ref), settings)  # lexically fine: only the worker can tell
    with pytest.raises(SecretError) as caught:
        resolve_secret(ref, settings)
    assert why in str(caught.value)
    assert "canary" not in str(caught.value) and "/outside" not in str(caught.value)  # the real path is not shown
    if vector.startswith("symlink") or vector == "symlinked-dir":
        assert opened == []


def test_file_controls_the_symlinks_would_be_read(tree: dict[str, str], make_settings: MakeSettings) -> None:
    """With no allow-list (development) the same links are followed: the refusals above are real."""
    dev = make_settings("")
    assert resolve_secret(fill("file:{A}/link", **tree), dev) == "canary-file-outside"
    assert resolve_secret(fill("file:{A}/dirlink/secret", **tree), dev) == "canary-file-outside"
    assert resolve_secret(fill("file:{T}/mounted-evil/secret", **tree), dev) == "canary-file-sibling"


def test_file_inside_links_and_the_size_limit_are_read(tree: dict[str, str], make_settings: MakeSettings) -> None:
    settings = make_settings(f"file:{tree['A']}")
    assert resolve_secret(fill("file:{A}/key", **tree), settings) == "acme-file-value"
    assert resolve_secret(fill("file:{A}//key", **tree), settings) == "acme-file-value"
    assert resolve_secret(fill("file:{A}/token", **tree), settings) == "rotated-value"  # Kubernetes ..data links
    assert resolve_secret(fill("file:{A}/limit", **tree), settings) == "y" * MAX_FILE_BYTES


def test_an_allowed_directory_that_is_itself_a_link_works(tree: dict[str, str], make_settings: MakeSettings) -> None:
    alias = Path(tree["T"]) / "alias"
    alias.symlink_to(tree["A"])
    settings = make_settings(f"file:{alias}")
    assert resolve_secret(f"file:{alias}/key", settings) == "acme-file-value"
    with pytest.raises(SecretError, match="symbolic link outside"):
        resolve_secret(f"file:{alias}/link", settings)


@pytest.mark.timeout(20)
def test_development_reads_any_file_but_not_dotdot_fifos_devices_or_huge_files(
    tree: dict[str, str], make_settings: MakeSettings
) -> None:
    dev = make_settings("")
    assert resolve_secret(fill("file:{T}/outside/secret", **tree), dev) == "canary-file-outside"
    with pytest.raises(SecretError, match="not a valid file: reference"):
        resolve_secret(fill("file:{A}/../outside/secret", **tree), dev)
    for ref, why in [
        ("file:/dev/zero", "is not a regular file"),
        (fill("file:{A}/zero", **tree), "is not a regular file"),
        (fill("file:{A}/fifo", **tree), "is not a regular file"),
        (fill("file:{A}/sparse", **tree), "larger than"),
        (fill("file:{A}/huge", **tree), "larger than"),
    ]:
        with pytest.raises(SecretError, match=why):
            resolve_secret(ref, dev)


@pytest.mark.timeout(20)
def test_an_allowed_device_directory_still_refuses_devices(make_settings: MakeSettings) -> None:
    settings = make_settings("file:/dev")
    with pytest.raises(SecretError, match="is not a regular file"):
        resolve_secret("file:/dev/zero", settings)
    with pytest.raises(SecretError, match=r"is not a regular file|symbolic link outside"):
        resolve_secret("file:/dev/stdin", settings)  # a link to a terminal, /dev/null or a pipe
