"""What a browser is told and refused: the API is also a web page (the Playground).

* Without tokens (development: every caller is the tenant ``dev``) only requests for a loopback
  name (or one in ``IMAGEGEN_API_ALLOWED_HOSTS``) are answered (403 otherwise). A page of another
  site whose name is re-pointed at 127.0.0.1 (DNS rebinding) is same-origin to the browser, so
  the cross-site check below passes it; its requests still carry its own name as ``Host``.
* A state-changing request from another site is refused (403). Cancel reads no body, so the
  JSON content-type gate that protects the other POSTs (a form cannot send application/json)
  does not cover it, and in development without tokens every caller is the tenant ``dev``. A
  browser marks its requests (``Sec-Fetch-Site``, ``Origin``); programs send neither, and pass.
* Every response says: no framing by other sites, no MIME sniffing, no referrer, and (for the
  pages) scripts, styles and connections from this origin only. Images may come from anywhere
  over http(s): the stores' signed URLs.
* Every ``/v1`` answer says ``Cache-Control: no-store``: job reads and ``/v1/sign`` carry signed
  image URLs (bearer credentials), and every answer is one tenant's; no browser or proxy cache
  may keep one. (api/problems.py sets it on every problem document too: the catch-all 500 is
  answered outside this middleware.)
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import ApiProblem, problem_response
from contract.errors import excerpt

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' https: http: data: blob:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
API_PREFIX = "/v1/"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
NO_STORE = "no-store"


class BrowserSafety:
    """Pure ASGI (not BaseHTTPMiddleware): an event stream's disconnect must reach the stream."""

    def __init__(self, app: ASGIApp, allowed_hosts: frozenset[str] | None = None):
        """``allowed_hosts``: the only host names (lowercase, any port) answered; None: any."""
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        api = scope["path"].startswith(API_PREFIX)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    if name not in headers:
                        headers[name] = value
                if api:  # a route's own Cache-Control (the event stream's) stays
                    headers.setdefault("Cache-Control", NO_STORE)
            await send(message)

        headers = Headers(scope=scope)
        if self.allowed_hosts is not None and _host_name(headers.get("host", "")) not in self.allowed_hosts:
            allowed = ", ".join(sorted(self.allowed_hosts))
            refusal = ApiProblem(
                403,
                "host-not-allowed",
                "Host not allowed",
                f"this API has no tokens (every caller is the tenant 'dev') and answers requests for "
                f"{allowed} only (any port), not Host {excerpt(headers.get('host', ''))!r}: call it by one "
                "of those names, list this one in IMAGEGEN_API_ALLOWED_HOSTS, or set IMAGEGEN_API_TOKENS",
            )
            await problem_response(refusal)(scope, receive, with_headers)
            return
        if scope["method"] not in SAFE_METHODS and _cross_site(headers):
            refusal = ApiProblem(
                403,
                "cross-site",
                "Cross-site request refused",
                "a page of another site asked this API to change something; call it from this site's "
                "pages or from a program",
            )
            await problem_response(refusal)(scope, receive, with_headers)
            return
        await self.app(scope, receive, with_headers)


def _cross_site(headers: Headers) -> bool:
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site not in ("same-origin", "none")  # "none": typed in the address bar
    origin = headers.get("origin")
    if origin is None:
        return False  # not a browser's cross-site request: programs send neither header
    return origin == "null" or urlsplit(origin).netloc.lower() != headers.get("host", "").lower()


def _host_name(host: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` -> ``[::1]``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] or host  # no "]": kept whole, and matches nothing
    return host.partition(":")[0]
