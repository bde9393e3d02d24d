"""Local filesystem store: the embedded default for ``use_cloud: false``.

Fine for one machine and the demo; production refuses it (see Settings),
because another pod or the next node cannot read this disk. Besides the
canonical key, every path is resolved (symlinks included) and must stay
under the root.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

from worker.errors import StorageError
from worker.storage.base import ImageStore, StoredObject


class LocalStore(ImageStore):
    def __init__(self, root: str | Path, public_base_url: str | None = None):
        self.root = Path(root).expanduser().resolve()
        self.where = f"local storage {str(self.root)!r}"
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None

    def _put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> StoredObject:
        path = self._confined(self.root / key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            parent = self._confined(path.parent)  # a directory swapped for a symlink meanwhile
            # Write then rename: a reader never sees half an image; rename replaces a symlink, never follows it.
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=".part-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, parent / path.name)
        except OSError as exc:
            raise StorageError(f"cannot write {key} in {self.where}: {exc.strerror}") from None
        return self._object(key)

    def key_of(self, uri: str) -> str:
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise StorageError(f"{uri} is not a file in {self.where}")
        path = Path(unquote(parts.path))
        if not path.is_relative_to(self.root):
            raise StorageError(f"{uri} is not in {self.where}")
        return path.relative_to(self.root).as_posix()

    def _object(self, key: str) -> StoredObject:
        path = self.root / key
        uri = path.as_uri()
        if self.public_base_url:
            return StoredObject(uri=uri, url=f"{self.public_base_url}/{key}")
        return StoredObject(uri=uri, url=uri)

    def _confined(self, path: Path) -> Path:
        """``path`` with symlinks resolved, if that stays under the root."""
        real = path.resolve()
        if real != self.root and not real.is_relative_to(self.root):
            raise StorageError(f"refused a path that leaves {self.where}")
        return path
