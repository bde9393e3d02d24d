"""Webhook URLs are tenant input that a worker contacts: attacks on them.

Outside development only https to public addresses; checked at submit, and
again in the worker at delivery (a message may bypass the producer), where the
POST is pinned to the address that was checked (no DNS rebinding)."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from contract.errors import MISSING, NodeValidationError
from contract.events import JobEvents
from contract.jobs import utcnow
from contract.settings import Settings
from contract.webhooks import (
    DELIVER_WEBHOOK,
    DeliveryLog,
    ResolverUnavailable,
    Webhook,
    check_webhook_url,
    parse_webhook,
    public_addresses,
    webhook_json,
)
from contract.work import WebhookDelivery
from devtools.redis_server import free_port
from producer.client import ImageGenClient
from tests.conftest import StartWorker, request_keys
from tests.webhook_receiver import WebhookReceiver
from worker.webhook_post import post_pinned

SECRET = "whsec_" + base64.b64encode(b"ssrf-test-key-0123456789abcdef01").decode()
PRODUCTION = {
    "IMAGEGEN_ENVIRONMENT": "production",
    "IMAGEGEN_STORAGE_URL": "s3://imagegen-ssrf-test/images",
    "IMAGEGEN_ALLOWED_SECRET_REFS": "env:WEBHOOK_",
}

INTERNAL_URLS = [
    "https://127.0.0.1/hook",
    "https://127.0.0.1:6379/",
    "https://[::1]/hook",
    "https://localhost/hook",
    "https://api.localhost/hook",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://printer.local/",
    "https://169.254.169.254/latest/meta-data/",
    "https://[fd00:ec2::254]/latest/meta-data/",
    "https://10.0.0.5/",
    "https://172.16.3.4/",
    "https://192.168.1.1/",
    "https://100.64.0.1/",  # shared address space (carrier-grade NAT)
    "https://0.0.0.0/",
    "https://[::]/",
    "https://224.0.0.1/",  # multicast
    "https://240.0.0.1/",  # reserved
    "https://255.255.255.255/",
    "https://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "https://[::ffff:169.254.169.254]/",
    "https://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "https://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "https://[fe80::1]/",
    "https://[fc00::1]/",
    "http://93.184.216.34/hook",  # public, but not https
]

MALFORMED_URLS = [
    "ftp://example.com/hook",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
    "javascript:alert(1)",
    "https://user:pw@example.com/hook",
    "https://example.com@127.0.0.1/hook",
    "https://example.com/hook#frag",
    "https://2130706433/",  # 127.0.0.1 as a number: not resolved, refused
    "https://0x7f.1/",
    "https://127.1/",
    "https://017700000001/",
    "https://exa mple.com/",
    "https://example.com/\r\nX-Injected: 1",
    "https://exämple.com/",
    "https://example.com\\@127.0.0.1/",
    "https:///hook",
    "https://" + "a" * 64 + ".com/",
    "https://example.com/" + "p" * 2100,
    "",
]


@pytest.fixture
def production(job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in {**job_env, **PRODUCTION}.items():
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.fixture
def production_client(production: Settings) -> Iterator[ImageGenClient]:
    producer = ImageGenClient(production)
    yield producer
    producer.close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


@pytest.mark.parametrize("url", INTERNAL_URLS + MALFORMED_URLS)
def test_submit_refuses_internal_and_malformed_urls_in_production(
    production_client: ImageGenClient, offline_node: dict[str, Any], url: str
) -> None:
    offline_node["inputs"]["model"] = "gemini_3_image"
    store = production_client.records.client
    before = request_keys(store)
    with pytest.raises(NodeValidationError) as refused:
        production_client.submit(offline_node, webhook={"url": url, "secret": "env:WEBHOOK_T1"})
    assert [p.field for p in refused.value.problems] == ["webhook.url"]
    assert "\r\n" not in str(refused.value) and "user:pw" not in str(refused.value)
    assert not request_keys(store) - before  # nothing written, nothing enqueued


@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_malformed_urls_are_refused_in_development_too(settings: Settings, url: str) -> None:
    with pytest.raises(NodeValidationError):
        check_webhook_url(url, settings)


def test_a_name_resolving_to_any_internal_address_is_refused(production: Settings) -> None:
    def resolver(answers: list[str]) -> Any:
        return lambda host, port: answers

    url = "https://hooks.example.com/x"
    assert check_webhook_url(url, production, resolve=True, resolver=resolver(["93.184.216.34"])) == url
    for answers, why in (
        (["93.184.216.34", "10.0.0.7"], "not a public address"),  # one bad answer spoils the name
        (["169.254.169.254"], "cloud metadata"),
        (["::ffff:192.168.0.1"], "not a public address"),
        ([], "does not resolve"),
    ):
        with pytest.raises(NodeValidationError, match=why):
            public_addresses(url, production, resolver=resolver(answers))


def test_only_a_name_that_does_not_exist_is_refused_a_resolver_failure_is_retried(production: Settings) -> None:
    # A temporary DNS failure used to drop the delivery for good as "does not resolve".
    def failing(code: int) -> Any:
        def resolve(host: str, port: int) -> list[str]:
            raise socket.gaierror(code, "resolver says")

        return resolve

    url = "https://hooks.example.com/x"
    with pytest.raises(NodeValidationError, match="does not resolve"):
        public_addresses(url, production, resolver=failing(socket.EAI_NONAME))
    for code in (socket.EAI_AGAIN, socket.EAI_FAIL):
        with pytest.raises(ResolverUnavailable, match="could not be resolved now"):
            public_addresses(url, production, resolver=failing(code))


def test_secret_must_be_an_allowed_reference(production: Settings) -> None:
    url = "https://8.8.8.8/hook"
    for secret in (SECRET, "s3cr3t", "env:AWS_SECRET_ACCESS_KEY", "file:/etc/shadow", "env:../x"):
        with pytest.raises(NodeValidationError) as refused:
            parse_webhook({"url": url, "secret": secret}, production)
        [problem] = refused.value.problems
        assert problem.field == "webhook.secret"
        if ":" not in secret:  # a raw key is never echoed (a reference may be named)
            assert secret not in str(refused.value) and problem.value is MISSING
    assert parse_webhook({"url": url, "secret": "env:WEBHOOK_T1"}, production).events == ("completed",)


def test_delivery_rechecks_the_url_in_the_worker(
    start_worker: StartWorker, client: ImageGenClient, receiver: WebhookReceiver, redis_url: str
) -> None:
    """A job record and message naming a loopback webhook that never went through a production
    producer (written straight to Redis and the broker): the production worker refuses it."""
    start_worker({**PRODUCTION, "WEBHOOK_T1": SECRET})
    webhook = Webhook(url=receiver.url.replace("http://", "https://"), secret="env:WEBHOOK_T1")
    records, events = client.records, JobEvents(client.records.client, 600)
    records.claim(
        "ssrf-bypass",
        node_fingerprint="x",
        model="m",
        variations=1,
        submitted_at=utcnow(),
        webhook=webhook_json(webhook),
    )
    entry_id = events.append("ssrf-bypass", "completed", {"job_id": "ssrf-bypass", "status": "succeeded"})
    delivery = WebhookDelivery(job_id="ssrf-bypass", run=1, event="completed", event_id=entry_id)
    client.celery.send_task(DELIVER_WEBHOOK, args=(delivery.model_dump(mode="json"),))

    [status] = _settled(client, "ssrf-bypass")
    assert status.state == "refused" and "not a public address" in (status.last_error or "")
    time.sleep(0.5)
    assert receiver.received == []


def test_delivery_goes_only_to_the_jobs_own_webhook(
    start_worker: StartWorker, client: ImageGenClient, receiver: WebhookReceiver
) -> None:
    """A forged message naming the attacker's URL (as deliveries once carried the webhook) goes to
    the job's own webhook, and a job submitted without one gets no delivery at all."""
    start_worker({"WEBHOOK_T1": SECRET})
    real = Webhook(url=f"http://127.0.0.1:{free_port()}/tenant", secret="env:WEBHOOK_T1")
    client.records.claim(
        "ssrf-forged", node_fingerprint="x", model="m", variations=1, submitted_at=utcnow(), webhook=webhook_json(real)
    )
    client.records.claim("no-hook", node_fingerprint="x", model="m", variations=1, submitted_at=utcnow())
    attacker = Webhook(url=receiver.url, secret="env:WEBHOOK_T1").model_dump(mode="json")
    for job_id in ("ssrf-forged", "no-hook"):
        entry_id = JobEvents(client.records.client, 600).append(job_id, "completed", {"secret_stuff": 1})
        forged = {"job_id": job_id, "run": 1, "event": "completed", "event_id": entry_id, "webhook": attacker}
        client.celery.send_task(DELIVER_WEBHOOK, args=(forged,))

    [to_the_job] = _settled(client, "ssrf-forged")  # tried at its own URL (a closed port): retried later
    assert to_the_job.state == "pending" and to_the_job.last_error, to_the_job
    [none] = _settled(client, "no-hook")
    assert none.state == "refused" and "the job has no webhook" in (none.last_error or "")
    time.sleep(0.5)
    assert receiver.received == []


