"""Reading a store: captures, views, late readings, dead letters and run summaries as tables.

One reader per kind of data, used by the CLI, the Explorer, SQL and the web app alike. Each
reads one version of a table (``connectors.storage.tables``): the latest, or the store as it was
(``as_of``: a capture's commit number, or a time). A ``Selection`` says which rows and
columns to read; its filters on source, channel and time (``start <= t < until``, UTC; naive
times mean UTC) are pushed down: a source's readings and its view rows live in one capture
partition, so a read restricted to some sources opens only that partition's files; files whose
time statistics lie outside the range are not opened; pyarrow skips row groups by their
statistics and reads only the columns asked for. Times come back exact to the nanosecond.
Every read goes through ``Store`` (retries, ``StoreError``). Results are sorted, and an empty
result still has its columns.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypedDict, Unpack

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from obsflow.connectors.algorithms.partitions import partitions_of
from obsflow.connectors.datasets.capture import (
    capture_snapshot,
    list_captures,
    no_version,
    open_capture,
)
from obsflow.connectors.datasets.pages import Paged
from obsflow.connectors.datasets.views import read_view_doc, view_head
from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.formats.parsing import to_utc
from obsflow.connectors.formats.schema import READING_SCHEMA, TRACE
from obsflow.connectors.payloads.format import PAYLOAD_SCHEMA
from obsflow.connectors.storage import layout, tables
from obsflow.connectors.storage.commits import AsOf, read_log, snapshot_as_of
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import FileEntry, Snapshot

CAPTURE_KEYS = ("source", "channel", "time", "seq")
VIEW_KEYS = ("source", "channel", "window_start")


def _ns(value: object, what: str) -> int | None:
    return None if value is None else int(to_utc(value, what).value)


class Where(TypedDict, total=False):
    """``Selection``'s fields as keywords of a read: ``read_view(store, name, sources=["a"])``
    is ``read_view(store, name, Selection(sources=["a"]))``."""

    sources: Sequence[str] | None
    channels: Sequence[str] | None
    start: object
    until: object
    columns: Sequence[str] | None


@dataclass(frozen=True)
class Selection:
    """Which rows and columns a read returns: rows of ``sources`` and ``channels`` (None: all)
    with ``start <= t < until`` (UTC; naive times mean UTC; None: unbounded), and ``columns``
    (None: the read's default columns)."""

    sources: Sequence[str] | None = None
    channels: Sequence[str] | None = None
    start: object = None
    until: object = None
    columns: Sequence[str] | None = None

    @classmethod
    def of(cls, select: Selection | None, where: Where) -> Selection:
        """``select`` (default: everything) with the fields ``where`` gives replaced."""
        return replace(select or cls(), **where)


def row_filter(
    select: Selection, time_column: str = "time", final_only: bool = False
) -> ds.Expression | None:
    """A pushed-down filter on stored rows: ``select``'s series, ``start <= time_column <
    until`` (on the column's exact twin), and with ``final_only`` only final view rows. None
    when nothing is restricted."""
    parts: list[ds.Expression] = []
    if select.sources is not None:
        parts.append(pc.field("source").isin(list(select.sources)))
    if select.channels is not None:
        parts.append(pc.field("channel").isin(list(select.channels)))
    if (lo := _ns(select.start, "start")) is not None:
        parts.append(pc.field(time_column + layout.NS) >= lo)
    if (hi := _ns(select.until, "until")) is not None:
        parts.append(pc.field(time_column + layout.NS) < hi)
    if final_only:
        parts.append(pc.field("final"))
    return _all(parts)


def _all(parts: list[ds.Expression | None]) -> ds.Expression | None:
    kept = [p for p in parts if p is not None]
    if not kept:
        return None
    expr = kept[0]
    for p in kept[1:]:
        expr = expr & p
    return expr


def _partitions(store: Store, capture: str | None, sources: list[str] | None) -> list[int] | None:
    """Capture partitions holding ``sources`` (None: all, or not known)."""
    if sources is None or capture is None:
        return None
    try:
        meta = open_capture(store, capture)
    except StoreError:  # the capture is gone: a view of it cannot be pruned by partition
        return None
    return partitions_of(sources, meta.partitions)


def _pick(
    snap: Snapshot | None,
    parts: list[int] | None,
    start: object = None,
    until: object = None,
    time_column: str = "time",
) -> list[FileEntry]:
    """The files of a version a read opens: those of ``parts`` whose time statistics meet
    ``[start, until)``."""
    if snap is None:
        return []
    files = (
        list(snap.files)
        if parts is None
        else [f for p in sorted(set(parts)) for f in snap.under(layout.part_name(p) + "/")]
    )
    lo, hi = _ns(start, "start"), _ns(until, "until")
    column = time_column + layout.NS
    out = []
    for f in files:
        span = f.span(column)
        if span is not None and (
            (lo is not None and span[1] < lo) or (hi is not None and span[0] >= hi)
        ):
            continue
        out.append(f)
    return out


def version(store: Store, table: str, app: str | None, as_of: AsOf) -> Snapshot | None:
    """The version of ``table`` a read ``as_of`` sees (``commits.snapshot_as_of``)."""
    return snapshot_as_of(store, table, app, as_of)


def capture_files_read(
    store: Store,
    name: str,
    sources: Sequence[str] | None,
    *,
    start: object = None,
    until: object = None,
    as_of: AsOf = None,
) -> list[FileEntry]:
    """The capture files a read of ``sources`` in ``[start, until)`` opens."""
    snap = capture_snapshot(store, name, as_of=as_of)  # (None too if dropped by then)
    if snap is None:
        raise no_version(store, name, as_of)
    return _pick(snap, _partitions(store, name, _list(sources)), start, until)


def view_files_read(
    store: Store,
    name: str,
    sources: Sequence[str] | None,
    doc: dict[str, Any] | None = None,
    *,
    as_of: AsOf = None,
) -> list[FileEntry]:
    """The view files a read of ``sources`` opens (``doc``: the view's, if already read)."""
    capture = (doc or read_view_doc(store, name)).get("capture")
    snap = version(store, layout.view_dir(name), capture, as_of)
    return _pick(snap, _partitions(store, capture, _list(sources)))


def _select(table: pa.Table, columns: Sequence[str] | None, keys: Sequence[str]) -> pa.Table:
    sort = [k for k in keys if k in table.column_names]
    if sort:
        table = table.sort_by([(k, "ascending") for k in sort])
    return table if columns is None else table.select(list(columns))


def _columns(
    schema: pa.Schema, columns: Sequence[str] | None, keys: Sequence[str]
) -> list[str] | None:
    """The columns to read: those asked for plus the sort keys (an unknown one is an error)."""
    if columns is None:
        return None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise ConfigError(f"no column(s) {missing}; columns are {schema.names}")
    return list(dict.fromkeys([*columns, *(k for k in keys if k in schema.names)]))


def scan(
    store: Store,
    files: Sequence[FileEntry],
    schema: pa.Schema,
    *,
    columns: Sequence[str] | None = None,
    filter: ds.Expression | None = None,
) -> pa.Table:
    """Rows of table files, read as stored and returned as ``schema`` has them (times exact);
    ``filter`` names stored columns (``row_filter``)."""
    stored = layout.stored_schema(schema)
    table = store.scan(
        [f.path for f in files],
        schema=stored,
        columns=layout.stored_columns(columns, schema),
        filter=filter,
    )
    return layout.loaded(table, schema)


def _read(
    store: Store,
    files: Sequence[FileEntry],
    schema: pa.Schema,
    select: Selection,
    keys: Sequence[str],
    *,
    filter: ds.Expression | None = None,
    time_column: str = "time",
    final_only: bool = False,
) -> pa.Table:
    """The rows of ``files`` that ``select`` (and ``filter``) keep, with ``select``'s columns,
    sorted by ``keys``: what every read of captures, views and late readings does once it
    knows which files to open."""
    expr = _all([row_filter(select, time_column, final_only), filter])
    columns = _columns(schema, select.columns, keys)
    table = scan(store, files, schema, columns=columns, filter=expr)
    return _select(table, select.columns, keys)


def read_capture(
    store: Store,
    name: str,
    select: Selection | None = None,
    *,
    payloads: bool = False,
    filter: ds.Expression | None = None,
    as_of: AsOf = None,
    **where: Unpack[Where],
) -> pa.Table:
    """A capture's readings that ``select`` (or the ``where`` keywords) picks, sorted by
    source, channel, time and seq. Columns: the reading fields, with ``payloads`` the
    ``payload_*`` references too, or exactly ``select.columns`` (any of
    ``CAPTURE_TABLE_SCHEMA``: context, payload, ``commit``); ``filter`` may name any of them
    (as stored)."""
    select = Selection.of(select, where)
    if select.columns is None:  # (a filter may still name any column: context, payload)
        defaults = [*READING_SCHEMA.names, *(PAYLOAD_SCHEMA.names if payloads else ())]
        select = replace(select, columns=defaults)
    files = capture_files_read(
        store, name, select.sources, start=select.start, until=select.until, as_of=as_of
    )
    return _read(store, files, layout.CAPTURE_TABLE_SCHEMA, select, CAPTURE_KEYS, filter=filter)


def read_view(
    store: Store,
    name: str,
    select: Selection | None = None,
    *,
    final_only: bool = False,
    as_of: AsOf = None,
    **where: Unpack[Where],
) -> pa.Table:
    """A view's rows — final, and the provisional rows of windows still open (``final``
    false) — that ``select`` (or the ``where`` keywords) picks, its times bounding
    ``window_start``; sorted by series and window."""
    select = Selection.of(select, where)
    doc = view_doc_as_of(store, name, as_of)
    schema = layout.view_schema(doc["definition"]["aggregates"])
    files = view_files_read(store, name, select.sources, doc, as_of=as_of)
    return _read(
        store, files, schema, select, VIEW_KEYS, time_column="window_start", final_only=final_only
    )


def view_doc_as_of(store: Store, name: str, as_of: AsOf) -> dict[str, Any]:
    """A view's definition document as of ``as_of`` (the latest: None) — of a view dropped
    since, too (``views drop``: time travel reads it until a vacuum)."""
    latest = tables.snapshot(store, layout.view_dir(name))
    if as_of is None or latest is None:
        return read_view_doc(store, name)  # (raises: no such view, with those there are)
    snap = version(store, latest.table, latest.description.get("capture"), as_of)
    if snap is None:
        raise StoreError(f"view {name!r} did not exist then (--as-of {as_of})")
    head = view_head(store, name, version=snap.version)
    if head is not None and head.doc:
        return head.doc
    return read_view_doc(store, name)


def read_late(
    store: Store,
    view: str,
    select: Selection | None = None,
    *,
    run: str | None = None,
    trace_ids: Sequence[str] | None = None,
    as_of: AsOf = None,
    **where: Unpack[Where],
) -> pa.Table:
    """Late readings of a view (every run, or one) that ``select`` (or the ``where`` keywords)
    picks: the reading, its ``trace_id``, ``view``, ``reason``, ``run``; ``trace_ids`` keeps
    those of these trace ids."""
    files = late_files(store, view, run, as_of=as_of)
    expr = _all([trace_filter(trace_ids), None if run is None else pc.field("run") == run])
    keys = ("run", *CAPTURE_KEYS)
    return _read(store, files, layout.LATE_SCHEMA, Selection.of(select, where), keys, filter=expr)


REASONS = (
    # a record's fields (connectors.formats.checks) and what its text was (sources.files)
    *("bad_id", "bad_time", "bad_value", "bad_seq", "missing_field", "bad_schema"),
    *("bad_context", "malformed", "conflict", "bad_payload", "oversize"),
    # payloads in chunks (connectors.payloads.chunks)
    *("chunk_expired", "chunk_overflow", "chunk_invalid", "chunk_conflict", "chunk_inconsistent"),
    # Bluesky documents and the files they name (connectors.sources.bluesky)
    *("invalid_document", "unknown_descriptor", "no_start", "not_a_document"),
    *("unsupported_external", "missing_file", "index_out_of_range", "bad_reference"),
)
"""The reason codes a dead letter may have (README, Guarantees)."""


def check_reason(store: Store, reason: str | None) -> None:
    """``ConfigError`` for a reason code that is none (with the codes, and the one meant):
    a filter on it would match nothing and hide every dead letter."""
    if reason is None or reason in REASONS:
        return
    stored = scan(store, deadletter_files(store), layout.DEADLETTER_SCHEMA, columns=["reason"])
    present = set(pc.unique(stored.column("reason")).to_pylist())
    if reason in present:  # (a code newer than this list)
        return
    codes = sorted({*REASONS, *present})
    meant = [c for c in codes if reason in c] or difflib.get_close_matches(reason, codes, n=2)
    hint = f" (did you mean {' or '.join(meant)}?)" if 0 < len(meant) <= 3 else ""
    raise ConfigError(f"no reason code {reason!r}{hint}; reason codes: {', '.join(codes)}")


def deadletter_captures(store: Store) -> dict[str, str]:
    """The capture of each run that has dead letters: the one the run's commit of the
    dead-letter table names (its application id; the commit names the run too). Dead letters
    a migration from layout 1 or 2 brought in, in one commit of no run, are their run's
    capture's: the capture whose commit log holds the run."""
    out: dict[str, str] = {}
    migrated = False
    for entry in tables.entries(store, layout.DEADLETTER_DIR):
        doc = entry.get("obsflow") or {}
        if "run" in doc and "app" in doc:
            out.setdefault(str(doc["run"]), str(doc["app"]))
        elif "columns_added" not in doc:  # (a schema's commit names no run)
            migrated = True
    if migrated:
        for capture in list_captures(store):
            for commit in read_log(store, capture):
                out.setdefault(commit.run, capture)
    return out


def read_deadletters(
    store: Store,
    *,
    run: str | None = None,
    reason: str | None = None,
    capture: str | None = None,
    unresolved: bool = False,
    trace_ids: Sequence[str] | None = None,
    as_of: AsOf = None,
) -> pa.Table:
    """Dead letters of every run (or one, or those of ``capture``'s runs:
    ``deadletter_captures``), optionally of one reason (``check_reason``) or of some trace
    ids, sorted by run, origin and record; with ``unresolved`` only those no retry has
    captured since. ``as_of`` a commit number needs ``capture``."""
    check_reason(store, reason)
    files = deadletter_files(store, run, as_of=as_of, capture=capture)
    if capture is not None:
        owners = deadletter_captures(store)
        mine = {r for r, c in owners.items() if c == capture}
        files = [f for f in files if _log_run(f) in mine]
    expr = _all(
        [
            pc.field("reason") == reason if reason else None,
            trace_filter(trace_ids),
            None if run is None else pc.field("run") == run,
        ]
    )
    table = scan(store, files, layout.DEADLETTER_SCHEMA, filter=expr)
    if unresolved:
        table = drop_resolved(store, table)
    return _select(table, None, ("run", "origin", "row"))


def drop_resolved(store: Store, dead: pa.Table) -> pa.Table:
    """The dead letters of ``dead`` that no retry has captured since."""
    done = read_resolved(store) if dead.num_rows else None
    if done is None or not done.num_rows:
        return dead
    keys = ["run", "origin", "row"]
    return _select(dead.join(done.select(keys), keys, join_type="left anti"), None, keys)


def _log_run(file: FileEntry) -> str:
    """The run of a record log's file (``<table>/<run>/part-...``)."""
    return file.path.rsplit("/", 2)[-2]


def _run_files(files: list[FileEntry], table: str, run: str | None) -> list[FileEntry]:
    """A log table's files of one run (they sit in the run's folder), or all."""
    if run is None:
        return files
    prefix = f"{table}/{run}/"
    return [f for f in files if f.path.startswith(prefix)]


def late_files(
    store: Store, view: str, run: str | None = None, *, as_of: AsOf = None
) -> list[FileEntry]:
    """The files of a view's late readings (of every run, or one)."""
    table = layout.late_dir(view)
    capture = None
    if as_of is not None and not isinstance(as_of, datetime):
        capture = read_view_doc(store, view).get("capture")
    snap = version(store, table, capture, as_of)
    return _run_files(_pick(snap, None), table, run)


def deadletter_files(
    store: Store, run: str | None = None, *, as_of: AsOf = None, capture: str | None = None
) -> list[FileEntry]:
    """The dead-letter files (of every run, or one)."""
    snap = version(store, layout.DEADLETTER_DIR, capture, as_of)
    return _run_files(_pick(snap, None), layout.DEADLETTER_DIR, run)


def read_resolved(store: Store) -> pa.Table:
    """Every dead letter a retry captured, with the run that did (``RESOLVED_SCHEMA``)."""
    snap = tables.snapshot(store, layout.RESOLVED_DIR)
    return scan(store, _pick(snap, None), layout.RESOLVED_SCHEMA)


def first_deadletters(store: Store, run: str) -> pa.Table:
    """The dead letters of a run's first file: a sample of its reasons, without reading
    every rejected record of a large input."""
    files = deadletter_files(store, run)  # (sorted)
    return scan(store, files[:1], layout.DEADLETTER_SCHEMA)


def count_by(table: pa.Table, keys: Sequence[str], name: str = "records") -> pa.Table:
    """Rows per distinct ``keys``, sorted."""
    return (
        table.group_by(list(keys))
        .aggregate([(keys[0], "count")])
        .rename_columns([*keys, name])
        .sort_by([(k, "ascending") for k in keys])
    )


def run_summaries(store: Store) -> list[dict[str, Any]]:
    """Every run's summary, in order of run id."""
    return [
        store.read_json(f"runs/{n}")
        for n in store.listdir("runs")
        if n.endswith(".json") and not n.startswith((".", "_"))
    ]


def trace_filter(trace_ids: Sequence[str] | None) -> ds.Expression | None:
    """Rows of these trace ids (None: no restriction)."""
    return None if trace_ids is None else pc.field(TRACE).isin(list(trace_ids))


def _list(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else list(values)


# -- the same reads a page at a time (``pages``: the web app's row endpoints) -----------------


def paged_capture(
    store: Store, name: str, select: Selection, *, filter: ds.Expression | None = None
) -> Paged:
    """``read_capture(store, name, select, filter=filter)``, read a page at a time."""
    if select.columns is None:
        select = replace(select, columns=list(READING_SCHEMA.names))
    schema = layout.CAPTURE_TABLE_SCHEMA
    _columns(schema, select.columns, CAPTURE_KEYS)  # (an unknown column: the error now)
    parts = _partitions(store, name, _list(select.sources))
    return Paged(
        layout.capture_dir(name),
        schema,
        CAPTURE_KEYS,
        lambda snap: _pick(snap, parts, select.start, select.until),
        select.columns,
        _all([row_filter(select), filter]),
    )


def paged_view(store: Store, name: str, select: Selection) -> Paged:
    """``read_view(store, name, select)``, read a page at a time."""
    doc = read_view_doc(store, name)
    schema = layout.view_schema(doc["definition"]["aggregates"])
    _columns(schema, select.columns, VIEW_KEYS)
    parts = _partitions(store, doc.get("capture"), _list(select.sources))
    return Paged(
        layout.view_dir(name),
        schema,
        VIEW_KEYS,
        lambda snap: _pick(snap, parts),
        select.columns,
        row_filter(select, "window_start"),
    )


def paged_late(
    store: Store, view: str, select: Selection, *, trace_ids: Sequence[str] | None = None
) -> Paged:
    """``read_late(store, view, select, trace_ids=trace_ids)``, read a page at a time."""
    table = layout.late_dir(view)
    return Paged(
        table,
        layout.LATE_SCHEMA,
        ("run", *CAPTURE_KEYS),
        lambda snap: _pick(snap, None),
        select.columns,
        _all([row_filter(select), trace_filter(trace_ids)]),
    )


def paged_deadletters(
    store: Store,
    *,
    run: str | None = None,
    reason: str | None = None,
    trace_ids: Sequence[str] | None = None,
) -> Paged:
    """``read_deadletters(store, run=run, reason=reason, trace_ids=trace_ids)``, read a page
    at a time."""
    check_reason(store, reason)
    table = layout.DEADLETTER_DIR
    return Paged(
        table,
        layout.DEADLETTER_SCHEMA,
        ("run", "origin", "row"),
        lambda snap: _run_files(_pick(snap, None), table, run),
        None,
        _all(
            [
                pc.field("reason") == reason if reason else None,
                trace_filter(trace_ids),
                None if run is None else pc.field("run") == run,
            ]
        ),
    )
