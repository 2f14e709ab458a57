"""Reading a table a page at a time: ``read_page`` returns at most ``limit`` rows from a
``Cursor`` on, and the cursor of the rest.

A table version (a Delta snapshot) never changes, so a position in it is stable: a cursor
names the version, a file of it (its index in the version's files, sorted by path) and a row
of that file. A page reads from there, in stored order: the files the selection cannot skip
(the reads' own pruning: partitions, time statistics), in each the row groups whose statistics
may hold a match, in batches, and stops as soon as it has ``limit`` rows — it never reads the
rest of the table. Pages in turn hold every row of the selection exactly once, however long
the client takes between them and whatever commits land meanwhile (they go to later versions).
A page's rows are sorted by the table's keys (a response that holds the whole selection is
what ``reads`` returns); pages are in stored order, not key order, one after another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from obsflow.connectors.errors import ConfigError
from obsflow.connectors.storage import layout, tables
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import FileEntry, Snapshot

KEEP = "__keep"  # the projected column that says whether a row matches the filter
BATCH_ROWS = 1 << 16  # rows decoded at a time: a page of 1 row decodes no more than this


@dataclass(frozen=True)
class Cursor:
    """A position in one version of a table: row ``row`` of its file number ``file``."""

    version: int
    file: int
    row: int

    def text(self) -> str:
        return f"{self.version}.{self.file}.{self.row}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """A cursor from its text; a ConfigError saying what to do when it is none."""
        try:
            version, file, row = (int(p) for p in text.split("."))
        except ValueError:
            raise ConfigError(
                f"cursor={text[:40]!r} is not a cursor: use the next link a response gave"
            ) from None
        if min(version, file, row) < 0:
            raise ConfigError(f"cursor={text!r} is not a cursor: use the next link a response gave")
        return cls(version, file, row)


@dataclass(frozen=True)
class Paged:
    """What a page read reads: the table (store-relative), the schema its rows have in memory,
    the columns returned (None: all), the keys a page is sorted by, a filter on stored
    columns, and which files of a version a read opens (the read's own pruning)."""

    table: str
    schema: pa.Schema
    keys: Sequence[str]
    pick: Callable[[Snapshot], list[FileEntry]]
    columns: Sequence[str] | None = None
    filter: ds.Expression | None = None


@dataclass(frozen=True)
class Page:
    rows: pa.Table
    next: Cursor | None  # None: the page ends the selection


def read_page(store: Store, paged: Paged, cursor: Cursor | None, limit: int) -> Page:
    """At most ``limit`` rows of ``paged`` from ``cursor`` (None: the start of the latest
    version), sorted by its keys, and the cursor of the next page."""
    snap = version_of(store, paged.table, cursor)
    empty = _empty(paged)
    if snap is None:
        return Page(empty, None)
    start = cursor or Cursor(snap.version, 0, 0)
    if start.file > len(snap.files):
        raise ConfigError(f"cursor={start.text()} is past the table's end: start again without it")
    index = {f.path: i for i, f in enumerate(snap.files)}
    files = sorted((index[f.path], f) for f in paged.pick(snap) if index[f.path] >= start.file)
    batches: list[pa.Table] = []
    got = 0
    for i, f in files:
        if got >= limit:
            return Page(_sorted(batches, empty, paged), Cursor(snap.version, i, 0))
        first = start.row if i == start.file else 0
        for rows, end in _file_rows(store, f, first, paged, limit - got):
            batches.append(rows)
            got += rows.num_rows
            if got >= limit and end < f.rows:
                return Page(_sorted(batches, empty, paged), Cursor(snap.version, i, end))
    return Page(_sorted(batches, empty, paged), None)


def version_of(store: Store, table: str, cursor: Cursor | None) -> Snapshot | None:
    """The version a page reads: the cursor's, else the latest (None: no table yet)."""
    if cursor is None:
        return tables.snapshot(store, table)
    latest = tables.snapshot(store, table)
    if latest is None or cursor.version > latest.version:
        raise ConfigError(f"cursor={cursor.text()} is of no version of this table: start again")
    try:
        return tables.snapshot(store, table, as_of=cursor.version)
    except (OSError, ValueError) as exc:  # (its log or files vacuumed since)
        raise ConfigError(
            f"cursor={cursor.text()}: version {cursor.version} is no longer readable; start again"
        ) from exc


def _file_rows(
    store: Store, file: FileEntry, first: int, paged: Paged, need: int
) -> Iterator[tuple[pa.Table, int]]:
    """The matching rows of ``file`` from its row ``first`` on, a batch at a time (at most
    ``need`` in all), each with the row of the file after it."""
    stored = layout.stored_schema(paged.schema)
    fragment = ds.ParquetFileFormat().make_fragment(store.path(file.path), store.arrow_fs)
    fragment.ensure_complete_metadata()
    starts: dict[int, int] = {}
    at = 0
    for rg in fragment.row_groups:  # (the row groups in file order: their first rows)
        starts[rg.id] = at
        at += rg.num_rows
    maybe = {
        g.row_groups[0].id
        for g in fragment.split_by_row_group(paged.filter, schema=stored)  # (by statistics)
    }
    wanted = layout.stored_columns(paged.columns, paged.schema) or stored.names
    projection = {c: pc.field(c) for c in wanted}
    if paged.filter is not None:
        projection[KEEP] = paged.filter
    for rg in fragment.row_groups:
        lo, hi = starts[rg.id], starts[rg.id] + rg.num_rows
        if hi <= first or rg.id not in maybe:
            continue
        group = fragment.subset(row_group_ids=[rg.id])
        at = lo
        batch_rows = min(BATCH_ROWS, max(need, 1024))
        # (no read-ahead: a page stops early, and what is decoded ahead is memory held)
        scan = group.to_batches(
            schema=stored,
            columns=projection,
            batch_size=batch_rows,
            batch_readahead=0,
            fragment_readahead=0,
        )
        for batch in scan:
            n = batch.num_rows
            table = pa.Table.from_batches([batch])
            skip = max(first - at, 0)
            at += n
            if skip >= n:
                continue
            table = table.slice(skip)
            rows = pa.array(
                np.arange(at - n + skip, at, dtype=np.int64)
            )  # (each row's row in the file)
            if paged.filter is not None:
                keep = pc.fill_null(table.column(KEEP), False)
                table, rows = table.filter(keep).drop_columns([KEEP]), rows.filter(keep)
            if table.num_rows >= need:
                yield table.slice(0, need), int(rows[need - 1].as_py()) + 1
                return
            if table.num_rows:
                need -= table.num_rows
                yield table, at


def _sorted(batches: list[pa.Table], empty: pa.Table, paged: Paged) -> pa.Table:
    """A page's rows as the reads return them: times exact, sorted by the keys, the columns
    asked for."""
    stored = layout.stored_schema(paged.schema)
    wanted = layout.stored_columns(paged.columns, paged.schema) or stored.names
    if not batches:
        return empty
    table = layout.loaded(pa.concat_tables(batches).select(wanted), paged.schema)
    keys = [k for k in paged.keys if k in table.column_names]
    if keys:
        table = table.sort_by([(k, "ascending") for k in keys])
    return table if paged.columns is None else table.select(list(paged.columns))


def _empty(paged: Paged) -> pa.Table:
    table = paged.schema.empty_table()
    return table if paged.columns is None else table.select(list(paged.columns))
