"""``obsflow serve``: a read-only web app over a store — pages, an HTTP API, live view rows.

Routes (every one read-only; names are checked before they become paths):

- ``/`` lists captures and views; ``/views/{name}`` charts a view's series live.
- ``/api/captures``, ``/api/views``: what the store holds (JSON).
- ``/api/captures/{name}``, ``/api/views/{name}``, ``/api/views/{name}/late``,
  ``/api/deadletters``, ``/api/runs``: rows, read as the Explorer reads them (filters pushed
  down: ``source``, ``channel`` (repeatable), ``from``, ``until``, ``limit``; ``trace_id``
  (repeatable) on a capture, late readings and dead letters), as ``format=json`` (records,
  times ISO-8601 UTC), ``csv`` or ``arrow`` (an IPC stream).
- ``/api/status``: the live feeds (position and streams per watched view).
- ``/api/views/{name}/events``: Server-Sent Events of the view's rows (``source``/``channel``
  filters, repeatable: one stream carries every series a page shows).

**Event ids are positions in the view, not counters of this process.** A view's table changes
only by commits numbered in its capture's order; a row carries the run that last wrote it. The
event with id ``n`` holds the rows that commit ``n`` wrote and no later commit rewrote, so the
events after ``n`` hold exactly the rows that changed after ``n``, each once, in its latest
version. A client that reconnects with ``Last-Event-ID: n`` — to a restarted server too —
gets those events: no gap, no duplicate. A first connection gets a snapshot (the rows of
commits up to the feed's position, id = that position), then the events.

One poller per view (``Feed``) looks for the view table's next log entry (one request per
tick, no listing) and fans each commit's rows out to the subscribers' bounded queues; a
subscriber whose queue is full (it stopped reading) is dropped, and slows nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import ipaddress
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from errno import EADDRINUSE
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from obsflow.connectors.datasets import reads
from obsflow.connectors.datasets.capture import capture_info, list_captures
from obsflow.connectors.datasets.views import list_views, read_view_doc
from obsflow.connectors.errors import ConfigError, ObsflowError
from obsflow.connectors.formats.schema import READING_SCHEMA, TRACE
from obsflow.connectors.ids import check_name
from obsflow.connectors.storage import layout, tables
from obsflow.connectors.storage.store import Store
from obsflow.flows.kernels.json_records import json_array, records_json, row_texts

LOG = logging.getLogger("uvicorn.error")  # printed as the server's own messages are
TOKEN_ENV = "OBSFLOW_SERVE_TOKEN"  # noqa: S105 - a variable name, not a secret
TOKEN_COOKIE = "obsflow_token"  # noqa: S105 - a cookie name
QUEUE_EVENTS = 256  # events a subscriber may fall behind before it is dropped...
QUEUE_BYTES = 64 * 2**20  # ...or bytes of events (a big commit's events are megabytes)
SNAPSHOT_ROWS = 5_000  # rows per snapshot event
SEND_TIMEOUT = 10  # seconds a send to a stream may block before the stream is dropped
MAX_LIMIT = 1_000_000
FORMATS = {
    "json": "application/json",
    "csv": "text/csv",
    "arrow": "application/vnd.apache.arrow.stream",
}
STATIC = {  # file name -> media type: nothing else is served from the package
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
    "app.js": "text/javascript",
    "app.css": "text/css",
    "index.html": "text/html",
    "view.html": "text/html",
}


class NotFoundError(ObsflowError):
    """A name that is not valid, or names nothing in the store."""


@dataclass(frozen=True)
class ServeConfig:
    store: str
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    poll: float = 0.5  # seconds between looks for a new commit
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.token and not is_loopback(self.host):
            raise ConfigError(
                f"--host {self.host} is reachable from other machines: give a token "
                f"(--token-file FILE or {TOKEN_ENV}), or bind 127.0.0.1"
            )
        if not self.poll > 0:
            raise ConfigError("--poll must be a positive number of seconds")

    def __repr__(self) -> str:  # the token never shows
        return f"ServeConfig(store={self.store!r}, host={self.host!r}, port={self.port})"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str | None) -> str | None:
    """The token from ``--token-file`` (first line), else from ``OBSFLOW_SERVE_TOKEN``."""
    if path:
        try:
            token = Path(path).read_text().strip().splitlines()[0].strip()
        except (OSError, IndexError):
            raise ConfigError(f"--token-file {path}: cannot read a token from it") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if token and len(token) < 16:
        raise ConfigError("the serve token must have at least 16 characters")
    return token or None


# -- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    sources: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    start: str | None = None
    until: str | None = None
    limit: int | None = None
    traces: tuple[str, ...] = ()  # trace_id=... (captures, late readings, dead letters)

    @classmethod
    def of(cls, query: Any) -> Filters:
        limit = query.get("limit")
        try:
            n = None if limit in (None, "") else int(limit)
        except ValueError:
            raise ConfigError(f"limit={limit!r} is not a whole number") from None
        if n is not None and not 0 <= n <= MAX_LIMIT:
            raise ConfigError(f"limit must be between 0 and {MAX_LIMIT:,}")
        for key in ("from", "until"):
            value = query.get(key)
            if value:
                try:
                    pd.Timestamp(value)
                except ValueError:
                    raise ConfigError(f"{key}={value!r} is not an ISO-8601 time") from None
        return cls(
            sources=tuple(query.getlist("source")),
            channels=tuple(query.getlist("channel")),
            start=query.get("from") or None,
            until=query.get("until") or None,
            limit=n,
            traces=tuple(query.getlist("trace_id")),
        )

    @property
    def trace_ids(self) -> list[str] | None:
        return list(self.traces) or None

    @property
    def read_args(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources) or None,
            "channels": list(self.channels) or None,
            "start": self.start,
            "until": self.until,
        }

    def rows_json(self, rows: pa.Table, texts: pa.LargeStringArray) -> str:
        """The JSON array of the rows of ``rows`` (a commit's; ``texts`` its rows' JSON) that
        this subscription shows."""
        mask = None
        for column, values in (("source", self.sources), ("channel", self.channels)):
            if values and column in rows.column_names:
                m = pc.is_in(rows.column(column), value_set=pa.array(values, pa.string()))
                mask = m if mask is None else pc.and_(mask, m)
        if mask is None:
            return json_array(texts)
        if isinstance(mask, pa.ChunkedArray):  # (a commit's rows come from several objects)
            mask = mask.combine_chunks()
        return json_array(texts.filter(mask))


def checked(name: str, kind: str) -> str:
    try:
        return check_name(name, kind=kind)
    except ObsflowError:
        raise NotFoundError(f"no {kind} {name!r}") from None


def view_capture(store: Store, view: str) -> str:
    checked(view, "view name")
    try:
        return str(read_view_doc(store, view)["capture"])
    except (FileNotFoundError, ObsflowError):
        raise NotFoundError(f"no view {view!r}") from None


def encode(table: pa.Table, fmt: str) -> bytes:
    """Rows as JSON records (times ISO-8601 UTC), CSV, or an Arrow IPC stream."""
    if fmt == "arrow":
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue()
    if fmt == "csv":
        sink = io.BytesIO()
        pacsv.write_csv(table, sink)
        return sink.getvalue()
    return records_json(table).encode()


# -- live feeds ----------------------------------------------------------------------------------


@dataclass(eq=False)  # each subscriber is itself: hashed by identity
class Subscriber:
    filters: Filters
    # (commit, its event); None: dropped. Bounded in events and in bytes.
    queue: asyncio.Queue[tuple[int, bytes] | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_EVENTS)
    )
    queued_bytes: int = 0

    def offer(self, n: int, data: bytes) -> bool:
        """Queue an event; False when the subscriber is too far behind (its stream ends)."""
        if self.queued_bytes + len(data) > QUEUE_BYTES or self.queue.full():
            while not self.queue.empty():  # what it held is of no use to it any more
                self.queue.get_nowait()
            self.queued_bytes = 0
            self.queue.put_nowait(None)  # its stream ends; its client reconnects
            return False
        self.queue.put_nowait((n, data))
        self.queued_bytes += len(data)
        return True

    async def next(self) -> tuple[int, bytes] | None:
        item = await self.queue.get()
        if item is not None:
            self.queued_bytes -= len(item[1])
        return item


@dataclass(frozen=True)
class ViewCommit:
    """A commit of a view's table: its capture's number, the run, the table version, and
    whether it rebuilt the view whole."""

    n: int
    run: str
    version: int
    reset: bool = False

    @classmethod
    def of(cls, info: dict[str, Any] | None, version: int) -> ViewCommit | None:
        doc = (info or {}).get("obsflow") or {}
        if "commit" not in doc or "run" not in doc:
            return None  # not one of obsflow's runs (a vacuum): no rows changed
        return cls(int(doc["commit"]), str(doc["run"]), version, bool(doc.get("rebuilt")))


def view_commits(store: Store, view: str, since: int = 0) -> list[ViewCommit]:
    """A view table's commits numbered after ``since``, in order."""
    out = []
    for entry in tables.history(store, layout.view_dir(view)):
        c = ViewCommit.of(entry, int(entry.get("version", 0)))
        if c is not None and c.n > since:
            out.append(c)
    return sorted(out, key=lambda c: c.version)


