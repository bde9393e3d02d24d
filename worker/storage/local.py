"""Local filesystem store: the embedded default for ``use_cloud: false``.

Fine for one machine and the demo; production refuses it (see Settings),
because another pod or the next node cannot read this disk. Besides the
canonical key, the write walks down from the root one directory at a time,
each opened relative to the one above with ``O_NOFOLLOW``: a symbolic link
anywhere below the root is refused, and nothing can swap one in between a
check and the write (there is no separate check).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from worker.errors import NotStoredHere, StorageError
from worker.storage.base import ImageStore, StoredObject, check_key


class LocalStore(ImageStore):
    def __init__(self, root: str | Path, public_base_url: str | None = None):
        self.root = Path(root).expanduser().resolve()
        self.where = f"local storage {str(self.root)!r}"
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None

    def _put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> StoredObject:
        *folders, name = key.split("/")
        with self._folder(folders, key) as folder:
            _write_then_rename(folder, name, data)
        return self._object(key)

    def check_writable(self, key: str) -> None:
        """Make ``key``'s folders and a temporary file in the last, removed at once: no marker file
        is left, as one could take the name a later job's folder needs (a job id may be any name)."""
        *folders, _ = check_key(key).split("/")
        with self._folder(folders, "/".join(folders) or ".") as folder:
            part = _part_name()
            os.close(os.open(part, _FILE_FLAGS, 0o600, dir_fd=folder))
            os.unlink(part, dir_fd=folder)

    @contextlib.contextmanager
    def _folder(self, folders: list[str], what: str) -> Iterator[int]:
        """A descriptor of root/folders... for the block, made as needed; an OSError on the way or
        in the block is a StorageError naming ``what``."""
        try:
            folder = self._open_folder(folders)
            try:
                yield folder
            finally:
                os.close(folder)
        except OSError as exc:
            raise StorageError(f"cannot write {what} in {self.where}: {exc.strerror}") from None

    def _open_folder(self, folders: list[str]) -> int:
        """A descriptor of root/folders..., made as needed; a symbolic link on the way raises ELOOP."""
        try:
            fd = os.open(self.root, _FOLDER_FLAGS)
        except FileNotFoundError:  # the first write makes the root (the operator named it)
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root, _FOLDER_FLAGS)
        for folder in folders:
            try:
                child = self._enter(fd, folder)
            finally:
                os.close(fd)
            fd = child
        return fd

    def _enter(self, parent: int, folder: str) -> int:
        """A descriptor of ``folder`` in ``parent``, made if missing; never through a symbolic link.
        Opened first and made only when missing: most writes find their folders there, and each
        call into the kernel lets go of the GIL (another thread's turn, in a busy worker)."""
        try:
            try:
                return os.open(folder, _FOLDER_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):  # another writer may make it first
                    os.mkdir(folder, dir_fd=parent)
                return os.open(folder, _FOLDER_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a symbolic link, or a file, in the way
                raise StorageError(f"refused a path that leaves {self.where}") from None
            raise

    def key_of(self, uri: str) -> str:
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise NotStoredHere(f"{uri} is not a file in {self.where}")
        path = Path(unquote(parts.path))
        if not path.is_relative_to(self.root):
            raise NotStoredHere(f"{uri} is not in {self.where}")
        return path.relative_to(self.root).as_posix()

    def _object(self, key: str) -> StoredObject:
        path = self.root / key
        uri = path.as_uri()
        if self.public_base_url:
            return StoredObject(uri=uri, url=f"{self.public_base_url}/{key}")
        return StoredObject(uri=uri, url=uri)


_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _write_then_rename(folder: int, name: str, data: bytes) -> None:
    """Write then rename: a reader never sees half an image; rename replaces a symlink, never follows it."""
    part = _part_name()
    out = os.open(part, _FILE_FLAGS, 0o600, dir_fd=folder)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
        finally:
            os.close(out)
        os.replace(part, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part, dir_fd=folder)
        raise


def _part_name() -> str:
    """A temporary file's name: never an image's, and no two writers' alike (a random token per
    process, new after a fork, and a counter: no ``getrandom`` per name, which lets go of the GIL;
    ``getpid`` does not)."""
    global _writer
    pid = os.getpid()
    if _writer[0] != pid:
        _writer = (pid, secrets.token_hex(8))
    return f".part-{_writer[1]}-{next(_part_numbers)}"


_writer: tuple[int, str] = (0, "")
_part_numbers = itertools.count()
