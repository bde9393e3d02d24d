"""A heartbeat file for Kubernetes liveness probes.

``celery inspect ping`` as a probe starts a Python process per probe; instead
the worker touches a file on every event heartbeat (every few seconds) and the
probe checks its age (see deploy/k8s/worker-deployment.yaml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery.signals import heartbeat_sent, worker_init, worker_ready, worker_shutdown

from contract.settings import get_settings


@worker_ready.connect
@heartbeat_sent.connect
def touch_heartbeat(**_: Any) -> None:
    Path(get_settings().heartbeat_file).touch()


@worker_init.connect  # a file left by a killed container (an emptyDir outlives it) is no sign of life
@worker_shutdown.connect
def remove_heartbeat(**_: Any) -> None:
    Path(get_settings().heartbeat_file).unlink(missing_ok=True)