def test_the_post_is_pinned_to_the_checked_address(receiver: WebhookReceiver) -> None:
    """The connection goes to the address given (the one that was checked), never to a fresh
    lookup of the name: ``rebind.invalid`` does not even resolve, yet the POST arrives, with the
    name in its Host header. Redirects are not followed."""
    port = receiver.server.server_address[1]
    url = f"http://rebind.invalid:{port}/hook?q=1"
    outcome = post_pinned(url, "127.0.0.1", b"{}", {"content-type": "application/json"}, timeout_s=5)
    assert outcome.delivered
    [arrived] = receiver.received
    assert arrived.headers["Host"] == f"rebind.invalid:{port}" and arrived.path == "/hook?q=1"

    receiver.answer(302)
    redirected = post_pinned(url, "127.0.0.1", b"{}", {}, timeout_s=5)
    assert (redirected.status, redirected.delivered, redirected.retryable) == (302, False, False)
    assert len(receiver.received) == 2


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(b"120", 120.0), (b"\xb2", None), (b"\xb9\xb2", None), (b"9" * 400, None), (b"soon", None)],
)
def test_a_receivers_retry_after_is_read_or_ignored_never_raised(header: bytes, seconds: float | None) -> None:
    """``str.isdigit()`` is true of "²" (a header is latin-1), which ``float()`` refuses: one byte
    from a receiver had raised out of the delivery, leaving it pending with a traceback."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 503 Busy\r\nRetry-After: " + header + b"\r\nContent-Length: 0\r\n\r\n")

    server = threading.Thread(target=answer, daemon=True)
    server.start()
    port = listener.getsockname()[1]
    outcome = post_pinned(f"http://hook.example:{port}/x", "127.0.0.1", b"{}", {}, timeout_s=5)
    server.join(5)
    listener.close()
    assert (outcome.status, outcome.retryable, outcome.retry_after_s) == (503, True, seconds)


def _settled(client: ImageGenClient, job_id: str, timeout: float = 30) -> list[Any]:
    deliveries = DeliveryLog(client.records.client, 600)
    deadline = time.monotonic() + timeout
    while not (found := deliveries.read(job_id)):
        assert time.monotonic() < deadline, "no delivery outcome recorded"
        time.sleep(0.1)
    return found


class DripServer:
    """A receiver that answers a byte at a time, each well inside a read timeout, for up to a
    minute: ``opening`` first, then ``drip`` once every 0.2 s."""

    def __init__(self, opening: bytes, drip: bytes):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.opening, self.drip = opening, drip
        self.cut_short = threading.Event()  # the client hung up while the drip went on
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, self.listener:
            conn.settimeout(5)
            if not self.opening.startswith(b"\x16"):  # HTTP: read the request first; TLS: the hello
                conn.recv(65536)
            try:
                conn.sendall(self.opening)
                for _ in range(300):
                    conn.sendall(self.drip)
                    time.sleep(0.2)
            except OSError:
                self.cut_short.set()


@pytest.mark.parametrize(
    ("scheme", "opening", "drip"),
    [
        ("http", b"HTTP/1.1 200 OK\r\n", b"X-Slow: 1\r\n"),  # headers that never end
        ("http", b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"x"),  # a body that never ends
        ("https", b"\x16\x03\x03\x40\x00", b"\x02"),  # a TLS handshake record that never ends
    ],
    ids=["headers", "body", "tls-handshake"],
)
def test_a_receiver_that_drips_its_answer_times_out_as_a_whole(scheme: str, opening: bytes, drip: bytes) -> None:
    """urllib3's timeouts bound each read; the POST's timeout bounds them all (worker/webhook_post.py),
    so a receiver cannot hold a worker slot by sending a byte inside every read's timeout."""
    server = DripServer(opening, drip)
    outcome = post_pinned(f"{scheme}://hook.example.com:{server.port}/x", "127.0.0.1", b"{}", {}, timeout_s=1)
    assert not outcome.delivered and outcome.error is not None and outcome.error.startswith("timeout")
    assert outcome.retryable  # a timeout is retried later, like any receiver that did not answer
    assert server.cut_short.wait(10), "the POST returned but the connection stayed open"