class Feed:
    """A view's commits as they land, fanned out to subscribers (see the module docstring)."""

    def __init__(self, store: Store, view: str, poll: float) -> None:
        self.store, self.view, self.poll = store, view, poll
        self.capture = view_capture(store, view)
        self.runs: dict[str, int] = {}  # run -> the commit that holds it
        self.head = 0
        self.version = -1  # the view table's version the feed has seen
        self.subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        entries = await asyncio.to_thread(tables.history, self.store, layout.view_dir(self.view))
        for entry in sorted(entries, key=lambda e: int(e.get("version", 0))):
            self.version = int(entry.get("version", 0))
            c = ViewCommit.of(entry, self.version)
            if c is not None:
                self.runs[c.run] = c.n
                self.head = c.n
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def subscribe(self, filters: Filters) -> Subscriber:
        sub = Subscriber(filters)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    async def _run(self) -> None:
        while True:
            try:
                found = await asyncio.to_thread(self._next_version)
            except (OSError, ObsflowError, ValueError):  # the store away: look again later
                found = None
            if found is None:
                await asyncio.sleep(self.poll)
                continue
            version, entry = found
            if entry is None:  # not a run of obsflow's: nothing to send
                self.version = version
                continue
            try:
                event = await asyncio.to_thread(CommitEvent.of, self.store, self.view, entry)
                await asyncio.to_thread(event.prepare, {sub.filters for sub in self.subscribers})
            except Exception:
                # Never a silent end of the live view: say why, and try this commit again.
                LOG.exception("view %s: commit %d could not be sent; retrying", self.view, entry.n)
                await asyncio.sleep(max(self.poll, 5.0))
                continue
            # From here to the end of the fan-out nothing awaits: a subscriber either joined
            # before the new head (and gets this event queued) or after it.
            self.runs[entry.run] = entry.n
            self.head, self.version = entry.n, version
            for sub in list(self.subscribers):
                if not sub.offer(entry.n, event.data(sub.filters)):
                    self.subscribers.discard(sub)  # it stopped reading: wait for nobody

    def _next_version(self) -> tuple[int, ViewCommit | None] | None:
        """The view table's next version and its commit, if it is there (one request: the
        read of its log entry says whether it is)."""
        version = self.version + 1
        info = tables.log_entry(self.store, layout.view_dir(self.view), version)
        if info is None:
            return None
        return version, ViewCommit.of(info, version)


