"""The app: ``App`` holds the config, the store and the live feeds; its endpoints are methods,
registered in one route table (``App.routes``); errors become responses by one map
(``errors.ERRORS``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from importlib import resources
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from obsflow.connectors.datasets import reads
from obsflow.connectors.datasets.capture import capture_info, list_captures
from obsflow.connectors.datasets.channels import display, read_channels, read_gaps
from obsflow.connectors.datasets.pages import Paged
from obsflow.connectors.datasets.views import list_views
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.schema import READING_SCHEMA, TRACE
from obsflow.connectors.storage.store import Store
from obsflow.flows.serve.auth import HostGuard, OriginGuard, TokenMiddleware
from obsflow.flows.serve.config import ServeConfig
from obsflow.flows.serve.encoding import json_response, table_response
from obsflow.flows.serve.errors import ERRORS, NotFoundError, checked, view_capture
from obsflow.flows.serve.feeds import SEND_TIMEOUT, Feed, resume_position, view_events
from obsflow.flows.serve.filters import Filters

STATIC = {  # file name -> media type: nothing else is served from the package
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
    "app.js": "text/javascript",
    "app.css": "text/css",
    "index.html": "text/html",
    "view.html": "text/html",
    "feed.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}

MAX_GAPS = 10_000  # gaps a response holds at most (the newest)

Endpoint = Callable[[Request], Awaitable[Response]]


class App:
    """The endpoints over one store, and the live feeds of the views being watched (one
    ``Feed`` per view, started by its first stream, stopped with the app)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.store = Store(config.store)
        self.feeds: dict[str, Feed] = {}
        self._lock = asyncio.Lock()

    def routes(self) -> list[Route]:
        return [
            Route("/", self.page),
            Route("/views/{name}", self.page),
            Route("/static/{file}", self.static),
            Route(
                "/favicon.ico",
                lambda _: Response(static_bytes("favicon.svg"), media_type="image/svg+xml"),
            ),
            Route("/api/captures", threaded(self.captures)),
            Route("/api/views", threaded(self.views)),
            Route("/api/captures/{name}", threaded(self.capture)),
            Route("/api/captures/{name}/gaps", threaded(self.gaps)),
            Route("/api/views/{name}", threaded(self.view)),
            Route("/api/views/{name}/late", threaded(self.late)),
            Route("/api/views/{name}/events", self.events),
            Route("/api/deadletters", threaded(self.deadletters)),
            Route("/api/runs", threaded(self.runs)),
            Route("/api/status", self.status),
        ]

    def starlette(self) -> Starlette:
        """The Starlette app: the routes behind the guards (Host, Origin; CORS if asked for;
        the token), outermost first."""
        middleware = [
            Middleware(HostGuard, names=self.config.host_names()),
            Middleware(OriginGuard, origins=self.config.cors_origins),
        ]
        if self.config.cors_origins:
            origins = list(self.config.cors_origins)
            middleware.append(
                Middleware(
                    CORSMiddleware,
                    allow_origins=origins,
                    allow_methods=["GET"],
                    expose_headers=["Link"],  # (the next page: a page of that origin reads it)
                )
            )
        if self.config.token:
            middleware.append(Middleware(TokenMiddleware, token=self.config.token))
        handlers = {kind: error_handler(status, text) for kind, (status, text) in ERRORS.items()}
        return Starlette(
            routes=self.routes(),
            middleware=middleware,
            exception_handlers=handlers,
            lifespan=self.lifespan,
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        yield
        for feed in self.feeds.values():
            await feed.stop()

    async def feed_of(self, view: str) -> Feed:
        async with self._lock:
            if view not in self.feeds:
                feed = await asyncio.to_thread(Feed, self.store, view, self.config.poll)
                await feed.start()
                self.feeds[view] = feed
            return self.feeds[view]

    # -- pages -------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        name = request.path_params.get("name")
        if name is not None:
            await asyncio.to_thread(view_capture, self.store, name)
        html = static_bytes("view.html" if name else "index.html")
        return Response(html, media_type="text/html")

    async def static(self, request: Request) -> Response:
        name = request.path_params["file"]
        if name not in STATIC:
            raise NotFoundError("not found")
        return Response(static_bytes(name), media_type=STATIC[name])

    # -- the API: blocking reads, run on a worker thread ---------------------------------------

    def captures(self, request: Request) -> Response:
        names = list_captures(self.store)
        return json_response([dict(capture_info(self.store, n).__dict__) for n in names])

    def views(self, request: Request) -> Response:
        """Each view's name, capture and definition, and its capture's channel ``units``
        and display ``limits`` when a live source recorded them (``channels.display``)."""
        keys = ("name", "capture", "definition")
        shown: dict[str, dict[str, Any]] = {}  # capture -> its channels' units and limits
        out = []
        for m in list_views(self.store):
            capture = m["capture"]
            if capture not in shown:
                shown[capture] = display(read_channels(self.store, capture))
            out.append({**{k: m[k] for k in keys}, **shown[capture]})
        return json_response(out)

    def capture(self, request: Request) -> Response:
        name = self.capture_name(request)

        def paged(f: Filters) -> Paged:
            select = f.selection
            if f.traces:  # (asked for by trace id, each reading shows its own)
                select = replace(select, columns=[*READING_SCHEMA.names, TRACE])
            return reads.paged_capture(
                self.store, name, select, filter=reads.trace_filter(f.trace_ids)
            )

        return table_response(request, self.store, paged)

    def gaps(self, request: Request) -> Response:
        """The gaps the capture's live sessions recorded (disconnects, time no session ran),
        by start: the newest ``limit`` (default and at most ``MAX_GAPS``)."""
        name = self.capture_name(request)
        text = request.query_params.get("limit") or str(MAX_GAPS)
        if not text.isdigit() or not 0 < int(text) <= MAX_GAPS:
            raise ConfigError(f"limit={text[:20]!r}: give a whole number 1..{MAX_GAPS}")
        return json_response(read_gaps(self.store, name, limit=int(text)))

    def capture_name(self, request: Request) -> str:
        """The request's capture name, checked before it becomes a path; one the store has."""
        name = checked(request.path_params["name"], "capture name")
        if name not in list_captures(self.store):
            raise NotFoundError(f"no capture {name!r}")
        return name

    def view(self, request: Request) -> Response:
        name = request.path_params["name"]
        view_capture(self.store, name)
        return table_response(
            request, self.store, lambda f: reads.paged_view(self.store, name, f.selection)
        )

    def late(self, request: Request) -> Response:
        name = request.path_params["name"]
        view_capture(self.store, name)
        return table_response(
            request,
            self.store,
            lambda f: reads.paged_late(self.store, name, f.selection, trace_ids=f.trace_ids),
        )

    def deadletters(self, request: Request) -> Response:
        run_id = request.query_params.get("run")
        reason = request.query_params.get("reason")
        if run_id:
            checked(run_id, "run id")
        return table_response(
            request,
            self.store,
            lambda f: reads.paged_deadletters(
                self.store, run=run_id, reason=reason, trace_ids=f.trace_ids
            ),
        )

    def runs(self, request: Request) -> Response:
        docs = reads.run_summaries(self.store)
        return json_response(sorted(docs, key=lambda d: str(d.get("finished", ""))))

    # -- live --------------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        """The view's rows as Server-Sent Events (see ``feeds``)."""
        filters = Filters.of(request.query_params)
        feed = await self.feed_of(request.path_params["name"])
        last_id = request.headers.get("last-event-id") or request.query_params.get("last_id")
        since = resume_position(last_id, feed)
        return EventSourceResponse(
            view_events(self.store, feed, filters, since), ping=10, send_timeout=SEND_TIMEOUT
        )

    async def status(self, request: Request) -> Response:
        """The live feeds: each watched view's position and how many streams follow it."""
        out = {
            name: {"capture": f.capture, "head": f.head, "subscribers": len(f.subscribers)}
            for name, f in sorted(self.feeds.items())
        }
        return JSONResponse({"store": self.store.uri(""), "feeds": out})


def threaded(endpoint: Callable[[Request], Response]) -> Endpoint:
    """``endpoint`` run on a worker thread: it reads the store, which blocks."""

    async def run(request: Request) -> Response:
        return await asyncio.to_thread(endpoint, request)

    return run


def error_handler(
    status: int, text: str | None
) -> Callable[[Request, Exception], Awaitable[Response]]:
    """The response to an error of a type in ``ERRORS``: its status, and the map's text or the
    error's own message."""

    async def handle(request: Request, exc: Exception) -> Response:
        return PlainTextResponse(text or str(exc), status_code=status)

    return handle


def static_bytes(name: str) -> bytes:
    return (resources.files("obsflow.flows") / "static" / name).read_bytes()
