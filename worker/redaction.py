"""Keep task return values out of logs, task events and Flower.

Return values carry signed URLs (result documents, re-signed URLs): bearer
credentials for private images. Celery logs each success with its return
value and sends it in the ``task-succeeded`` event, which Flower shows and
keeps. The result backend is where results belong; everywhere else they are
replaced by a note.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.request import Request

REDACTED = "<result not shown: see the job's result document>"


class RedactedRequest(Request):  # type: ignore[misc]  # Celery ships no type hints
    """The worker-side request of our tasks: events without the return value."""

    def send_event(self, type: str, **fields: Any) -> None:
        if "result" in fields:
            fields["result"] = REDACTED
        super().send_event(type, **fields)


class _DropReturnValue(logging.Filter):
    """``Task x[id] succeeded in 0.1s: <return value>`` without the return value."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict) and "return_value" in record.args:
            record.args = {**record.args, "return_value": REDACTED}
        return True


def install_log_redaction() -> None:
    logging.getLogger("celery.app.trace").addFilter(_DropReturnValue())
