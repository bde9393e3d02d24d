"""The one grammar for job ids a caller gives (``submit(job_id=...)``, ``--job-id``).

A job id is 1 to 128 characters: one or more *segments* separated by single
``/`` characters, so a workflow engine can name a node's job after its run,
e.g. ``run-42/node-7``. Each segment is ASCII letters, digits, ``.``, ``_``
and ``-`` (``[A-Za-z0-9._-]+``) and is neither ``.`` nor ``..``; there is no
leading or trailing ``/`` and no ``//``. A UUID (the default) is a job id.

Why so strict: a job id is not just a label.

* It becomes part of object keys in storage (``<prefix>/<job id>/<n>.png``):
  ``..``, ``.``, empty segments and a leading ``/`` would walk out of the
  job's own place or collapse onto another job's.
* It becomes part of Redis keys (``imagegen:job:<job id>``) and Celery task
  ids: ``:`` is reserved to separate Redis key kinds and ``@`` to separate a
  job from its run number (``<job id>@<run>``), so no job id can name another
  kind's key or another job's run.
* Its ``t`` segments name tenants: the HTTP API stores tenant ``acme``'s job ``x`` as
  ``t/acme/x`` (contract/tenancy.py), and an object key's first ``t`` segment says whose image
  it is when it is signed. So ``t`` may only begin an id, as ``t/<tenant>/<id>``: a platform
  job ``run-1/t/acme/x`` would otherwise write images into acme's namespace, which acme signs.
  The rule is checked where a job is created or started (``check_new_job_id``); a tenant's own
  id (the HTTP API's) may hold ``t``, as it is stored after ``t/<tenant>/``.
* It is printed in logs and terminals: a newline or other control character
  would forge log lines, and Unicode lookalikes (Cyrillic U+0430 for Latin ``a``)
  would make two different jobs read the same. ASCII only rules out both.
"""

from __future__ import annotations

import re

from contract.errors import NodeValidationError, Problem, excerpt

MAX_JOB_ID_CHARS = 128
NAMESPACE_ROOT = "t"  # t/<tenant>/<the caller's id>
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")

GRAMMAR = (
    f"a job id is 1 to {MAX_JOB_ID_CHARS} characters: segments of ASCII letters, digits, '.', '_' and '-' "
    "separated by single '/' (e.g. run-42/node-7); no segment is '.' or '..', "
    "no leading, trailing or double '/'"
)
NAMESPACE_RULE = "a segment 't' only begins an id, as t/<tenant>/<id> (a tenant's namespace)"


def is_job_id(value: object) -> bool:
    """Whether ``value`` is a str in the job id grammar."""
    return _plain(value) is not None


def check_job_id(value: object) -> str:
    """``value`` as a plain str when it is a valid job id; NodeValidationError naming the grammar
    otherwise. For ids of jobs that may exist (reading, canceling, finishing); a new job's id is
    checked by ``check_new_job_id``."""
    job_id = _plain(value)
    if job_id is not None:
        return job_id
    raise NodeValidationError([Problem("job_id", excerpt(value), f"is not valid; {GRAMMAR}")], subject="job id")


def is_new_job_id(value: object) -> bool:
    """Whether ``value`` may name a new job: the grammar and the namespace rule."""
    job_id = _plain(value)
    return job_id is not None and _in_its_namespace(job_id)


def check_new_job_id(value: object) -> str:
    """``check_job_id`` for an id a job is created or started under (submit, a chain link, the job
    task): also the namespace rule, so its images cannot land in a tenant's namespace. Jobs
    submitted before the rule stay readable and cancelable; the job task ends them before any cost."""
    job_id = _plain(value)
    if job_id is not None and _in_its_namespace(job_id):
        return job_id
    rules = f"{GRAMMAR}; {NAMESPACE_RULE}"
    raise NodeValidationError([Problem("job_id", excerpt(value), f"is not valid; {rules}")], subject="job id")


def _in_its_namespace(job_id: str) -> bool:
    segments = job_id.split("/")
    return NAMESPACE_ROOT not in segments or (segments[0] == NAMESPACE_ROOT and len(segments) >= 3)


def _plain(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    text = str.__str__(value)  # a plain str: a subclass's own len() or split() play no part
    if not 1 <= len(text) <= MAX_JOB_ID_CHARS:
        return None
    if all(_SEGMENT.fullmatch(segment) and segment not in (".", "..") for segment in text.split("/")):
        return text
    return None
