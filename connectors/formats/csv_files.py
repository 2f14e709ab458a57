"""CSV files: read as text columns (the normalizer parses each value), written with list
cells as JSON text."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv


def sniff_delimiter(header: bytes) -> str:
    """The delimiter of a CSV file from its header line: the most frequent of comma,
    semicolon, tab and bar (comma when none or a tie): European and instrument exports often
    use ``;`` or tabs."""
    counts = {d: header.count(d.encode()) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def read(
    f: BinaryIO, batch_rows: int, delimiter: str | None = None
) -> Iterator[tuple[pa.Table, list[tuple[int, str, str]]]]:
    """A CSV file as tables of text columns, about ``batch_rows`` rows each, with its rows of
    the wrong number of fields as (line, why, text)."""
    header = f.readline()
    delimiter = delimiter or sniff_delimiter(header)
    parse = pacsv.ParseOptions(delimiter=delimiter)
    names = (
        pacsv.read_csv(io.BytesIO(header), parse_options=parse).schema.names
        if header.strip()
        else []
    )
    f.seek(0)
    bad: list[tuple[int, str, str]] = []

    def on_invalid(row: Any) -> str:
        bad.append(
            (
                int(row.number or -1),
                f"expected {row.expected_columns} fields, found {row.actual_columns}",
                str(row.text)[:4096],
            )
        )
        return "skip"

    reader = pacsv.open_csv(
        f,
        read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 22),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
        # Every column as text: the normalizer parses per row, so one odd value cannot
        # make the reader fail or change the type of the whole column.
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, strings_can_be_null=True
        ),
    )
    pending: list[pa.RecordBatch] = []
    rows = 0
    for rb in reader:
        pending.append(rb)
        rows += rb.num_rows
        if rows >= batch_rows:
            yield pa.Table.from_batches(pending), bad
            pending, rows, bad = [], 0, []
    if pending or bad:
        yield (pa.Table.from_batches(pending) if pending else pa.table({})), bad


def write(table: pa.Table, out: BinaryIO) -> None:
    """``table`` as CSV; list cells (e.g. ``payload_shape``) as JSON text, since CSV cells
    hold text."""
    for i, f in enumerate(table.schema):
        if pa.types.is_list(f.type):
            text = [None if v is None else json.dumps(v) for v in table.column(i).to_pylist()]
            table = table.set_column(i, f.name, pa.array(text, pa.string()))
    pacsv.write_csv(table, out)
