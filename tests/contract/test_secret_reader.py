"""The shared reader of secret values, as the API uses it (no allow-list): what it reads, what it
refuses, and that an error names the reference, never the value. The worker's allow-list and
Vault paths are in tests/security/test_secret_refs.py and tests/cloud/test_secrets.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from contract.secret_reader import MAX_FILE_BYTES, SecretReadError, SecretUnavailable, read_secret
from contract.secret_refs import parse_secret_ref
from contract.settings import Settings
from devtools.redis_server import free_port


def read(reference: str, settings: Settings, directories: tuple[str, ...] = ()) -> str:
    return read_secret(parse_secret_ref(reference), settings, directories)


@pytest.fixture
def settings() -> Settings:
    return Settings(vault_addr=f"http://127.0.0.1:{free_port()}", vault_token="dev-only-token")


def test_env_and_file_values(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_READER_TOKEN", "env-value-0123456789")
    assert read("env:TEST_READER_TOKEN", settings) == "env-value-0123456789"
    (tmp_path / "token").write_text("file-value-0123456789\n")  # a mounted secret's newline is not the value
    assert read(f"file:{tmp_path}/token", settings) == "file-value-0123456789"


@pytest.mark.parametrize("kind", ["unset", "empty file", "too large", "fifo", "directory", "not utf-8", "absent"])
def test_unusable_values_name_the_reference_only(
    kind: str, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "secret"
    if kind == "unset":
        monkeypatch.delenv("TEST_READER_UNSET", raising=False)
        reference = "env:TEST_READER_UNSET"
    else:
        reference = f"file:{target}"
        if kind == "empty file":
            target.write_text("\n")
        elif kind == "too large":
            target.write_bytes(b"s3cr3t" * (MAX_FILE_BYTES // 6 + 1))
        elif kind == "fifo":
            os.mkfifo(target)  # opening it for reading would block: it must be refused before
        elif kind == "directory":
            target.mkdir()
        elif kind == "not utf-8":
            target.write_bytes(b"s3cr3t\xff\xfe")
    with pytest.raises(SecretReadError) as caught:
        read(reference, settings)
    assert not isinstance(caught.value, SecretUnavailable)  # none of these gets better by waiting
    assert str(caught.value).startswith(f"{reference}: ") and "s3cr3t" not in str(caught.value)


def test_a_symlink_out_of_the_given_directories_is_not_read(settings: Settings, tmp_path: Path) -> None:
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    (outside / "key").write_text("outside-value")
    (inside / "key").symlink_to(outside / "key")
    with pytest.raises(SecretReadError, match="outside the allowed directories") as caught:
        read(f"file:{inside}/key", settings, (str(inside),))
    assert "outside-value" not in str(caught.value)
    assert read(f"file:{inside}/key", settings) == "outside-value"  # no directories given: the caller's choice


def test_an_unreachable_vault_is_worth_another_try(settings: Settings) -> None:
    with pytest.raises(SecretUnavailable, match=r"^vault:secret/imagegen/api#acme: cannot reach Vault"):
        read("vault:secret/imagegen/api#acme", settings)
