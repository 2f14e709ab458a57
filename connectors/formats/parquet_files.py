"""Parquet files: read in batches of about ``batch_rows`` rows, written whole."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

MAX_BATCH_BYTES = 64 << 20  # Parquet batches hold about this many bytes at most (payload rows)


def read(
    f: BinaryIO, batch_rows: int, delimiter: str | None = None
) -> Iterator[tuple[pa.Table, list[tuple[int, str, str]]]]:
    """A Parquet file as tables of at most ``batch_rows`` rows (fewer when rows are wide);
    the records of a row group whose pages cannot be read are malformed (``_unread``)."""
    # pre_buffer=False: stream row groups instead of buffering the whole file in memory.
    # Text as dictionary arrays: ids repeat, and come out of the file's own dictionary pages
    # without a string per row (``schema.normalize`` decodes the other text columns).
    md = pq.read_metadata(f)
    text = [
        c.name
        for c in md.schema.to_arrow_schema()
        if pa.types.is_string(c.type) or pa.types.is_large_string(c.type)  # (pandas 3's)
    ]
    pf = pq.ParquetFile(f, pre_buffer=False, read_dictionary=text, metadata=md)
    raw_bytes = sum(md.row_group(g).total_byte_size for g in range(md.num_row_groups))
    if md.num_rows and raw_bytes > MAX_BATCH_BYTES:  # wide rows (payloads): fewer per batch
        batch_rows = max(1, min(batch_rows, MAX_BATCH_BYTES * md.num_rows // raw_bytes))
    # (Read so, a batch ends at each row group: gather them up to ``batch_rows``.)
    held: list[pa.RecordBatch] = []
    rows = start = 0
    for group in range(md.num_row_groups):
        size, done = md.row_group(group).num_rows, 0
        try:
            for rb in pf.iter_batches(batch_size=batch_rows, row_groups=[group]):
                if held and rows + rb.num_rows > batch_rows:
                    yield pa.Table.from_batches(held), []
                    held, rows = [], 0
                held.append(rb)
                rows += rb.num_rows
                done += rb.num_rows
        except (OSError, pa.ArrowException) as exc:  # (corrupt pages under an intact footer)
            if held:
                yield pa.Table.from_batches(held), []
                held, rows = [], 0
            yield _unread(pf, group, start + done, size - done, exc)
        start += size
    if held:
        yield pa.Table.from_batches(held), []


def _unread(
    pf: pq.ParquetFile, group: int, first: int, n: int, exc: Exception
) -> tuple[pa.Table, list[tuple[int, str, str]]]:
    """The records of a row group that cannot be read: a malformed dead letter each (the
    footer says how many), and the rest of the file is read."""
    why = " ".join(str(exc).split())[:300]
    message = f"row group {group} cannot be read ({why})"
    bad = [(0, f"record {first + i} (0-based): {message}", "") for i in range(n)]
    return pf.schema_arrow.empty_table(), bad


def unreadable(f: BinaryIO) -> str | None:
    """Why ``f`` is no Parquet file at all — no footer Arrow can read: empty, cut short by a
    copy, another format under a Parquet name — or None. (Its pages are read only by the run.)"""
    try:
        pq.read_metadata(f)
    except (pa.ArrowInvalid, OSError) as exc:  # (a footer that fails to decode: OSError)
        return str(exc)
    return None


def write(table: pa.Table, out: BinaryIO) -> None:
    pq.write_table(table, out)
