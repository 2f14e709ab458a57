"""The token guard: with a token configured, every route needs it."""

from __future__ import annotations

import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse

TOKEN_COOKIE = "obsflow_token"  # noqa: S105 - a cookie name


class TokenMiddleware:
    """Every route needs the token: ``Authorization: Bearer T``, the cookie this sets, or
    ``?token=T`` (which sets the cookie: EventSource cannot send headers)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token")
        auth = request.headers.get("authorization", "")
        candidates = [
            given,
            auth[7:] if auth.lower().startswith("bearer ") else None,
            request.cookies.get(TOKEN_COOKIE),
        ]
        if not any(c and hmac.compare_digest(c.encode(), self.token) for c in candidates):
            await PlainTextResponse("a token is needed", status_code=401)(scope, receive, send)
            return
        if given is None:
            await self.app(scope, receive, send)
            return

        async def with_cookie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{TOKEN_COOKIE}={given}; HttpOnly; SameSite=Strict; Path=/"
                message.setdefault("headers", []).append((b"set-cookie", cookie.encode()))
            await send(message)

        await self.app(scope, receive, with_cookie)
