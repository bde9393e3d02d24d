"""Deterministic object keys: the same job, run and variation always land on
the same key, so a redelivered or retried task overwrites and never duplicates.

``<prefix>/<job id>/variation-<i>.<ext>`` (a rerun adds ``.run<n>`` before the
extension). The job id grammar (contract/job_ids.py) has no ``..`` and the file
name is always the last segment, so for one prefix the mapping is one-to-one:
no job id can produce another job's key.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from contract.tenancy import first_namespace, tenant_of
from worker.errors import NotStoredHere, StorageError
from worker.storage.base import check_key

_FILE = re.compile(r"variation-(?P<index>\d{1,3})(\.run(?P<run>\d{1,6}))?\.(?P<ext>[a-z0-9]{2,5})")


WRITE_CHECK_NAME = ".imagegen-write-check"  # the write check's marker (worker/storage/write_check.py)


def object_key(prefix: str | None, job_id: str, index: int, extension: str, run: int = 1) -> str:
    parts = [p for p in (prefix or "").split("/") if p]
    suffix = "" if run == 1 else f".run{run}"
    return _in_jobs_namespace([*parts, job_id, f"variation-{index}{suffix}.{extension}"], job_id, "object key")


def write_check_key(prefix: str, job_id: str) -> str:
    """Where the write check for ``job_id``'s images under ``prefix`` writes: beside the job folders
    of the job's tenant namespace (``t/<tenant>``), never an image's name."""
    namespace = job_id.split("/")[:2] if tenant_of(job_id) is not None else []
    parts = [p for p in prefix.split("/") if p]
    return _in_jobs_namespace([*parts, *namespace, WRITE_CHECK_NAME], job_id, "write check key")


def _in_jobs_namespace(parts: list[str], job_id: str, kind: str) -> str:
    """The key ``parts`` join to, canonical and in ``job_id``'s tenant namespace; StorageError otherwise.
    Whose namespace a key is in is whose job it is: signing trusts the key's first ``t`` segment
    (check_image_key), so no prefix or id may move it (both are refused before any cost,
    contract/clouds/base.py and contract/job_ids.py; this holds for a message sent past them)."""
    key = check_key("/".join(parts))
    if first_namespace(key.split("/")) != tenant_of(job_id):
        raise StorageError(f"refused the {kind} {key!r}: its tenant namespace is not its job's")
    return key


def check_image_key(key: str, prefix: str | None, tenant: str | None = None) -> str:
    """``key`` if it names an image this service wrote under ``prefix`` (for one of ``tenant``'s
    jobs, when given); StorageError otherwise. Signing is limited to these, so ``sign`` cannot
    hand out URLs for other objects."""
    base = "/".join(p for p in (prefix or "").split("/") if p)
    check_key(key)
    head, _, name = key.rpartition("/")
    job_part = head.removeprefix(f"{base}/") if base else head
    if (base and not head.startswith(f"{base}/")) or not job_part or not _FILE.fullmatch(name):
        where = f"under the prefix {base!r}" if base else "in this store"
        raise NotStoredHere(f"refused to sign {key!r}: it is not an image this service stored {where}")
    # The key's first ``t`` segment too: a prefix the caller names (``t/globex/x``) cannot move it.
    if tenant is not None and (tenant_of(job_part) != tenant or first_namespace(key.split("/")) != tenant):
        raise NotStoredHere(f"refused to sign {key!r}: it is not an image of tenant {tenant!r}'s jobs")
    return key


def check_image_uri_shape(uri: str) -> str:
    """``uri`` if it could be an image's durable uri as this service returns them (no query or
    fragment, a ``variation-<i>.<ext>`` file name); NotStoredHere otherwise, before any store is
    opened or credential read. A signed URL handed in by mistake is refused here, so its token is
    not logged or quoted."""
    if "?" in uri or "#" in uri:
        raise NotStoredHere("refused to sign a uri with a query or fragment (a signed URL, not the image's uri)")
    if not _FILE.fullmatch(urlsplit(uri).path.rpartition("/")[2]):
        raise NotStoredHere("refused to sign a uri that does not name an image file this service writes")
    return uri
