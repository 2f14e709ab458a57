"""Reading a store: captures, views, late readings, dead letters and run summaries as tables.

One reader per kind of data, used by the CLI and the Explorer alike. Filters on
source, channel and time (``start <= t < until``, UTC; naive times mean UTC) are pushed down to
Parquet: a source's readings and its view rows live in one capture partition, so a read
restricted to some sources opens only those partitions' objects, and pyarrow skips row groups
by their statistics and reads only the columns asked for. Every read goes through ``Store``
(retries, ``StoreError``). Results are sorted, and an empty result still has its columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from obsflow.connectors import layout
from obsflow.connectors.capture import capture_files, open_capture
from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.partitions import partitions_of
from obsflow.connectors.payload_format import PAYLOAD_SCHEMA
from obsflow.connectors.schema import READING_SCHEMA, TIME_TYPE, TRACE, to_utc
from obsflow.connectors.store import Store
from obsflow.connectors.views import read_view_doc, view_files

CAPTURE_KEYS = ("source", "channel", "time", "seq")
VIEW_KEYS = ("source", "channel", "window_start")


def _ts(value: object, what: str) -> pa.Scalar | None:
    return None if value is None else pa.scalar(to_utc(value, what).value, TIME_TYPE)


def row_filter(
    *,
    sources: Iterable[str] | None = None,
    channels: Iterable[str] | None = None,
    start: object = None,
    until: object = None,
    time_column: str = "time",
    final_only: bool = False,
) -> ds.Expression | None:
    """A pushed-down filter: series, ``start <= time_column < until``, and with
    ``final_only`` only final view rows. None when nothing is restricted."""
    parts: list[ds.Expression] = []
    if sources is not None:
        parts.append(pc.field("source").isin(list(sources)))
    if channels is not None:
        parts.append(pc.field("channel").isin(list(channels)))
    if (lo := _ts(start, "start")) is not None:
        parts.append(pc.field(time_column) >= lo)
    if (hi := _ts(until, "until")) is not None:
        parts.append(pc.field(time_column) < hi)
    if final_only:
        parts.append(pc.field("final"))
    if not parts:
        return None
    expr = parts[0]
    for p in parts[1:]:
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


def capture_files_read(store: Store, name: str, sources: Sequence[str] | None) -> list[str]:
    """The capture objects a read of ``sources`` opens: those of their partitions."""
    return capture_files(store, name, _partitions(store, name, _list(sources)))


def view_files_read(
    store: Store, name: str, sources: Sequence[str] | None, doc: dict[str, Any] | None = None
) -> list[str]:
    """The view objects a read of ``sources`` opens (``doc``: the view's, if already read)."""
    capture = (doc or read_view_doc(store, name)).get("capture")
    return view_files(store, name, _partitions(store, capture, _list(sources)))


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


def read_capture(
    store: Store,
    name: str,
    *,
    sources: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
    start: object = None,
    until: object = None,
    columns: Sequence[str] | None = None,
    payloads: bool = False,
    filter: ds.Expression | None = None,
) -> pa.Table:
    """A capture's readings, sorted by source, channel, time and seq. Columns: the reading
    fields, with ``payloads`` the ``payload_*`` references too, or exactly ``columns`` (any of
    ``CAPTURE_SCHEMA``, the context columns included); ``filter`` may name any of them."""
    schema = layout.CAPTURE_SCHEMA
    if columns is None:  # (a filter may still name any column: context, payload)
        columns = [*READING_SCHEMA.names, *(PAYLOAD_SCHEMA.names if payloads else ())]
    expr = row_filter(sources=sources, channels=channels, start=start, until=until)
    if filter is not None:
        expr = filter if expr is None else expr & filter
    for attempt in range(3):
        files = capture_files_read(store, name, sources)
        try:
            table = store.scan(
                files, schema=schema, columns=_columns(schema, columns, CAPTURE_KEYS), filter=expr
            )
            break
        except FileNotFoundError:
            # A compaction replaced objects between the listing and the read (it moves the
            # new ones in first, so a new listing finds them).
            if attempt == 2:
                raise
    return _select(table, columns, CAPTURE_KEYS)


def read_view(
    store: Store,
    name: str,
    *,
    sources: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
    start: object = None,
    until: object = None,
    columns: Sequence[str] | None = None,
    final_only: bool = False,
) -> pa.Table:
    """A view's rows — final, and the provisional rows of windows still open (``final``
    false) — windows with ``start <= window_start < until``, sorted by series and window."""
    doc = read_view_doc(store, name)
    schema = layout.view_schema(doc["definition"]["aggregates"])
    expr = row_filter(
        sources=sources,
        channels=channels,
        start=start,
        until=until,
        time_column="window_start",
        final_only=final_only,
    )
    files = view_files_read(store, name, sources, doc)
    table = store.scan(
        files, schema=schema, columns=_columns(schema, columns, VIEW_KEYS), filter=expr
    )
    return _select(table, columns, VIEW_KEYS)


def read_late(
    store: Store,
    view: str,
    *,
    run: str | None = None,
    sources: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
    start: object = None,
    until: object = None,
    trace_ids: Sequence[str] | None = None,
) -> pa.Table:
    """Late readings of a view (every run, or one): the reading, its ``trace_id``, ``view``,
    ``reason``, ``run``; ``trace_ids`` keeps those of these trace ids."""
    files = late_files(store, view, run)
    expr = _and(
        row_filter(sources=sources, channels=channels, start=start, until=until),
        trace_filter(trace_ids),
    )
    table = store.scan(files, schema=layout.LATE_SCHEMA, filter=expr)
    return _select(table, None, ("run", *CAPTURE_KEYS))


def read_deadletters(
    store: Store,
    *,
    run: str | None = None,
    reason: str | None = None,
    unresolved: bool = False,
    trace_ids: Sequence[str] | None = None,
) -> pa.Table:
    """Dead letters of every run (or one), optionally of one reason or of some trace ids,
    sorted by run, origin and record; with ``unresolved`` only those no retry has captured
    since."""
    files = deadletter_files(store, run)
    expr = _and(pc.field("reason") == reason if reason else None, trace_filter(trace_ids))
    table = store.scan(files, schema=layout.DEADLETTER_SCHEMA, filter=expr)
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


def late_files(store: Store, view: str, run: str | None = None) -> list[str]:
    """The objects of a view's late readings (of every run, or one)."""
    folder = layout.late_dir(view) if run is None else f"{layout.late_dir(view)}/{run}"
    return [f for f in store.walk_files(folder) if layout.visible(f)]


def deadletter_files(store: Store, run: str | None = None) -> list[str]:
    """The dead-letter objects (of every run, or one)."""
    return [f for f in store.walk_files(layout.deadletter_dir(run)) if layout.visible(f)]


def read_resolved(store: Store) -> pa.Table:
    """Every dead letter a retry captured, with the run that did (``RESOLVED_SCHEMA``)."""
    folder = layout.deadletter_resolved()
    files = [f for f in store.walk_files(folder) if f.endswith(".parquet")]
    return store.scan(files, schema=layout.RESOLVED_SCHEMA)


def first_deadletters(store: Store, run: str) -> pa.Table:
    """The dead letters of a run's first object: a sample of its reasons, without reading
    every rejected record of a large input."""
    files = deadletter_files(store, run)  # (sorted)
    return store.scan(files[:1], schema=layout.DEADLETTER_SCHEMA)


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


def _and(a: ds.Expression | None, b: ds.Expression | None) -> ds.Expression | None:
    return b if a is None else a if b is None else a & b


def _list(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else list(values)
