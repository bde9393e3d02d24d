"""The Celery application the worker pods run (``celery -A worker worker``)."""

from __future__ import annotations

import inspect
import logging
from typing import Any

from celery import Task
from celery.signals import celeryd_after_setup, worker_init

from contract.queue import ImageGenCelery, celery_config, is_amqp
from contract.settings import Settings, get_settings
from worker.cpu_affinity import CpuAffinityError, pin_worker
from worker.malloc import keep_image_buffers
from worker.metrics import serve as serve_metrics
from worker.payloads import PayloadRefused, parse_arguments
from worker.redaction import install_log_redaction
from worker.signal_wakeup import SignalWakeup


class ImageGenTask(Task):  # type: ignore[misc]  # Celery ships no type hints
    """Base of every task here: its task events never carry the return value (signed URLs)."""

    Request = "worker.redaction:RedactedRequest"
    # Celery writes a repr of every return value for the success log line and event, which
    # redaction then replaces: a character is all it needs to build (was up to 1 KB per task).
    resultrepr_maxsize = 1

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The task's payloads parsed first: a message that does not parse is refused in one
        line and answered by ``refused`` (worker/payloads.py), not a pydantic traceback."""
        run = self.run
        owner = (self,) if inspect.ismethod(run) else ()  # bind=True: the function takes the task
        try:
            bound = parse_arguments(run.__func__ if owner else run, (*owner, *args), kwargs)
        except PayloadRefused as refusal:
            logging.getLogger(__name__).warning(
                "task %s[%s]: message refused, its payload does not parse: %s",
                self.name,
                self.request.id,
                refusal.problem,
            )
            return self.refused(refusal)
        if bound is None:
            return super().__call__(*args, **kwargs)
        return super().__call__(*bound.args[len(owner) :], **bound.kwargs)

    def retry(self, *args: Any, **options: Any) -> Any:
        """Celery's retry, keeping the message's short label (``argsrepr``, ``kwargsrepr``, set
        where a task is sent): Celery leaves it off the new message, whose task events then
        carry the whole payload, and Flower shows and keeps it (a tenant's prompt, its target)."""
        for label in ("argsrepr", "kwargsrepr"):
            shown = getattr(self.request, label, None)
            if shown is not None:
                options.setdefault(label, shown)
        return super().retry(*args, **options)

    def refused(self, refusal: PayloadRefused) -> Any:
        """What a task whose message does not parse returns; a task may set its own
        (``@app.task(refused=...)``)."""
        return None


def worker_pools(settings: Settings, transport_options: dict[str, Any]) -> dict[str, Any]:
    """The broker's pools, sized from the concurrency: every slot may publish (a retry, the
    chord's fan-out, its callback) and ack at once. kombu keeps 10 producers and, on Redis,
    10 connections per channel (then redis-py raises MaxConnectionsError). Worker-only: kombu's
    producer pool limit is global to a process, and a producer's process may hold other apps."""
    pools: dict[str, Any] = {"broker_pool_limit": settings.pool_size}
    if not is_amqp(settings.broker):
        pools["broker_transport_options"] = {**transport_options, "max_connections": settings.pool_size}
    return pools


app = ImageGenCelery("imagegen", task_cls=ImageGenTask)  # whole-second countdowns on RabbitMQ
app.conf.update(celery_config(get_settings()))
app.conf.update(worker_pools(get_settings(), app.conf.broker_transport_options))
app.conf.worker_consumer = "worker.consumer:ResilientConsumer"  # survives a lost Redis broker
app.steps["consumer"].add(SignalWakeup)  # SIGTERM stops an idle worker at once, not after a poll
app.conf.include = [
    "worker.health",
    "worker.sweeper",
    "worker.tasks.run_job",
    "worker.tasks.variation",
    "worker.tasks.finalize",
    "worker.tasks.prompt_step",  # LLM -> image: the prompt step
    "worker.tasks.upstream",  # a chain after the engine's own task: the link and its errback
    "worker.tasks.sign",
    "worker.tasks.webhooks",
]
install_log_redaction()


def quiet_received_lines(settings: Settings) -> None:
    """No INFO line from Celery for every task received, unless asked for: it cost 3-6 % of a
    job's worker CPU at L = 0 and a third of the worker's log (docs/pools.md). Celery's strategy
    reads the level once, when the consumer starts, and skips building the line; its errors
    still log."""
    level = logging.NOTSET if settings.log_task_received else logging.WARNING
    logging.getLogger("celery.worker.strategy").setLevel(level)


quiet_received_lines(get_settings())


def _reuse_image_buffers(**_: Any) -> None:
    keep_image_buffers()  # worker/malloc.py: no page faults per image


def _serve_metrics(**_: Any) -> None:
    serve_metrics(get_settings())  # worker/metrics.py, when IMAGEGEN_METRICS_PORT is set


def _no_result_subscriptions(**_: Any) -> None:
    """A worker never waits for a result, so it subscribes to none.

    With the Redis result backend, Celery subscribes to a result's channel whenever a
    result object is watched, and a chord watches every header task it sends: the worker
    would subscribe to each variation's channel and never read or leave it (a subscription
    in Redis and a pending result in the worker per variation, for the worker's lifetime;
    measured: 400 after 100 jobs of 4). The worker's own use of results is storing them.
    """
    app.backend.add_pending_result = _not_watched


def _not_watched(result: Any, weak: bool = False, start_drainer: bool = True) -> Any:
    return result


def _pin_to_one_cpu(**_: Any) -> None:
    """IMAGEGEN_WORKER_CPU (worker/cpu_affinity.py): once logging is set up, before the pool and
    the consumer start their threads (they inherit the CPU)."""
    try:
        pin_worker(get_settings().worker_cpu)
    except CpuAffinityError as exc:
        logging.getLogger(__name__).critical("the worker cannot start: %s", exc)
        raise SystemExit(1) from None  # Celery logs and swallows an Exception raised here


celeryd_after_setup.connect(_pin_to_one_cpu, weak=False)
worker_init.connect(_reuse_image_buffers, weak=False)
worker_init.connect(_no_result_subscriptions, weak=False)
worker_init.connect(_serve_metrics, weak=False)
