"""The Celery app Flower runs on: ``celery -A worker.flower flower``.

Flower watches the workers through their task events and the broker; it needs no result
backend, and it must not have one. Its API reads any task's result from the backend
(``/api/task/result/<id>``), and a job's result document, under the predictable id
``<job id>@<run>`` that ``/api/tasks`` lists, holds signed image URLs: anyone with Flower's
one password would read every tenant's images. Its ``apply``, ``async-apply`` and
``send-task`` routes would run any task with the platform's credentials, past the API's
tenancy and quotas. So this app has the workers' broker and no backend, and those routes
(and ``abort``, which needs a backend) are not served: Flower answers them 404.

Worker control (revoke, pool size, shutdown) stays: that is what operators use Flower for.
"""

from __future__ import annotations

from typing import Any

from flower import urls

from contract.queue import ImageGenCelery, celery_config
from contract.settings import get_settings

NOT_SERVED = (
    "/api/task/apply/",
    "/api/task/async-apply/",
    "/api/task/send-task/",
    "/api/task/result/",
    "/api/task/abort/",
)


def _pattern(handler: Any) -> str:
    """A route's path pattern: Flower lists tornado ``url(...)`` specs and plain tuples."""
    regex = getattr(handler, "regex", None)
    return str(regex.pattern if regex is not None else handler[0])


def _served(handler: Any) -> bool:
    return not _pattern(handler).startswith(NOT_SERVED)


# Flower builds its application from this list when it starts, after importing the app
# (``-A``); changed in place, as flower.app holds the same list.
urls.handlers[:] = [handler for handler in urls.handlers if _served(handler)]

app = ImageGenCelery("imagegen-flower")
app.conf.update(celery_config(get_settings()))
app.conf.result_backend = None  # Celery's DisabledBackend: no result can be read from here
celery = app
