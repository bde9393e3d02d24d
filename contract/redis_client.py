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

import math
import re
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import redis
from redis.backoff import EqualJitterBackoff
from redis.commands.core import Script
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from contract.errors import url_text

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


# Replies that mean "not now" rather than "no": the command was refused before it ran, so
# running it again later is safe. OOM: at maxmemory with noeviction; LOADING: a restarted Redis
# replaying its AOF; READONLY: a demoted master; NOREPLICAS: a master without the replicas
# ``min-replicas-to-write`` asks for (the old master right after a failover, the new one until a
# replica follows it); MASTERDOWN: a replica that lost its master; UNBLOCKED: a blocking pop
# cut short because the instance changed role; TRYAGAIN: a cluster mid-migration.
_NOT_NOW = ("OOM ", "LOADING ", "READONLY ", "NOREPLICAS ", "MASTERDOWN ", "UNBLOCKED ", "TRYAGAIN ")
_REFUSAL = re.compile(r"(?:^|-|caused error: )(?:" + "|".join(code.strip() for code in _NOT_NOW) + ") ")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a Redis fault that passes within seconds: a lost connection, a timeout,
    or a refusal listed above. A script error, a wrong type or a bad argument is not."""
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthorizationError):
        return False  # a wrong or missing password, or an ACL refusal: the same on every try
    if any(isinstance(cause, ssl.SSLCertVerificationError) for cause in _causes(exc)):
        return False  # a certificate this client does not trust: redis-py wraps it as a lost connection
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, redis.BusyLoadingError | redis.OutOfMemoryError | redis.ReadOnlyError):
        return True
    if isinstance(exc, redis.ResponseError) and not isinstance(exc, redis.exceptions.NoScriptError):
        # The refusal leads the message, or follows "-" inside a script's error (Redis 6: "Error
        # running script (...): ... -OOM command ...") or "caused error: " in a pipeline's
        # ("Command # 1 (EVALSHA ...) of pipeline caused error: NOREPLICAS ...").
        return _REFUSAL.search(str(exc)) is not None
    return False


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions ``exc`` was raised from or while handling, nearest first (bounded)."""
    cause = exc.__cause__ or exc.__context__
    for _ in range(8):
        if cause is None:
            return
        yield cause
        cause = cause.__cause__ or cause.__context__


class TransientRetry(Retry):
    """redis-py's per-command retry (it reconnects first, so a Sentinel client asks the
    sentinels for the master again), extended from connection errors and timeouts to every
    fault :func:`is_transient` names. Pipelines and transactions retry whole: a refused
    command ran nowhere (Redis checks OOM, READONLY and NOREPLICAS before it runs a command,
    and before a script's first write)."""

    def __init__(self, backoff: EqualJitterBackoff, retries: int, patience_s: float = math.inf):
        super().__init__(backoff, retries, supported_errors=(redis.RedisError, OSError))
        self.patience_s = patience_s

    def call_with_retry(self, do: Any, fail: Any, is_retryable: Any = None, with_failure_count: bool = False) -> Any:
        """redis-py's loop, also ended by time: a server that accepts connections and never answers
        costs a whole socket timeout per try, so a count alone took 8x the patience (273 s for 35)."""
        retryable = is_retryable or is_transient
        self._backoff.reset()  # type: ignore[no-untyped-call]
        started = time.monotonic()
        failures = 0
        while True:
            try:
                return do()
            except self._supported_errors as error:
                if not retryable(error):
                    raise
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                left = self.patience_s - (time.monotonic() - started)
                if (self._retries >= 0 and failures > self._retries) or left <= 0:
                    raise error
                time.sleep(min(self._backoff.compute(failures), left))


def transient_retry(patience_s: float = 35.0) -> TransientRetry:
    # A crashed master is gone for down-after-milliseconds plus the election and the
    # promotion (2.3 s in tests/broker with 1 s; use a few seconds in production); a full
    # Redis until memory is freed: by default keep trying for about half a minute (24 tries,
    # 1-2 s apart after the first few: ~1.5 s each on average), and no try starts after that.
    return TransientRetry(
        EqualJitterBackoff(cap=2.0, base=0.2), retries=max(0, round(patience_s / 1.5)), patience_s=patience_s
    )


class FailoverSafeScript(Script):
    """A Lua script that runs on whichever server the client reaches.

    The script cache is per server and not replicated: after a failover or a restart the new
    master does not know a script loaded on the old one. redis-py then loads it and runs it
    again, but mid-failover the load and the second EVALSHA may reach different servers
    (observed: ``NoScriptError`` from a variation). EVAL with the script's text runs it
    whatever the server's cache holds, and caches it there for the next EVALSHA."""

    def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        keys, args = list(keys or []), list(args or [])
        client = self.registered_client if client is None else client
        if isinstance(client, redis.client.Pipeline):
            return super().__call__(keys, args, client)  # the pipeline loads its scripts itself
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return client.eval(self.script, len(keys), *keys, *args)


class FailoverSafeRedis(redis.Redis):
    """redis.Redis whose ``register_script`` gives :class:`FailoverSafeScript` (every script of
    the job store, and the result backend's chord scripts, contract/result_backend.py)."""

    def register_script(self, script: Any) -> FailoverSafeScript:
        return FailoverSafeScript(self, script)


class SentinelConnection(SentinelManagedConnection):
    """redis-py's Sentinel-managed connection, asking the sentinels again when it reconnects.

    redis-py 8 reconnects a dropped connection inside a command's retry through
    ``connect_check_health``, which reuses the address it had: after a failover every retry
    went back to the demoted master (READONLY, then "The previous master is now a slave")
    until the retries ran out (measured: 34 s, then the task failed)."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock is None and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)


def connection_kwargs() -> dict[str, Any]:
    """What every Redis connection of the job store and the result backend gets."""
    return {"retry": transient_retry(), "socket_timeout": 10.0, "socket_connect_timeout": 5.0}


def redis_client(url: str, **kwargs: Any) -> redis.Redis:
    """A client for ``url``: ``redis://``, ``rediss://``, ``unix://`` or ``sentinel://`` (see above).

    A Sentinel client asks the sentinels for the current master and asks again
    after a failover (a dropped connection or a READONLY reply from a demoted master).
    Either rides out a restart, a pause, a full Redis or a failover for about half a minute
    (:class:`TransientRetry`) instead of failing the task that was only doing bookkeeping,
    and its scripts survive a failover (:class:`FailoverSafeScript`).
    """
    for name, value in connection_kwargs().items():
        kwargs.setdefault(name, value)
    if not is_sentinel(url):
        return FailoverSafeRedis.from_url(url, **kwargs)
    parsed = SentinelURL.parse(url)
    socket_options = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.sentinels), sentinel_kwargs={**socket_options, "socket_timeout": 2.0}
    )
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        parsed.service_name,
        redis_class=FailoverSafeRedis,
        connection_class=SentinelConnection,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        **kwargs,
    )
    return master


def redacted_url(url: str) -> str:
    """``url`` for messages and logs: a password in its user info shown as ``***``, and its query
    (redis-py and kombu also read ``?password=``) and fragment left out. Textual, never parsed: a
    URL whose port does not parse (or a list of sentinels) must still be printable."""
    parts = url_text(url)
    user = parts.user_info
    if user is not None and ":" in user:
        user = f"{user.partition(':')[0]}:***"
    shown = f"{parts.scheme}{'' if user is None else f'{user}@'}{parts.hosts}{parts.path}"
    return f"{shown}?…" if parts.cut else shown
