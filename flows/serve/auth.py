"""The guards, outermost first: the Host allow-list (``HostGuard``), the Origin check on
anything but a GET (``OriginGuard``), and with a token configured the token on every route
(``TokenMiddleware``). See decision 019."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse

TOKEN_COOKIE = "obsflow_token"  # noqa: S105 - a cookie name
SAFE_METHODS = ("GET", "HEAD")  # what a page of another site may ask without a preflight


def host_name(host: str) -> str:
    """The name of a ``Host`` header's value (or an origin's netloc), without its port."""
    if host.startswith("["):  # [::1]:8000
        return host[1 : host.find("]")].lower() if "]" in host else ""
    return host.rsplit(":", 1)[0].lower() if host.count(":") == 1 else host.lower()


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostGuard:
    """A request's ``Host`` must be an address (a name cannot be rebound to it: DNS
    rebinding needs a name), ``localhost``, or one of ``names`` (the server's own names and
    ``--allow-host``); else a 400 saying how to admit it."""

    def __init__(self, app: Any, names: Iterable[str]) -> None:
        self.app, self.names = app, {"localhost", *(n.lower() for n in names)}

    def allowed(self, host: str) -> bool:
        name = host_name(host)
        return bool(name) and (name in self.names or is_address(name))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "")
            if not self.allowed(host):
                name = host_name(host)[:80] or "(none)"
                text = (
                    f"Host {name!r} is not a name of this server: if it is, start obsflow "
                    f"serve with --allow-host {name}"
                )
                await PlainTextResponse(text, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class OriginGuard:
    """A request other than a GET or HEAD that names an ``Origin`` must come from this
    server's own origin (the scheme and ``Host`` the request was sent to) or a
    ``--cors-origin``: a page of another site cannot make the server act."""

    def __init__(self, app: Any, origins: Iterable[str]) -> None:
        self.app, self.origins = app, {o.rstrip("/").lower() for o in origins}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
            if origin is not None and origin.lower() not in {own, *self.origins}:
                parts = urlsplit(origin) if origin != "null" else None
                shown = f"{parts.scheme}://{parts.netloc}" if parts else "null"
                text = f"requests from {shown[:80]!r} are refused: a page of this server only"
                await PlainTextResponse(text, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class TokenMiddleware:
    """Every route needs the token: ``Authorization: Bearer T``, the cookie this sets, or
    ``?token=T`` (EventSource cannot send headers). A query token that is the token sets the
    cookie — to the token itself, never to the text a request gave."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token.encode()

    def matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token")
        if given is not None and not given.isprintable():
            text = "a token is printable text: no control characters (CR, LF, ...)"
            await PlainTextResponse(text, status_code=400)(scope, receive, send)
            return
        auth = request.headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        query_ok = self.matches(given)
        # (each compared whatever the others gave: the time taken says nothing)
        found = [query_ok, self.matches(bearer), self.matches(request.cookies.get(TOKEN_COOKIE))]
        if not any(found):
            await PlainTextResponse("a token is needed", status_code=401)(scope, receive, send)
            return
        if not query_ok:
            await self.app(scope, receive, send)
            return
        cookie = f"{TOKEN_COOKIE}={self.token.decode()}; HttpOnly; SameSite=Strict; Path=/"

        async def with_cookie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"set-cookie", cookie.encode()))
            await send(message)

        await self.app(scope, receive, with_cookie)