def test_an_unknown_webhook_field_is_named_with_the_allowed_ones_and_not_echoed(production: Settings) -> None:
    with pytest.raises(NodeValidationError) as refused:
        parse_webhook({"url": "https://8.8.8.8/hook", "secret": "env:WEBHOOK_T1", "colour": "whsec_LEAK"}, production)
    [problem] = refused.value.problems
    assert (problem.field, problem.value) == ("webhook.colour", MISSING)
    assert "is not a webhook field; allowed: url, events, secret" in problem.message
    assert "whsec_LEAK" not in str(refused.value)


# Each refusal of a webhook URL, with a token where a receiver might expect one: in the query,
# in the fragment, in user info. A refusal quotes at most scheme://host[:port]/path (excerpted).
TOKEN = "SECRET123"
LONG = "p" * 2100
TOKEN_URLS = [  # (url, what the message says, the value quoted)
    ("ftp://hooks.example.com/x?token=SECRET123", "http:// or https://", "ftp://hooks.example.com/x"),
    ("https://hooks.example.com/x#SECRET123", "fragment", "https://hooks.example.com/x"),
    ("https://hooks.example.com/x?token=SECRET123#f", "fragment", "https://hooks.example.com/x"),
    (f"https://hooks.example.com/{LONG}?token=SECRET123", "characters", "https://hooks.example.com/ppp"),
    (f"https://u:SECRET123@hooks.example.com/{LONG}", "characters", "https://hooks.example.com/ppp"),
    ("https://hooks_example.com/x?token=SECRET123", "DNS name", "https://hooks_example.com/x"),
    ("https://hooks.example.com/x y?token=SECRET123", "ASCII", "https://hooks.example.com/x y"),
    ("https://[::1/x?token=SECRET123", "not a valid URL", "https://[::1/x"),
    ("https://hooks.example.com/x\\y?token=SECRET123", "backslashes", "https://hooks.example.com/x\\y"),
    ("http://hooks.example.com/x?token=SECRET123", "https:// URL outside development", "http://hooks.example.com/x"),
    ("https://printer.local/x?token=SECRET123", "local name", "https://printer.local/x"),
    ("https://10.0.0.5:8443/x?token=SECRET123", "not a public address", "https://10.0.0.5:8443/x"),
    ("https://169.254.169.254/x?token=SECRET123", "cloud metadata", "https://169.254.169.254/x"),
]


