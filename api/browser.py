"""What a browser is told and refused: the API is also a web page (the Playground).

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
NO_STORE = "no-store"


class BrowserSafety:
    """Pure ASGI (not BaseHTTPMiddleware): an event stream's disconnect must reach the stream."""

    def __init__(self, app: ASGIApp):
        self.app = app

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

        if scope["method"] not in SAFE_METHODS and _cross_site(Headers(scope=scope)):
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
