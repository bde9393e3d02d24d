"""Loaded at start-up by a test's API process (its PYTHONPATH names this folder): a host under
``.slow.test`` takes 3 s to fail to resolve, as behind a DNS server that does not answer."""

from __future__ import annotations

import socket
import time
from typing import Any

_real_getaddrinfo = socket.getaddrinfo


def _slow_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(host, str) and host.endswith(".slow.test"):
        time.sleep(3)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    return _real_getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _slow_getaddrinfo
