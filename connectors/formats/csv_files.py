"""CSV files: read as text columns (the normalizer parses each value), written with list
cells as JSON text.

A line that is no record is a ``malformed`` dead letter and the rest of the file is read as
usual: a row of the wrong number of fields, a line longer than the record cap
(``--max-record-size``; Arrow's reader refused a whole file for one line longer than its
block), a line that is not UTF-8 (Arrow's reader refused a whole file for one byte). The
file is read in blocks of whole lines, each checked in whole arrays (line lengths, UTF-8)
before Arrow's reader parses it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from obsflow.connectors.formats.jsonl_files import (
    CAP_OPTION,
    RAW_BYTES,
    SKIP_BYTES,
    refused,
    utf8,
)
from obsflow.connectors.formats.schema import MAX_RECORD_BYTES


def sniff_delimiter(header: bytes) -> str:
    """The delimiter of a CSV file from its header line: the most frequent of comma,
    semicolon, tab and bar (comma when none or a tie): European and instrument exports often
    use ``;`` or tabs."""
    counts = {d: header.count(d.encode()) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


BLOCK_BYTES = 1 << 22  # read and parsed this many bytes at a time (whole lines)


def read(
    f: BinaryIO,
    batch_rows: int,
    delimiter: str | None = None,
    *,
    max_bytes: int = MAX_RECORD_BYTES,
) -> Iterator[tuple[pa.Table, list[tuple[int, str, str]]]]:
    """A CSV file as tables of text columns, about ``batch_rows`` rows each, with the lines
    that hold no record as (line, why, text): a row of the wrong number of fields, a line
    longer than ``max_bytes`` (read no further than a block past the cap) and a line that is
    not UTF-8 (its raw text escaped). The rest of the file is read as usual."""
    header, line_no = _header(f, max_bytes)
    delimiter = delimiter or sniff_delimiter(header)
    names = (
        pacsv.read_csv(
            io.BytesIO(header), parse_options=pacsv.ParseOptions(delimiter=delimiter)
        ).schema.names
        if header.strip()
        else []
    )
    pending: list[pa.Table] = []
    rows = 0
    bad: list[tuple[int, str, str]] = []
    for block, first, refused_lines in _blocks(f, line_no, max_bytes):
        bad.extend(refused_lines)
        if names:
            table, invalid = _parse(block, first, names, delimiter)
            bad.extend(invalid)
            pending.append(table)
            rows += table.num_rows
        if rows >= batch_rows:
            yield pa.concat_tables(pending), sorted(bad)
            pending, rows, bad = [], 0, []
    if pending or bad:
        yield (pa.concat_tables(pending) if pending else pa.table({})), sorted(bad)


def _header(f: BinaryIO, max_bytes: int) -> tuple[bytes, int]:
    """The header line (blank lines before it skipped) and the number of the line after it."""
    line_no = 1
    while True:
        header = f.readline(max_bytes + 1)
        if len(header) > max_bytes and not header.endswith(b"\n"):
            raise pa.ArrowInvalid(
                f"its header line is longer than the record cap of {max_bytes:,} bytes {CAP_OPTION}"
            )
        line_no += 1
        if not header or header.strip():
            return header, line_no


def _blocks(
    f: BinaryIO, line_no: int, max_bytes: int
) -> Iterator[tuple[bytes, int, list[tuple[int, str, str]]]]:
    """The rest of the file as blocks of whole lines: (block, number of its first line,
    lines refused). A refused line stays in its block as an empty line (which the CSV
    reader skips), so the lines keep their numbers."""
    rest = b""
    while True:
        chunk = f.read(BLOCK_BYTES)
        data = rest + chunk if rest else chunk
        if not chunk:
            if not data:
                return
            block, rest = data if data.endswith(b"\n") else data + b"\n", b""
        else:
            end = data.rfind(b"\n")
            if end < 0:  # no line end yet: one line, longer than a block
                if len(data) <= max_bytes:
                    rest = data
                    continue
                yield b"", line_no, [(line_no, *_too_long(data, max_bytes))]
                rest, line_no = _skip_line(f), line_no + 1
                continue
            block, rest = data[: end + 1], data[end + 1 :]
        block, refused_lines, lines = _refuse(block, line_no, max_bytes)
        yield block, line_no, refused_lines
        line_no += lines


def _skip_line(f: BinaryIO) -> bytes:
    """Read on to the end of the current line; what comes after it."""
    while chunk := f.read(SKIP_BYTES):
        end = chunk.find(b"\n")
        if end >= 0:
            return chunk[end + 1 :]
    return b""


def _refuse(
    block: bytes, first: int, max_bytes: int
) -> tuple[bytes, list[tuple[int, str, str]], int]:
    """A block of whole lines with those longer than ``max_bytes`` or not UTF-8 emptied
    (nothing when no line is left with text); the lines refused (line, why, raw text); how
    many lines the block has. Found in whole arrays: only a refused line is looked at by
    itself."""
    ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts
    refused_lines: dict[int, tuple[str, str]] = {}
    for i in np.flatnonzero(lengths > max_bytes).tolist():
        refused_lines[i] = _too_long(block[starts[i] : ends[i]], max_bytes)
    if not utf8(block):
        for i in _not_utf8(block, starts, ends, 0, len(ends)):
            if i not in refused_lines:
                line = block[starts[i] : ends[i]]
                exc = _decode_error(line)
                why = f"not UTF-8 (byte {exc.start:,}: {exc.reason})"
                refused_lines[i] = refused(line, why, line=True)
    if refused_lines:
        lengths[list(refused_lines)] = 0
    longest = int(lengths.max(initial=0))
    if longest == 0 or (longest == 1 and not block.strip(b"\r\n")):  # (Arrow: "Empty CSV file")
        block = b""
    if not refused_lines or not block:
        out = [(first + i, why, raw) for i, (why, raw) in sorted(refused_lines.items())]
        return block, out, len(ends)
    pieces, at = [], 0
    for i in sorted(refused_lines):
        pieces.append(block[at : starts[i]])
        at = int(ends[i])  # (its line end stays: an empty line)
    pieces.append(block[at:])
    out = [(first + i, why, raw) for i, (why, raw) in sorted(refused_lines.items())]
    return b"".join(pieces), out, len(ends)


def _not_utf8(block: bytes, starts: np.ndarray, ends: np.ndarray, lo: int, hi: int) -> list[int]:
    """The lines ``lo`` to ``hi`` of a block that are not UTF-8, found by halving the range
    (a line end is ASCII: no character spans two lines)."""
    if utf8(block[starts[lo] : ends[hi - 1]]):
        return []
    if hi - lo == 1:
        return [lo]
    mid = (lo + hi) // 2
    return _not_utf8(block, starts, ends, lo, mid) + _not_utf8(block, starts, ends, mid, hi)


def _decode_error(line: bytes) -> UnicodeDecodeError:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc
    raise AssertionError("a line found not UTF-8 decodes")  # (utf8() and decode agree)


def _too_long(line: bytes, max_bytes: int) -> tuple[str, str]:
    """(why, raw) of a line longer than the cap: its dead letter keeps its first bytes."""
    return refused(line, f"longer than the record cap of {max_bytes:,} bytes {CAP_OPTION}")


def _parse(
    block: bytes, first: int, names: list[str], delimiter: str
) -> tuple[pa.Table, list[tuple[int, str, str]]]:
    """A block of lines (none refused) as a table of text columns, and its rows of the wrong
    number of fields as (line, why, text)."""
    invalid: list[tuple[int, str, str]] = []
    if not block:  # (no line with text: ``_refuse``)
        return pa.Table.from_arrays([pa.array([], pa.string())] * len(names), names), invalid

    def on_invalid(row: Any) -> str:
        invalid.append(
            (
                int(row.number or 0),
                f"expected {row.expected_columns} fields, found {row.actual_columns}",
                str(row.text)[:RAW_BYTES],
            )
        )
        return "skip"

    reader = pacsv.open_csv(  # (faster than read_csv, which prepares for threads)
        io.BytesIO(block),
        read_options=pacsv.ReadOptions(
            use_threads=False, column_names=names, block_size=len(block) + 1
        ),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
        # Every column as text: the normalizer parses per row, so one odd value cannot
        # make the reader fail or change the type of the whole column. Only an empty cell is
        # null (no value); "NaN", "NA" or "null" is text: a missing value, written.
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            strings_can_be_null=True,
            null_values=[""],
        ),
    )
    table = reader.read_all()
    if invalid:  # the reader numbers the lines it did not skip as empty: the file's numbers
        ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
        starts = np.concatenate(([0], ends[:-1] + 1))
        empty = ends - starts - (np.frombuffer(block, np.uint8)[np.maximum(ends - 1, 0)] == 13)
        lines = first + np.flatnonzero(empty > 0)
        invalid = [(int(lines[n - 1]) if n > 0 else first, why, t) for n, why, t in invalid]
    return table, invalid


def write(table: pa.Table, out: BinaryIO) -> None:
    """``table`` as CSV; list cells (e.g. ``payload_shape``) as JSON text, since CSV cells
    hold text."""
    for i, f in enumerate(table.schema):
        if pa.types.is_list(f.type):
            text = [None if v is None else json.dumps(v) for v in table.column(i).to_pylist()]
            table = table.set_column(i, f.name, pa.array(text, pa.string()))
    pacsv.write_csv(table, out)
