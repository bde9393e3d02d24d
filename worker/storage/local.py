"""Local filesystem store: the embedded default for ``use_cloud: false``.

Fine for one machine and the demo; production refuses it (see Settings),
because another pod or the next node cannot read this disk.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from worker.errors import StorageError
from worker.storage.base import StoredObject


class LocalStore:
    def __init__(self, root: str | Path, public_base_url: str | None = None):
        self.root = Path(root).expanduser().resolve()
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None

    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> StoredObject:
        path = self.root / key
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename: a reader never sees half an image.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror}") from None
        return self._object(path)

    def url_for(self, uri: str) -> StoredObject:
        path = Path(unquote(urlparse(uri).path))
        if not path.is_relative_to(self.root):
            raise StorageError(f"{uri} is not in this store ({self.root})")
        return self._object(path)

    def _object(self, path: Path) -> StoredObject:
        uri = path.as_uri()
        if self.public_base_url:
            return StoredObject(uri=uri, url=f"{self.public_base_url}/{path.relative_to(self.root).as_posix()}")
        return StoredObject(uri=uri, url=uri)
