"""Where everything lives in a store: every table, path, object name and stored schema.

Each data folder is a Delta Lake table (``connectors.storage.tables``): deltalake, Polars, DuckDB,
Spark or Trino read it as one; obsflow's own bookkeeping lives under ``_obsflow/``::

    captures/<capture>/                       capture table (CAPTURE_SCHEMA as stored)
        part-0003/<run>-<chunk>.parquet         a run's readings of partition 3
    views/<view>/                             view table (view_schema as stored)
        part-0003/<segment>-<run>.parquet       a partition's rows of one stretch of window starts
    late/<view>/<run>/part-0003-<chunk>.parquet     late readings (LATE_SCHEMA), a table per view
    deadletter/<run>/part-0000-<chunk>.parquet      rejected records (DEADLETTER_SCHEMA), one table
    documents/<capture>/<run>/part-0000-<chunk>.parquet   Bluesky documents, a table per capture
    payloads/ab/cd/<sha256>                   payload objects
    runs/<run>.json                           run summaries
    _obsflow/layout.json                      {"layout": 3}
    _obsflow/resolved/<run>/part-0000-000000.parquet   table: dead letters a retry captured
    _obsflow/captures/<capture>/intents/<run>.json     a run's commit, until it is complete
    _obsflow/captures/<capture>/state/<run>/part-0003.json          next seq numbers, dedup
    _obsflow/captures/<capture>/state/<run>/part-0003.dedup*.parquet   dedup key ranges
    _obsflow/captures/<capture>/inputs/<sha256>.json   inputs committed runs captured
    _obsflow/views/<view>/state/<run>/part-0003.<table>.parquet   open windows, watermarks
    _obsflow/cluster/<run>.json               a cluster run's prepared options

Files are written into a table's folder under names no other run uses and become part of the
table when a commit adds them; a plain ``**/*.parquet`` glob also sees files no commit added
yet (a run under way, a crashed one) and files later commits removed (until ``vacuum``).

Times are exact to the nanosecond: every time column ``t`` is stored twice, as ``t`` — a
microsecond timestamp (Delta's timestamp type) for other tools — and as ``t_ns``, int64
nanoseconds since the epoch, which obsflow reads (``stored``/``loaded`` convert).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.formats.schema import (
    CONTEXT_SCHEMA,
    DOCUMENT_SCHEMA,
    READING_SCHEMA,
    REJECT_SCHEMA,
    TIME_TYPE,
    TRACE,
)
from obsflow.connectors.ids import check_name
from obsflow.connectors.payloads.format import PAYLOAD_SCHEMA

LAYOUT = 3
META = "_obsflow"
LAYOUT_DOC = f"{META}/layout.json"
NS = "_ns"  # suffix of a time column's exact twin
STORED_TIME = pa.timestamp("us", tz="UTC")

CAPTURE_FILE_RE = re.compile(
    r"^part-(?P<part>\d{4})/(?P<run>[A-Za-z0-9_-]+)-(?P<chunk>\d{6})\.parquet$"
)
VIEW_FILE_RE = re.compile(
    r"^part-(?P<part>\d{4})/(?P<segment>[0-9T]+Z)-(?P<run>[A-Za-z0-9_-]+)\.parquet$"
)
LOG_FILE_RE = re.compile(
    r"^(?P<run>[A-Za-z0-9_-]+)/part-(?P<part>\d{4})-(?P<chunk>\d{6})\.parquet$"
)

# -- schemas (in memory; ``stored`` gives what a table holds) --------------------------------

COMMIT = "commit"
CAPTURE_SCHEMA = pa.schema([*READING_SCHEMA, *PAYLOAD_SCHEMA, *CONTEXT_SCHEMA])
"""Captured readings: the reading schema plus payload references (null without a payload) and
context (null without)."""
CAPTURE_TABLE_SCHEMA = CAPTURE_SCHEMA.append(pa.field(COMMIT, pa.int64(), nullable=False))
"""A capture table's rows: captured readings and the number of the commit that captured each
(replay's order, and the run behind a reading)."""


def with_commit(rows: pa.Table, n: int) -> pa.Table:
    """``rows`` with the column ``commit`` (never null) saying commit ``n`` captured them."""
    return rows.append_column(
        CAPTURE_TABLE_SCHEMA.field(COMMIT), pa.repeat(pa.scalar(n, pa.int64()), rows.num_rows)
    )


LINEAGE = ("capture", "view_hash", "run")
LATE_SCHEMA = pa.schema(
    [*READING_SCHEMA, *(pa.field(c, pa.string()) for c in (TRACE, "view", "reason", "run"))]
)
DEADLETTER_SCHEMA = REJECT_SCHEMA.append(pa.field("run", pa.string())).append(
    pa.field(TRACE, pa.string())
)
"""Dead letters: the rejected record (its raw form holds all of it) with the run, and the
record's trace id, when it has one, in a column of its own."""
RESOLVED_SCHEMA = pa.schema(
    [
        pa.field("run", pa.string()),
        pa.field("origin", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("resolved_by", pa.string()),
    ]
)
"""A dead letter (its run, origin and row) and the retry run that captured it."""
DOCUMENT_LOG_SCHEMA = DOCUMENT_SCHEMA.append(pa.field("run", pa.string()))

STATS = (
    "source",
    "channel",
    "seq",
    "time",
    "time_ns",
    COMMIT,
    "window_start",
    "window_start_ns",
    "window_end",
    "window_end_ns",
    "run",
    "reason",
    "view",
    "uid",
    "run_uid",
)
"""Columns whose per-file minimum and maximum a commit records (readers prune files by them)."""


def view_schema(aggregates: Sequence[str]) -> pa.Schema:
    """Columns of a view's rows: window keys, one column per aggregate, ``final``, lineage."""
    return pa.schema(
        [
            pa.field("source", pa.string()),
            pa.field("channel", pa.string()),
            pa.field("window_start", TIME_TYPE),
            pa.field("window_end", TIME_TYPE),
            *(pa.field(a, pa.int64() if a == "count" else pa.float64()) for a in aggregates),
            pa.field("first_seq", pa.int64()),  # the seq range of the readings summarized
            pa.field("last_seq", pa.int64()),
            pa.field("final", pa.bool_()),
            *(pa.field(c, pa.string()) for c in LINEAGE),
        ]
    )


def _is_time(kind: pa.DataType) -> bool:
    return bool(pa.types.is_timestamp(kind) and kind.unit == "ns")


def stored_schema(schema: pa.Schema) -> pa.Schema:
    """The schema a table holds for rows of ``schema``: each nanosecond time column ``t`` as a
    microsecond ``t`` plus int64 ``t_ns``."""
    fields: list[pa.Field] = []
    for f in schema:
        if pa.types.is_dictionary(f.type):
            f = f.with_type(f.type.value_type)
        if _is_time(f.type):
            fields += [
                pa.field(f.name, STORED_TIME, nullable=f.nullable),
                pa.field(f.name + NS, pa.int64(), nullable=f.nullable),
            ]
        else:
            fields.append(f)
    return pa.schema(fields)


def stored(table: pa.Table) -> pa.Table:
    """Rows as a table stores them (see ``stored_schema``: columns that hold no null keep
    saying so, which makes them quicker to read); dictionary ids as plain text."""
    columns, names = [], []
    for f, col in zip(table.schema, table.columns, strict=True):
        if pa.types.is_dictionary(f.type):
            col = col.cast(f.type.value_type)
        if _is_time(f.type):
            ns = col.cast(pa.int64())
            # floor to the microsecond (a truncation would round times before 1970 up)
            us = pc.divide(pc.if_else(pc.less(ns, 0), pc.subtract(ns, 999), ns), 1000)
            columns += [us.cast(STORED_TIME), ns]
            names += [f.name, f.name + NS]
        else:
            columns.append(col)
            names.append(f.name)
    return pa.table(columns, names=names).cast(stored_schema(table.schema))


def loaded(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Stored rows as obsflow works with them (rows of ``schema``): each time column ``t``
    again exact, from ``t_ns`` (the microsecond ``t`` is dropped)."""
    times = {f.name for f in schema if _is_time(f.type)}
    columns, names = [], []
    for name, col in zip(table.column_names, table.columns, strict=True):
        if name in times:
            continue
        if name.endswith(NS) and name[: -len(NS)] in times:
            name, col = name[: -len(NS)], col.cast(TIME_TYPE)
        columns.append(col)
        names.append(name)
    return pa.table(columns, names=names) if columns else table.select([])


def stored_columns(columns: Sequence[str] | None, schema: pa.Schema) -> list[str] | None:
    """The stored columns to read for in-memory ``columns`` (a time column reads its twin)."""
    if columns is None:
        return None
    out: list[str] = []
    for c in columns:
        if c in schema.names and _is_time(schema.field(c).type):
            out.append(c + NS)
        else:
            out.append(c)
    return out


# -- tables ----------------------------------------------------------------------------------

# What a name in a path is, for ``check_name``'s messages.
CAPTURE_NAME, VIEW_NAME, RUN_ID = "capture name", "view name", "run id"


def named(folder: str, name: str, kind: str, suffix: str = "") -> str:
    """``folder/name`` plus ``suffix``, once ``name`` is checked to be a valid ``kind`` (a
    single path segment: no ``/``, no ``..``)."""
    return f"{folder}/{check_name(name, kind=kind)}{suffix}"


def part_name(part: int) -> str:
    return f"part-{part:04d}"


def capture_dir(capture: str) -> str:
    """The capture's table."""
    return named("captures", capture, CAPTURE_NAME)


def capture_part_dir(capture: str, part: int) -> str:
    return f"{capture_dir(capture)}/{part_name(part)}"


def capture_file(capture: str, part: int, run: str, chunk: int) -> str:
    return named(capture_part_dir(capture, part), run, RUN_ID, f"-{chunk:06d}.parquet")


def view_dir(view: str) -> str:
    """The view's table."""
    return named("views", view, VIEW_NAME)


def view_part_dir(view: str, part: int) -> str:
    return f"{view_dir(view)}/{part_name(part)}"


def segment_name(start_ns: int) -> str:
    """Name of the stretch of window starts beginning at ``start_ns`` (UTC)."""
    text = np.datetime_as_string(np.datetime64(int(start_ns), "ns"), unit="s")
    return text.replace("-", "").replace(":", "") + "Z"


def view_file(view: str, part: int, start_ns: int, run: str) -> str:
    """A run's file of one view segment (the rows of windows starting in that stretch)."""
    name = f"{segment_name(start_ns)}-{check_name(run, kind=RUN_ID)}.parquet"
    return f"{view_part_dir(view, part)}/{name}"


def late_dir(view: str) -> str:
    """The table of a view's late readings."""
    return named("late", view, VIEW_NAME)


def documents_dir(capture: str) -> str:
    """The table of Bluesky run and asset documents stored with a capture."""
    return named("documents", capture, CAPTURE_NAME)


DEADLETTER_DIR = "deadletter"
RESOLVED_DIR = f"{META}/resolved"


def log_file(table: str, run: str, part: int, chunk: int) -> str:
    """A chunk of an append-only record log (late readings, dead letters) of one run."""
    return f"{named(table, run, RUN_ID)}/{part_name(part)}-{chunk:06d}.parquet"


def run_summary(run: str) -> str:
    return named("runs", run, RUN_ID, ".json")


def archive_manifest(capture: str, run: str) -> str:
    """In an archive store: what an archive run moved there, from which store."""
    return named(named(f"{META}/archives", capture, CAPTURE_NAME), run, RUN_ID, ".json")


# -- bookkeeping ----------------------------------------------------------------------------


def capture_meta_dir(capture: str) -> str:
    return f"{META}/{capture_dir(capture)}"


def intents_dir(capture: str) -> str:
    return f"{capture_meta_dir(capture)}/intents"


def intent_doc(capture: str, run: str) -> str:
    return named(intents_dir(capture), run, RUN_ID, ".json")


def _state_dir(meta_dir: str, run: str | None) -> str:
    """A capture's or view's ``state`` folder, or the part of it one run wrote."""
    folder = f"{meta_dir}/state"
    return folder if run is None else named(folder, run, RUN_ID)


def capture_state(capture: str, run: str, part: int, suffix: str) -> str:
    """Per-partition bookkeeping a run left: ``.json`` (next seq, dedup), ``.dedup-ranges.parquet``
    (one key range per key space); before ranges, ``.dedup.parquet`` (a whole dedup memory) and
    ``.dedup-delta.parquet`` (identities a run added), still read."""
    return f"{capture_state_dir(capture, run)}/{part_name(part)}{suffix}"


def capture_state_dir(capture: str, run: str | None = None) -> str:
    return _state_dir(capture_meta_dir(capture), run)


def inputs_dir(capture: str) -> str:
    return f"{capture_meta_dir(capture)}/inputs"


def view_meta_dir(view: str) -> str:
    return f"{META}/{view_dir(view)}"


def view_state(view: str, run: str, part: int, table: str) -> str:
    """One table of a view partition's window state, as ``run`` left it (``series``, ...)."""
    return f"{view_state_dir(view, run)}/{part_name(part)}.{table}.parquet"


def view_state_dir(view: str, run: str | None = None) -> str:
    return _state_dir(view_meta_dir(view), run)


def cluster_plan(run: str) -> str:
    """The options a cluster's process 0 prepared, for its other processes to run."""
    return named(f"{META}/cluster", run, RUN_ID, ".json")