class CommitEvent:
    """One commit's rows, as JSON once, and its event per subscription, framed once (the
    subscriptions with the same filters — pages of the same series — share one)."""

    def __init__(self, n: int, rows: pa.Table, reset: bool) -> None:
        self.n, self.rows, self.reset = n, rows, reset
        self.texts = row_texts(rows)
        self._data: dict[Filters, bytes] = {}

    @classmethod
    def of(cls, store: Store, view: str, entry: ViewCommit) -> CommitEvent:
        return cls(entry.n, commit_rows(store, view, entry), entry.reset)

    def data(self, filters: Filters) -> bytes:
        if filters not in self._data:
            rows_json = filters.rows_json(self.rows, self.texts)
            self._data[filters] = sse_event("rows", self.n, self.n, rows_json, self.reset)
        return self._data[filters]

    def prepare(self, filters: set[Filters]) -> None:
        for f in filters:
            self.data(f)


def commit_rows(store: Store, view: str, entry: ViewCommit) -> pa.Table:
    """The rows of ``view`` that commit ``entry`` wrote and no later commit rewrote."""
    table = reads.read_view(store, view)
    return sort_rows(table.filter(pc.equal(table.column("run"), entry.run)))


def sort_rows(table: pa.Table) -> pa.Table:
    keys = [k for k in ("source", "channel", "window_start") if k in table.column_names]
    return table.sort_by([(k, "ascending") for k in keys]) if keys else table


