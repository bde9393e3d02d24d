"""The embedded local store: deterministic keys, atomic overwrite, URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import StorageError
from worker.storage import object_key
from worker.storage.local import LocalStore


def test_keys_are_deterministic_per_job_and_variation() -> None:
    assert object_key(None, "job-1", 2, "png") == "job-1/variation-2.png"
    assert object_key("/tenant/a/", "job-1", 0, "jpg") == "tenant/a/job-1/variation-0.jpg"
    assert object_key("p", "job-1", 0, "png") == object_key("p", "job-1", 0, "png")


def test_put_writes_and_a_rewrite_overwrites(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = store.put("j/variation-0.png", b"one", "image/png", {})
    second = store.put("j/variation-0.png", b"two", "image/png", {})
    path = tmp_path / "j" / "variation-0.png"
    assert first.uri == second.uri == path.as_uri() == second.url
    assert path.read_bytes() == b"two"
    assert [p.name for p in (tmp_path / "j").iterdir()] == ["variation-0.png"]  # no temp files left


def test_public_base_url_makes_http_urls(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, public_base_url="https://cdn.example/images/")
    stored = store.put("j/variation-0.png", b"x", "image/png", {})
    assert stored.url == "https://cdn.example/images/j/variation-0.png"
    assert store.url_for(stored.uri).url == stored.url


def test_url_for_refuses_objects_outside_the_store(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        LocalStore(tmp_path / "a").url_for((tmp_path / "b" / "x.png").as_uri())


def test_unwritable_root_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot write"):
        LocalStore(blocker).put("j/variation-0.png", b"x", "image/png", {})
