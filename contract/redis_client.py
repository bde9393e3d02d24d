"""One Redis URL form for the job store, the result backend and the broker, Sentinel included.

``redis://``, ``rediss://`` and ``unix://`` are redis-py's own forms. Sentinel is::

    sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]

e.g. ``sentinel://:s3cret@sentinel-0:26379,sentinel-1:26379,sentinel-2:26379/imagegen/0``:
the sentinels to ask (port 26379 when omitted), the monitored master's name,
and the database number (0 when omitted). The password (and user) are the
master's and its replicas'; the sentinels themselves are asked without one.
Celery and kombu spell the same thing as ``sentinel://h1:p1/db;sentinel://h2:p2/db``
plus a ``master_name`` transport option: :meth:`SentinelURL.kombu_url` gives that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import redis
from redis.backoff import EqualJitterBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

SENTINEL_PORT = 26379


def is_sentinel(url: str) -> bool:
    return url.startswith("sentinel://")


@dataclass(frozen=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        if not is_sentinel(url):
            raise ValueError(f"not a sentinel:// URL: {url.split('@')[-1]!r}")
        rest = url[len("sentinel://") :].split("?", 1)[0].split("#", 1)[0]
        netloc, _, path = rest.partition("/")
        username = password = None
        if "@" in netloc:
            userinfo, netloc = netloc.rsplit("@", 1)
            user, has_password, secret = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if has_password else None
        sentinels = tuple(_host_port(part) for part in netloc.split(",") if part.strip())
        if not sentinels:
            raise ValueError("a sentinel:// URL names at least one sentinel host, e.g. sentinel://s1:26379/mymaster/0")
        service, _, db = path.strip("/").partition("/")
        if not service:
            raise ValueError("a sentinel:// URL names the master's service name: sentinel://host:port/SERVICE/db")
        if db and not db.isdigit():
            raise ValueError(f"sentinel:// database must be a number, not {db!r}")
        return cls(sentinels, unquote(service), int(db or 0), username, password)

    def kombu_url(self) -> str:
        """Kombu's broker (and Celery's result backend) form: one ``sentinel://`` URL per sentinel,
        ``;``-separated; the service name goes in the ``master_name`` transport option."""
        auth = ""
        if self.password is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        return ";".join(
            f"sentinel://{auth}{f'[{host}]' if ':' in host else host}:{port}/{self.db}" for host, port in self.sentinels
        )

    def transport_options(self) -> dict[str, Any]:
        return {"master_name": self.service_name}


def _host_port(part: str) -> tuple[str, int]:
    part = part.strip()
    if part.startswith("["):  # [IPv6]:port
        host, _, tail = part[1:].partition("]")
        port = tail.lstrip(":")
    else:
        host, _, port = part.partition(":")
    if not host or (port and not port.isdigit()):
        raise ValueError(f"bad sentinel address {part!r}: use host:port")
    return host, int(port or SENTINEL_PORT)


def _failover_retry() -> Retry:
    # A crashed master is gone for down-after-milliseconds plus the election and the
    # promotion (2.3 s in tests/broker with 1 s; use a few seconds in production):
    # keep asking the sentinels for about half a minute (24 tries, 1-2 s apart after the first few).
    return Retry(EqualJitterBackoff(cap=2.0, base=0.2), retries=24)


def redis_client(url: str, **kwargs: Any) -> redis.Redis:
    """A client for ``url``: ``redis://``, ``rediss://``, ``unix://`` or ``sentinel://`` (see above).

    A Sentinel client asks the sentinels for the current master and asks again
    after a failover (a dropped connection or a READONLY reply from a demoted master).
    """
    if not is_sentinel(url):
        # Ride out a restart or a pause (chaos suite: crash + AOF replay, SIGSTOP) instead of
        # failing the task that was only doing bookkeeping; about half a minute in all.
        kwargs.setdefault("retry", _failover_retry())
        kwargs.setdefault(
            "retry_on_error",
            [redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.OutOfMemoryError],
        )
        kwargs.setdefault("socket_timeout", 10.0)
        kwargs.setdefault("socket_connect_timeout", 5.0)
        return redis.Redis.from_url(url, **kwargs)
    parsed = SentinelURL.parse(url)
    socket_options = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.sentinels), sentinel_kwargs={"socket_timeout": 2.0, **socket_options}
    )
    kwargs.setdefault("retry", _failover_retry())
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        parsed.service_name, db=parsed.db, username=parsed.username, password=parsed.password, **kwargs
    )
    return master