@pytest.mark.parametrize(("url", "why", "quoted"), TOKEN_URLS)
def test_a_refused_url_is_quoted_without_its_query_fragment_or_user_info(
    production: Settings, url: str, why: str, quoted: str
) -> None:
    def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    with pytest.raises(NodeValidationError) as refused:
        parse_webhook({"url": url, "secret": "env:WEBHOOK_T1"}, production, resolver=resolver)
    [problem] = refused.value.problems
    assert problem.field == "webhook.url" and why in problem.message, problem
    assert TOKEN not in str(refused.value) and TOKEN not in str(problem.value), problem
    assert str(problem.value).startswith(quoted), problem  # the rest: an excerpt's "… (N characters)"


def test_a_url_refused_after_resolving_is_quoted_without_its_query(production: Settings) -> None:
    def answering(answers: list[str]) -> Any:
        return lambda host, port: answers

    def no_such_name(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "resolver says")

    url = "https://hooks.example.com/x?token=SECRET123"
    for resolver, why in (
        (answering(["10.0.0.7"]), "not a public address"),
        (answering(["169.254.169.254"]), "cloud metadata"),
        (answering([]), "does not resolve"),
        (no_such_name, "does not resolve"),
    ):
        with pytest.raises(NodeValidationError, match=why) as refused:
            public_addresses(url, production, resolver=resolver)
        [problem] = refused.value.problems
        assert problem.value == "https://hooks.example.com/x" and TOKEN not in str(refused.value)
    # A webhook given as a bare URL, not an object: quoted the same way.
    with pytest.raises(NodeValidationError) as refused:
        parse_webhook(url, production)  # type: ignore[arg-type]
    assert refused.value.problems[0].value == "https://hooks.example.com/x" and TOKEN not in str(refused.value)
