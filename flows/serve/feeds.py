"""The live feeds behind ``/api/views/{name}/events``: one poller per view (``Feed``), each
subscription's bounded queue (``Subscriber``), and the Server-Sent Events they carry.

An event's id is a position in the view (the capture commit whose rows it holds), so a client
that reconnects with ``Last-Event-ID: n`` — to a restarted server too — gets exactly the rows
that changed after ``n`` (see the package docstring and decision 011).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.datasets import reads
from obsflow.connectors.errors import ConfigError, ObsflowError
from obsflow.connectors.formats.json_records import json_array, row_texts
from obsflow.connectors.storage import layout, tables
from obsflow.connectors.storage.store import Store
from obsflow.flows.serve.errors import view_capture
from obsflow.flows.serve.filters import Filters

LOG = logging.getLogger("uvicorn.error")  # printed as the server's own messages are
QUEUE_EVENTS = 256  # events a subscriber may fall behind before it is dropped...
QUEUE_BYTES = 64 * 2**20  # ...or bytes of events (a big commit's events are megabytes)
SNAPSHOT_ROWS = 5_000  # rows per snapshot event
SEND_TIMEOUT = 10  # seconds a send to a stream may block before the stream is dropped


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
    table = reads.read_view(store, feed.view, filters.selection)
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


def resume_position(last_id: str | None, feed: Feed) -> int | None:
    """The position a client resumes after (its ``Last-Event-ID``), or None for a snapshot; a
    ConfigError when it is no position of the feed's view."""
    if last_id is None:
        return None
    try:
        since = int(last_id)
    except ValueError:
        since = -1
    if not 0 <= since <= feed.head:
        raise ConfigError(f"Last-Event-ID {last_id!r} is no position of view {feed.view!r}")
    return since
