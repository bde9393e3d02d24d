"""A job's webhook: where its events are POSTed, signed (Standard Webhooks).

A job may carry ``webhook = {url, events, secret}``: ``completed`` is always
delivered, ``started`` and ``variation`` on request; ``secret`` is a secret
*reference* (``env:``, ``file:``, ``vault:``; contract/secret_refs.py) to a
``whsec_<base64>`` signing key that only the worker resolves. The webhook is
part of the job's fingerprint and is stored on the job record (url, events,
reference: never the key).

The URL is tenant input that a worker will contact, so it is checked at submit
(producer) and again at delivery (worker/tasks/webhooks.py, which also pins the
connection to the address it checked):

* ``http`` or ``https``, a host, no user info, no fragment, at most ``MAX_URL_CHARS``;
  the host is a DNS name (letters in its last label: ``2130706433`` and ``127.1``
  are refused, not resolved) or an IP literal;
* outside development: ``https`` only, no ``localhost``/``.local``/``.internal``
  names, and every address the host resolves to must be globally routable:
  loopback, private, shared (CGNAT), link-local (169.254.169.254 and
  fd00:ec2::254, the cloud metadata services, included), multicast, reserved
  and unspecified addresses are refused, also when embedded in IPv6
  (``::ffff:10.0.0.1``, 6to4, NAT64).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from contract.errors import MISSING, ImageGenError, NodeValidationError, Problem, url_text
from contract.queue import KEY_PREFIX
from contract.secret_refs import HOW_TO, check_allowed, parse_secret_ref

if TYPE_CHECKING:
    from contract.events import EventType, TaskSender
    from contract.settings import Settings

DELIVER_WEBHOOK = "imagegen.deliver_webhook"
MAX_URL_CHARS = 2048

WebhookEvent = Literal["started", "variation", "completed"]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("started", "variation", "completed")

# Cloud metadata services: refused anyway (link-local, unique-local), named for the reader.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)
_LOCAL_NAMES = ("localhost", "localhost.localdomain")
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

Resolver = Callable[[str, int], list[str]]


class Webhook(BaseModel):
    """``{url, events, secret}``: ``events`` always holds ``completed`` (added when missing), in a
    fixed order without repeats, so the same webhook always has the same fingerprint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(max_length=MAX_URL_CHARS)
    events: tuple[WebhookEvent, ...] = ("completed",)
    secret: str = Field(description="A secret reference (env:, file:, vault:) to a whsec_<base64> signing key")

    @field_validator("events", mode="after")
    @classmethod
    def _with_completed(cls, value: tuple[WebhookEvent, ...]) -> tuple[WebhookEvent, ...]:
        return tuple(e for e in WEBHOOK_EVENTS if e in value or e == "completed")

    def wants(self, event: str) -> bool:
        return event in self.events

    def fingerprint_part(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _refuse(field: str, value: Any, message: str) -> NodeValidationError:
    return NodeValidationError([Problem(field, value, message)], subject="webhook")


def _shown_url(url: str) -> str:
    """What a refusal may quote of a webhook URL: at most ``scheme://host[:port]/path`` as given,
    never its user info, query or fragment, where a token may ride (docs/security.md §8); the
    Problem excerpts it as any value. Cut by hand, not by ``urlsplit``: a URL it cannot parse
    (or parses unlike a receiver would) is refused and quoted too."""
    parts = url_text(url)
    return f"{parts.scheme}{parts.hosts}{parts.path}"


def _is_production(settings: Settings) -> bool:
    return settings.environment != "development"


def check_webhook_url(url: str, settings: Settings, *, resolve: bool = False, resolver: Resolver | None = None) -> str:
    """``url`` if a worker may POST to it, else NodeValidationError naming ``webhook.url``.
    ``resolve``: outside development, also resolve the host and check every address
    (the producer at submit; the worker checks again at delivery, see ``public_addresses``)."""
    host, _, scheme = _parts(url)
    if _is_production(settings):
        if scheme != "https":
            raise _refuse("webhook.url", _shown_url(url), "must be an https:// URL outside development")
        literal = _ip_literal(host)
        if literal is not None:
            _check_address(url, literal)
        elif host in _LOCAL_NAMES or host.endswith(_LOCAL_SUFFIXES):
            raise _refuse("webhook.url", _shown_url(url), f"host {host!r} is a local name; use a public host")
        elif resolve:
            public_addresses(url, settings, resolver)
    return url


class ResolverUnavailable(ImageGenError):
    """The host's name could not be looked up now (a temporary DNS failure or a timeout): a
    delivery is retried, a submission told to try again; only a name that does not exist is refused."""


_DNS_TRY_AGAIN = frozenset(
    code for code in (getattr(socket, "EAI_AGAIN", None), getattr(socket, "EAI_FAIL", None)) if code is not None
)


def public_addresses(url: str, settings: Settings, resolver: Resolver | None = None) -> list[str]:
    """The addresses to connect to for ``url``, every one checked: outside development all must
    be globally routable (a name that resolves to any internal address is refused as a whole).
    NodeValidationError naming ``webhook.url`` otherwise, or when the host does not resolve."""
    host, port, _ = _parts(url)
    literal = _ip_literal(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = (resolver or _resolve)(host, port)
        except socket.gaierror as exc:
            if exc.errno in _DNS_TRY_AGAIN:  # the resolver's trouble, not the name's: retried
                raise ResolverUnavailable(
                    f"host {host!r}: the name could not be resolved now ({exc.strerror})"
                ) from None
            raise _refuse("webhook.url", _shown_url(url), f"host {host!r} does not resolve") from None
        except OSError as exc:
            raise ResolverUnavailable(
                f"host {host!r}: the name could not be resolved now ({type(exc).__name__})"
            ) from None
        if not addresses:
            raise _refuse("webhook.url", _shown_url(url), f"host {host!r} does not resolve")
    if _is_production(settings):
        for address in addresses:
            _check_address(url, ipaddress.ip_address(address))
    return addresses


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for info in infos:
        seen.setdefault(str(info[4][0]).split("%", 1)[0], None)  # no IPv6 zone id
    return list(seen)


def _parts(url: str) -> tuple[str, int, str]:
    """(host, port, scheme) of a syntactically acceptable webhook URL."""
    if not isinstance(url, str) or not url:
        raise _refuse("webhook.url", MISSING if not isinstance(url, str) else url, "must be an http(s) URL")
    if len(url) > MAX_URL_CHARS:
        raise _refuse("webhook.url", _shown_url(url), f"is {len(url)} characters; at most {MAX_URL_CHARS} are allowed")
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        raise _refuse(
            "webhook.url", _shown_url(url), "must be ASCII without spaces or control characters (use punycode)"
        )
    try:
        parts = urlsplit(url)
        raw_host = parts.hostname or ""
        port = parts.port
    except ValueError:
        raise _refuse("webhook.url", _shown_url(url), "is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not raw_host:
        raise _refuse("webhook.url", _shown_url(url), "must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise _refuse("webhook.url", MISSING, "must not carry user info (user:password@); not echoed")
    if parts.fragment or "#" in url:
        raise _refuse("webhook.url", _shown_url(url), "must not have a fragment (#...)")
    if "\\" in url:
        raise _refuse("webhook.url", _shown_url(url), "must not contain backslashes")
    host = raw_host.lower().rstrip(".")
    if _ip_literal(host) is None and not _is_dns_name(host):
        raise _refuse(
            "webhook.url",
            _shown_url(url),
            "host must be a DNS name (labels of a-z 0-9 -, a letter in the last one) or an IP address",
        )
    return host, port or (443 if parts.scheme == "https" else 80), parts.scheme


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _is_dns_name(host: str) -> bool:
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return False
    return any(c.isalpha() for c in labels[-1])  # "127.1", "2130706433", "0x7f.1" are not names


def _embedded(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address.teredo is not None:
        found.extend(address.teredo)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _check_address(url: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    for candidate in (address, *_embedded(address)):
        if candidate in METADATA_ADDRESSES:
            raise _refuse("webhook.url", _shown_url(url), f"resolves to {candidate}, a cloud metadata service")
        if (
            not candidate.is_global
            or candidate.is_multicast
            or candidate.is_reserved
            or candidate.is_unspecified
            or candidate.is_loopback
            or candidate.is_link_local
            or candidate.is_private
        ):
            raise _refuse(
                "webhook.url",
                _shown_url(url),
                f"resolves to {candidate}, which is not a public address (loopback, private, link-local, "
                "multicast or reserved addresses are refused outside development)",
            )


def check_secret_reference(value: Any, settings: Settings) -> str:
    """The reference (canonical form kept as given), else NodeValidationError naming ``webhook.secret``;
    a raw key is refused without being echoed."""
    try:
        reference = parse_secret_ref(value)
    except ValueError:
        raise _refuse(
            "webhook.secret", MISSING, f"must be a secret reference to a whsec_ key, never the key itself; {HOW_TO}"
        ) from None
    try:
        check_allowed(reference, settings.secret_ref_prefixes, settings.vault_mount)
    except ValueError as exc:
        raise _refuse("webhook.secret", MISSING, str(exc)) from None
    return str(value)


def parse_webhook(
    value: Webhook | Mapping[str, Any], settings: Settings, *, resolve: bool = True, resolver: Resolver | None = None
) -> Webhook:
    """A checked ``Webhook`` from a value or a mapping; NodeValidationError listing every problem
    (fields ``webhook.url``, ``webhook.events``, ``webhook.secret``)."""
    if isinstance(value, Webhook):
        raw: Any = value.model_dump(mode="json")
    elif isinstance(value, Mapping):
        raw = dict(value)
    else:
        given = _shown_url(value) if isinstance(value, str) else value  # a bare URL, perhaps with a token
        raise _refuse("webhook", given, "must be an object with url, events and secret")
    problems: list[Problem] = []
    secret = raw.get("secret")
    if not isinstance(secret, str):
        problems.append(
            Problem("webhook.secret", MISSING, f"is required: a secret reference to a whsec_ key; {HOW_TO}")
        )
    else:
        try:
            check_secret_reference(secret, settings)
        except NodeValidationError as exc:
            problems.extend(exc.problems)
    try:
        check_webhook_url(raw.get("url"), settings, resolve=resolve, resolver=resolver)
    except NodeValidationError as exc:
        problems.extend(exc.problems)
    webhook = None
    try:
        webhook = Webhook.model_validate({**raw, "secret": secret if isinstance(secret, str) else ""})
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(["webhook", *(str(p) for p in error["loc"][:1])])
            if field in ("webhook.url", "webhook.secret") and any(p.field == field for p in problems):
                continue
            if error["type"] == "extra_forbidden":  # a value under an unknown name is not echoed
                known = ", ".join(Webhook.model_fields)
                problems.append(Problem(field, MISSING, f"is not a webhook field; allowed: {known}"))
                continue
            allowed = f"; allowed events: {', '.join(WEBHOOK_EVENTS)}" if field == "webhook.events" else ""
            shown = MISSING if field == "webhook.secret" else error.get("input", MISSING)
            if field == "webhook.url" and isinstance(shown, str):
                shown = _shown_url(shown)
            problems.append(Problem(field, shown, error["msg"] + allowed))
    if problems or webhook is None:
        raise NodeValidationError(problems, subject="webhook")
    return webhook


def webhook_key(job_id: str) -> str:
    """Hash of the job's webhook deliveries: one field per event delivery."""
    return f"{KEY_PREFIX}:webhook:{job_id}"


def webhook_message_id(job_id: str, run: int, event: str, entry_id: str) -> str:
    """The ``webhook-id`` of one event's delivery: the same for every attempt (receivers dedupe on it)."""
    digest = hashlib.sha256(f"{job_id}@{run}:{event}:{entry_id}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


DeliveryState = Literal["pending", "delivered", "failed", "refused"]


class DeliveryStatus(BaseModel):
    """One event's delivery: ``pending`` (queued or retrying), ``delivered`` (2xx), ``failed``
    (a 4xx, or the attempts ran out), ``refused`` (the URL or the secret did not pass the checks)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str
    event: str
    run: int
    webhook_id: str
    state: DeliveryState
    attempts: int = 0
    last_http_status: int | None = None
    last_error: str | None = Field(None, description="Why the last attempt failed; never contains secrets")
    updated_at: datetime


class DeliveryLog:
    """The per-job record of webhook deliveries (``imagegen:webhook:<job_id>``), expiring with the job."""

    def __init__(self, client: redis.Redis, ttl_s: int):
        self.client = client
        self.ttl_s = ttl_s

    def record(self, job_id: str, status: DeliveryStatus) -> None:
        key = webhook_key(job_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, status.event_id, status.model_dump_json())
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def read(self, job_id: str) -> list[DeliveryStatus]:
        raw = self.client.hgetall(webhook_key(job_id))
        found = [DeliveryStatus.model_validate_json(v) for v in raw.values()]
        return sorted(found, key=lambda s: tuple(int(p) for p in s.event_id.split("-")))


def schedule_delivery(
    sender: TaskSender,
    deliveries: DeliveryLog,
    job_id: str,
    run: int,
    event: EventType,
    entry_id: str,
    webhook_json: str,
) -> bool:
    """Enqueue the delivery of one appended event if the job's webhook subscribed to it."""
    from contract.work import WebhookDelivery  # here: work imports the cloud specs

    webhook = Webhook.model_validate_json(webhook_json)
    if not webhook.wants(event):
        return False
    message_id = webhook_message_id(job_id, run, event, entry_id)
    pending = DeliveryStatus(
        event_id=entry_id, event=event, run=run, webhook_id=message_id, state="pending", updated_at=datetime.now(UTC)
    )
    deliveries.record(job_id, pending)
    delivery = WebhookDelivery(job_id=job_id, run=run, event=event, event_id=entry_id)
    sender.send_task(
        DELIVER_WEBHOOK,
        args=(delivery.model_dump(mode="json"),),
        argsrepr=f"(job {job_id} run {run} {event} {entry_id})",
    )
    return True


def webhook_json(webhook: Webhook) -> str:
    """As stored on the job record."""
    return json.dumps(webhook.model_dump(mode="json"), separators=(",", ":"), sort_keys=True)