async def view_events(
    store: Store, feed: Feed, filters: Filters, since: int | None
) -> AsyncIterator[bytes]:
    """The events of one subscription: a snapshot, or the catch-up after position ``since``
    (checked by the caller), then each commit as it lands (see the module docstring)."""
    sub = feed.subscribe(filters)
    try:
        upto = feed.head  # the queue holds what comes after this
        if since is None:
            for chunk in await asyncio.to_thread(snapshot, store, feed, filters, upto):
                yield chunk
        else:
            log = await asyncio.to_thread(view_commits, store, feed.view, since)
            for entry in log:
                if entry.n > upto:
                    break
                missed = await asyncio.to_thread(CommitEvent.of, store, feed.view, entry)
                yield missed.data(filters)
        while (item := await sub.next()) is not None:
            n, event = item
            if n > upto:
                yield event
        # Dropped: the client reconnects with its last id and catches up.
    finally:
        feed.unsubscribe(sub)


def snapshot(store: Store, feed: Feed, filters: Filters, upto: int) -> list[bytes]:
    """The view's rows of commits up to ``upto`` as events, the last with id ``upto``."""
    table = reads.read_view(store, feed.view, **filters.read_args)
    known = [run for run, n in feed.runs.items() if n <= upto]
    table = table.filter(pc.is_in(table.column("run"), value_set=pa.array(known, pa.string())))
    texts = row_texts(table)
    starts = range(0, table.num_rows, SNAPSHOT_ROWS) or range(1)
    return [
        sse_event(
            "snapshot",
            upto if i == starts[-1] else None,
            None,
            json_array(texts[i : i + SNAPSHOT_ROWS]),
            i == 0,
        )
        for i in starts
    ]


def sse_event(
    kind: str, event_id: int | None, commit: int | None, rows_json: str, reset: bool
) -> bytes:
    """One Server-Sent Event, framed here once however many streams it goes to. Its data: the
    commit it is of (None in a snapshot), whether the client drops what it has first, and the
    rows — one line (JSON's strings escape their newlines)."""
    data = f'{{"commit":{json.dumps(commit)},"reset":{json.dumps(reset)},"rows":{rows_json}}}'
    head = "" if event_id is None else f"id: {event_id}\r\n"
    return f"{head}event: {kind}\r\ndata: {data}\r\n\r\n".encode()


