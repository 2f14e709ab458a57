"""SQL over a store with DuckDB: every capture, view, view's late readings, the dead letters
and the run summaries as a table.

Tables (names as in the store; quote a name holding ``-``: ``"capture_my-buoy"``):

- ``capture_<name>``: a capture's readings (``layout.CAPTURE_SCHEMA``);
- ``view_<name>``: a view's rows, final and provisional (``final``);
- ``late_<view>``: the readings a view set aside as late, with ``view``, ``reason``, ``run``;
- ``deadletters``: every run's rejected records, with ``reason``, ``run`` and ``resolved_by``
  (the retry run that captured the record since; null while it is open);
- ``runs``: one row per run summary (its scalar fields; nested ones as JSON text).

Each table reads exactly the files of the table version the Python reads see
(``connectors.datasets.reads``; ``as_of`` the store as it was), never a folder listing. Times are
``TIMESTAMP_NS`` in UTC, exact to the nanosecond (compare them with ``TIMESTAMP '...'`` or a
string; DuckDB wants an explicit cast for ``TIMESTAMPTZ``). Files are read where they lie; on
S3 through the store's own fsspec filesystem, registered with DuckDB, because DuckDB's
``httpfs`` extension is downloaded at first use and these machines may be offline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from obsflow.connectors.datasets.capture import list_captures
from obsflow.connectors.datasets.reads import (
    capture_files_read,
    deadletter_files,
    late_files,
    read_resolved,
    run_summaries,
    view_doc_as_of,
    view_files_read,
)
from obsflow.connectors.datasets.views import list_views
from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.storage import layout
from obsflow.connectors.storage.commits import AsOf
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import FileEntry

if TYPE_CHECKING:
    import duckdb


def _duckdb() -> Any:
    try:
        import duckdb
    except ImportError:
        raise ConfigError(
            "SQL needs DuckDB: pip install 'obsflow[sql]' (or duckdb) into this environment"
        ) from None
    return duckdb


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _files_table(
    con: duckdb.DuckDBPyConnection,
    store: Store,
    name: str,
    files: Sequence[FileEntry],
    schema: pa.Schema,
) -> None:
    """``name`` as a view over a table version's ``files``, with the columns of ``schema``
    (rows as obsflow reads them; an empty table if there are no files)."""
    if not files:
        con.register(name, schema.empty_table())
        return
    paths = ", ".join("'" + store.uri(f.path).replace("'", "''") + "'" for f in files)
    columns = []
    for f in schema:
        if pa.types.is_timestamp(f.type):  # the exact twin, as TIMESTAMP_NS
            columns.append(f"make_timestamp_ns({_quoted(f.name + layout.NS)}) AS {_quoted(f.name)}")
        elif f.name == "value":
            # A missing value is NaN in the store ("NaN and null both mean missing"); SQL's
            # missing is NULL, which count(), avg() and the like skip, as pandas skips NaN.
            columns.append("CASE WHEN isnan(value) THEN NULL ELSE value END AS value")
        else:
            columns.append(_quoted(f.name))
    # union_by_name: files written before a column existed read it as null. (Table names
    # are made of checked names, quoted; paths are the store's own, their quotes doubled.)
    con.execute(
        f"CREATE VIEW {_quoted(name)} AS SELECT {', '.join(columns)} "  # noqa: S608
        f"FROM read_parquet([{paths}], union_by_name=true)"
    )


def _runs(store: Store) -> pa.Table:
    """Run summaries as rows: scalars as they are, nested values as JSON text."""
    rows = [
        {
            k: json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v
            for k, v in d.items()
        }
        for d in run_summaries(store)
    ]
    if not rows:
        return pa.table({"run": pa.array([], pa.string())})
    columns = {}
    for key in dict.fromkeys(k for row in rows for k in row):
        values = [row.get(key) for row in rows]
        try:
            columns[key] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types across summaries
            columns[key] = pa.array([None if v is None else str(v) for v in values], pa.string())
    return pa.table(columns)


def connect(store: Store, *, as_of: AsOf = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the store's tables (see the module docstring);
    ``as_of``: the store as it was then (a time, or a commit number of its one capture)."""
    con: duckdb.DuckDBPyConnection = _duckdb().connect()
    con.execute("SET TimeZone = 'UTC'")  # times print and bucket in UTC, as everywhere else
    # DuckDB 2.0's statistics propagation, over read_parquet(union_by_name=true), takes the
    # file's "no nulls" for a column computed from it: count(value) counted the NaN readings
    # this module turns into NULL (tests/connectors/test_sql.py, query 1). Correct first.
    con.execute("SET disabled_optimizers = 'statistics_propagation'")
    if store.scheme != "file":
        con.register_filesystem(store.fs)
    captures = list_captures(store)
    capture = None
    if as_of is not None and not isinstance(as_of, datetime):
        if len(captures) != 1:
            raise ConfigError(
                f"--as-of {as_of}: a commit number is a capture's, and this store holds "
                f"{len(captures)} captures; give a time (ISO 8601) instead"
            )
        capture = captures[0]
    for name in captures:
        files = capture_files_read(store, name, None, as_of=as_of)
        _files_table(con, store, f"capture_{name}", files, layout.CAPTURE_TABLE_SCHEMA)
    for doc in list_views(store):
        name = doc["name"]
        try:
            schema = layout.view_schema(
                view_doc_as_of(store, name, as_of)["definition"]["aggregates"]
            )
        except StoreError:
            continue  # the view did not exist then
        files = view_files_read(store, name, None, doc, as_of=as_of)
        _files_table(con, store, f"view_{name}", files, schema)
        late = late_files(store, name, as_of=as_of)
        _files_table(con, store, f"late_{name}", late, layout.LATE_SCHEMA)
    dead = deadletter_files(store, as_of=as_of, capture=capture)
    _files_table(con, store, "_deadletters", dead, layout.DEADLETTER_SCHEMA)
    con.register("_resolved", read_resolved(store))
    con.execute(
        "CREATE VIEW deadletters AS SELECT d.*, r.resolved_by FROM _deadletters d "
        "LEFT JOIN _resolved r ON d.run = r.run AND d.origin = r.origin AND d.row = r.row"
    )
    con.register("runs", _runs(store))
    return con


def describe(store: Store, *, as_of: AsOf = None) -> dict[str, list[str]]:
    """Each table of the store (sorted by name) with its columns."""
    con = connect(store, as_of=as_of)
    try:
        rows = con.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE NOT starts_with(table_name, '_') ORDER BY table_name, ordinal_position"
        ).fetchall()
    finally:
        con.close()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        out.setdefault(table, []).append(column)
    return out


def query(store: Store, text: str, *, as_of: AsOf = None) -> pa.Table:
    """The result of one SQL query over the store (as it was at ``as_of``), as an Arrow
    table."""
    duckdb = _duckdb()
    con = connect(store, as_of=as_of)
    try:
        result = con.sql(text)
    except duckdb.Error as exc:
        listed = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        names = sorted({r[0] for r in listed if not r[0].startswith("_")})
        raise ConfigError(f"SQL: {exc}\n(tables: {', '.join(names)})") from None
    if result is None:  # a statement that returns nothing (CREATE, SET, ...)
        return pa.table({})
    try:
        return result.to_arrow_table()
    except duckdb.Error as exc:
        raise ConfigError(f"SQL: {exc}") from None
    finally:
        con.close()