# -- the app -----------------------------------------------------------------------------------


def create_app(config: ServeConfig) -> Any:
    """The Starlette app for ``config`` (``obsflow serve`` runs it with uvicorn)."""
    try:
        from sse_starlette.sse import EventSourceResponse
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.middleware.cors import CORSMiddleware
        from starlette.requests import Request
        from starlette.responses import JSONResponse, PlainTextResponse, Response
        from starlette.routing import Route
    except ImportError:
        raise ConfigError(
            "obsflow serve needs its web packages: pip install 'obsflow[serve]'"
        ) from None

    store = Store(config.store)
    feeds: dict[str, Feed] = {}
    lock = asyncio.Lock()

    async def feed_of(view: str) -> Feed:
        async with lock:
            if view not in feeds:
                feed = await asyncio.to_thread(Feed, store, view, config.poll)
                await feed.start()
                feeds[view] = feed
            return feeds[view]

    def table_response(request: Request, read: Callable[[Filters], pa.Table]) -> Response:
        fmt = request.query_params.get("format", "json")
        if fmt not in FORMATS:
            raise ConfigError(f"format={fmt!r}: use json, csv or arrow")
        filters = Filters.of(request.query_params)
        table = read(filters)
        if filters.limit is not None:
            table = table.slice(0, filters.limit)
        return Response(encode(table, fmt), media_type=FORMATS[fmt])

    async def in_thread(func: Callable[[], Response]) -> Response:
        try:
            return await asyncio.to_thread(func)
        except NotFoundError as exc:
            return PlainTextResponse(str(exc), status_code=404)
        except FileNotFoundError:
            return PlainTextResponse("not found", status_code=404)
        except ConfigError as exc:
            return PlainTextResponse(str(exc), status_code=400)

    async def api_captures(request: Request) -> Response:
        def run() -> Response:
            rows = []
            for name in list_captures(store):
                info = capture_info(store, name)
                rows.append(dict(info.__dict__))
            return JSONResponse(json.loads(json.dumps(rows, default=str)))

        return await in_thread(run)

    async def api_views(request: Request) -> Response:
        def run() -> Response:
            out = [
                {"name": m["name"], "capture": m["capture"], "definition": m["definition"]}
                for m in list_views(store)
            ]
            return JSONResponse(out)

        return await in_thread(run)

    def view_rows(
        read: Callable[..., pa.Table], *, traced: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """An endpoint of a view's rows read by ``read`` (its rows, its late readings, which
        are ``traced``: they take a trace_id filter)."""

        async def endpoint(request: Request) -> Response:
            name = request.path_params["name"]

            def run() -> Response:
                view_capture(store, name)
                return table_response(
                    request,
                    lambda f: read(
                        store, name, **f.read_args, **({"trace_ids": f.trace_ids} if traced else {})
                    ),
                )

            return await in_thread(run)

        return endpoint

    async def api_capture(request: Request) -> Response:
        def run() -> Response:
            name = checked(request.path_params["name"], "capture name")
            if name not in list_captures(store):
                raise NotFoundError(f"no capture {name!r}")

            def read(f: Filters) -> pa.Table:
                if not f.traces:
                    return reads.read_capture(store, name, **f.read_args)
                return reads.read_capture(
                    store,
                    name,
                    **f.read_args,
                    columns=[*READING_SCHEMA.names, TRACE],
                    filter=reads.trace_filter(f.trace_ids),
                )

            return table_response(request, read)

        return await in_thread(run)

    async def api_deadletters(request: Request) -> Response:
        run_id = request.query_params.get("run")
        reason = request.query_params.get("reason")

        def run() -> Response:
            if run_id:
                checked(run_id, "run id")
            return table_response(
                request,
                lambda f: reads.read_deadletters(
                    store, run=run_id, reason=reason, trace_ids=f.trace_ids
                ),
            )

        return await in_thread(run)

    async def api_runs(request: Request) -> Response:
        def run() -> Response:
            docs = sorted(reads.run_summaries(store), key=lambda d: str(d.get("finished", "")))
            return JSONResponse(json.loads(json.dumps(docs, default=str)))

        return await in_thread(run)

    async def api_events(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            filters = Filters.of(request.query_params)
            feed = await feed_of(name)
        except NotFoundError as exc:
            return PlainTextResponse(str(exc), status_code=404)
        except ConfigError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        last_id = request.headers.get("last-event-id") or request.query_params.get("last_id")
        since = None
        if last_id is not None:
            try:
                since = int(last_id)
            except ValueError:
                since = -1
            if not 0 <= since <= feed.head:
                return PlainTextResponse(
                    f"Last-Event-ID {last_id!r} is no position of view {name!r}", status_code=400
                )
        return EventSourceResponse(
            view_events(store, feed, filters, since), ping=10, send_timeout=SEND_TIMEOUT
        )

    async def api_status(request: Request) -> Response:
        """The live feeds: each watched view's position and how many streams follow it."""
        out = {
            name: {"capture": f.capture, "head": f.head, "subscribers": len(f.subscribers)}
            for name, f in sorted(feeds.items())
        }
        return JSONResponse({"store": store.uri(""), "feeds": out})

    async def page(request: Request) -> Response:
        name = request.path_params.get("name")
        if name is not None:
            try:
                await asyncio.to_thread(view_capture, store, name)
            except NotFoundError as exc:
                return PlainTextResponse(str(exc), status_code=404)
        html = static_bytes("view.html" if name else "index.html")
        return Response(html, media_type="text/html")

    async def static(request: Request) -> Response:
        name = request.path_params["file"]
        if name not in STATIC:
            return PlainTextResponse("not found", status_code=404)
        return Response(static_bytes(name), media_type=STATIC[name])

    routes = [
        Route("/", page),
        Route("/views/{name}", page),
        Route("/static/{file}", static),
        Route("/api/captures", api_captures),
        Route("/api/views", api_views),
        Route("/api/captures/{name}", api_capture),
        Route("/api/views/{name}", view_rows(reads.read_view)),
        Route("/api/views/{name}/late", view_rows(reads.read_late, traced=True)),
        Route("/api/views/{name}/events", api_events),
        Route("/api/deadletters", api_deadletters),
        Route("/api/runs", api_runs),
        Route("/api/status", api_status),
    ]
    middleware = []
    if config.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET"]
            )
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        for feed in feeds.values():
            await feed.stop()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    if config.token:
        app.add_middleware(TokenMiddleware, token=config.token)
    return app


class TokenMiddleware:
    """Every route needs the token: ``Authorization: Bearer T``, the cookie this sets, or
    ``?token=T`` (which sets the cookie: EventSource cannot send headers)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse

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


def static_bytes(name: str) -> bytes:
    return (resources.files("obsflow.flows") / "static" / name).read_bytes()


STALLED_MESSAGE = (
    f"dropped an event stream whose client stopped reading (a send blocked {SEND_TIMEOUT} s)"
)


class StalledStreams(logging.Filter):
    """A stream dropped because its client stopped reading is routine: one line, not the
    traceback uvicorn logs for an app's exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        from sse_starlette.sse import SendTimeoutError

        if record.exc_info and isinstance(record.exc_info[1], SendTimeoutError):
            record.msg, record.args, record.exc_info = STALLED_MESSAGE, (), None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` — or a clear error, before anything says it serves."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart reuses its port
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = " (another obsflow serve?): choose another --port" if exc.errno == EADDRINUSE else ""
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    return sock


def serve(config: ServeConfig, sock: socket.socket) -> None:
    """Run the app on ``sock`` (bound) until interrupted."""
    import uvicorn

    LOG.addFilter(StalledStreams())
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
    )
    server.run(sockets=[sock])
