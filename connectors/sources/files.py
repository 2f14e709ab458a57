"""File sources: Parquet, CSV and JSON-lines inputs as Bytewax partitioned sources.

Input: one or more file URLs (local paths or any fsspec URL; the format comes from the
extension, or every file is a Bluesky document stream: ``connectors.sources.bluesky.io``). Output:
``RawBatch`` micro-batches of up to ``batch_rows`` rows, one Bytewax partition per file, so a
file is read in order by one worker. Guarantee: ``snapshot()`` is the
number of records emitted, and resuming from it neither skips nor repeats a record.

Text formats are read as strings and parsed by the normalizer, so one odd value never changes a
whole column's type; a line that cannot be parsed at all becomes a ``malformed`` reject.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from obsflow.connectors.batch import DEFAULT_BATCH_ROWS, RawBatch
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.schema import REJECT_SCHEMA
from obsflow.connectors.storage.backends import BACKENDS

if TYPE_CHECKING:
    from obsflow.connectors.sources.bluesky.io import BlueskyInput

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
MAX_LINE_BYTES = 1 << 20  # a JSON line longer than this is rejected, not parsed
MAX_BATCH_BYTES = 64 << 20  # Parquet batches hold about this many bytes at most (payload rows)


def format_of(url: str) -> str:
    """The input format from a file name's extension."""
    name = url.lower().split("?")[0]
    for ext, fmt in FORMATS.items():
        if name.endswith(ext):
            return fmt
    raise ConfigError(f"cannot tell the format of {url!r}: use .parquet, .csv or .jsonl")


def write_table(table: pa.Table, out: str | BinaryIO, fmt: str | None = None) -> None:
    """Write a table as Parquet, CSV or JSON lines (times as ISO-8601): to a local file, in
    the format its extension names unless ``fmt`` ("parquet", "csv", "jsonl") is given, or to
    a binary stream (stdout) in format ``fmt``."""
    if isinstance(out, str):
        fmt = fmt or format_of(out)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    elif fmt is None:
        raise ValueError("writing to a stream needs a format")
    if fmt == "parquet":
        pq.write_table(table, out)
    elif fmt == "csv":
        for i, f in enumerate(table.schema):
            if pa.types.is_list(f.type):  # e.g. payload_shape: CSV cells hold text, so JSON
                text = [None if v is None else json.dumps(v) for v in table.column(i).to_pylist()]
                table = table.set_column(i, f.name, pa.array(text, pa.string()))
        pacsv.write_csv(table, out)
    elif table.num_rows:  # (pandas writes "{}" lines for a frame without columns)
        text = table.to_pandas().to_json(  # (15 digits: pandas' most)
            orient="records", lines=True, date_format="iso", date_unit="ns", double_precision=15
        )
        data = (text if text.endswith("\n") else text + "\n").encode()
        if isinstance(out, str):
            Path(out).write_bytes(data)
        else:
            out.write(data)
    elif isinstance(out, str):
        Path(out).write_bytes(b"")


def open_input(url: str) -> BinaryIO:
    """Open an input URL for binary reading with the same backends as the store."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in BACKENDS:
        fs, path = BACKENDS[scheme](rest)
        f: BinaryIO = fs.open(path, "rb")
        return f
    opened: BinaryIO = fsspec.open(url, "rb").open()
    return opened


def malformed(origin: str, lines: list[tuple[int, str, str]]) -> pa.Table:
    """Dead letters of text that is no record: ``row`` (a record's 0-based index among the
    input's records) is null, and the message names the 1-based line of the file."""
    return pa.table(
        {
            "origin": [origin] * len(lines),
            "row": pa.nulls(len(lines), pa.int64()),
            "reason": ["malformed"] * len(lines),
            "message": [f"line {r[0]}: {r[1]}" if r[0] > 0 else r[1] for r in lines],
            "raw": [r[2] for r in lines],
        },
        schema=REJECT_SCHEMA,
    )


def _read_parquet(
    f: BinaryIO, batch_rows: int, delimiter: str | None = None
) -> Iterator[tuple[pa.Table, list[tuple[int, str, str]]]]:
    # pre_buffer=False: stream row groups instead of buffering the whole file in memory.
    # Text as dictionary arrays: ids repeat, and come out of the file's own dictionary pages
    # without a string per row (``schema.normalize`` decodes the other text columns).
    md = pq.read_metadata(f)
    text = [c.name for c in md.schema.to_arrow_schema() if pa.types.is_string(c.type)]
    pf = pq.ParquetFile(f, pre_buffer=False, read_dictionary=text, metadata=md)
    raw_bytes = sum(md.row_group(g).total_byte_size for g in range(md.num_row_groups))
    if md.num_rows and raw_bytes > MAX_BATCH_BYTES:  # wide rows (payloads): fewer per batch
        batch_rows = max(1, min(batch_rows, MAX_BATCH_BYTES * md.num_rows // raw_bytes))
    # (Read so, a batch ends at each row group: gather them up to ``batch_rows``.)
    held: list[pa.RecordBatch] = []
    rows = 0
    for rb in pf.iter_batches(batch_size=batch_rows):
        if held and rows + rb.num_rows > batch_rows:
            yield pa.Table.from_batches(held), []
            held, rows = [], 0
        held.append(rb)
        rows += rb.num_rows
    if held:
        yield pa.Table.from_batches(held), []


def sniff_delimiter(header: bytes) -> str:
    """The delimiter of a CSV file from its header line: the most frequent of comma,
    semicolon, tab and bar (comma when none or a tie): European and instrument exports often
    use ``;`` or tabs."""
    counts = {d: header.count(d.encode()) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def _read_csv(
    f: BinaryIO, batch_rows: int, delimiter: str | None = None
) -> Iterator[tuple[pa.Table, list[tuple[int, str, str]]]]:
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


def _jsonl_fallback(
    lines: list[bytes], first_line: int
) -> tuple[pa.Table, list[tuple[int, str, str]]]:
    """Parse line by line (only for a block pyarrow refused): every value becomes text."""
    records: list[dict[str, Any]] = []
    bad: list[tuple[int, str, str]] = []
    for i, line in enumerate(lines):
        text = line.decode("utf-8", errors="replace")
        if not text.strip():
            continue
        try:
            if len(line) > MAX_LINE_BYTES:
                raise ValueError(f"line is longer than {MAX_LINE_BYTES} bytes")
            obj = json.loads(text)
            if not isinstance(obj, dict):
                raise ValueError(f"a line must hold a JSON object, not {type(obj).__name__}")
        except ValueError as exc:
            bad.append((first_line + i, f"not a JSON object: {exc}"[:300], text[:4096]))
            continue
        records.append(
            {k: v if v is None or isinstance(v, str) else json.dumps(v) for k, v in obj.items()}
        )
    names = list(dict.fromkeys(k for r in records for k in r))
    table = pa.table({n: pa.array([r.get(n) for r in records], pa.string()) for n in names})
    return table, bad


def _readline_capped(f: BinaryIO) -> bytes:
    """One line; an over-long line is cut to MAX_LINE_BYTES + 1 and the rest skipped."""
    line = f.readline(MAX_LINE_BYTES + 1)
    if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
        while chunk := f.readline(MAX_LINE_BYTES):
            if chunk.endswith(b"\n"):
                break
    return line


def _read_jsonl(
    f: BinaryIO, batch_rows: int, delimiter: str | None = None
) -> Iterator[tuple[pa.Table, list[tuple[int, str, str]]]]:
    line_no = 1
    while lines := _take_lines(f, batch_rows):
        block = b"".join(ln for ln in lines if ln.strip())
        try:
            if any(len(ln) > MAX_LINE_BYTES for ln in lines):
                raise pa.ArrowInvalid("over-long line")
            yield (pajson.read_json(io.BytesIO(block)) if block else pa.table({})), []
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            yield _jsonl_fallback(lines, line_no)
        line_no += len(lines)


def _take_lines(f: BinaryIO, n: int) -> list[bytes]:
    lines = []
    for _ in range(n):
        line = _readline_capped(f)
        if not line:
            break
        lines.append(line)
    return lines


_READERS = {"parquet": _read_parquet, "csv": _read_csv, "jsonl": _read_jsonl}


def raw_batches(
    url: str, f: BinaryIO, batch_rows: int, delimiter: str | None
) -> Iterator[RawBatch]:
    """A file of readings as raw batches: offsets count its parsed records."""
    parsed = 0
    for table, bad in _READERS[format_of(url)](f, batch_rows, delimiter):
        yield RawBatch(url, parsed, table, malformed(url, bad))
        parsed += table.num_rows


class _FilePartition(StatefulSourcePartition[RawBatch, int]):
    def __init__(
        self,
        url: str,
        batch_rows: int,
        delimiter: str | None,
        resume: int | None,
        bluesky: BlueskyInput | None = None,
    ) -> None:
        self._url = url
        self._file = open_input(url)
        self._format = "bluesky" if bluesky else format_of(url)
        self._batches = (
            bluesky.batches(url, self._file, batch_rows)
            if bluesky
            else raw_batches(url, self._file, batch_rows, delimiter)
        )
        self._pos = 0  # records emitted, malformed lines included: where a resume starts
        self._skip = resume or 0

    def next_batch(self) -> list[RawBatch]:
        try:
            return self._next_batch()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError) as exc:
            # A file that cannot be read as its extension says (not a bad record in it).
            raise ConfigError(f"cannot read {self._url} as {self._format}: {exc}") from exc

    def _next_batch(self) -> list[RawBatch]:
        # Resuming re-reads the batches emitted before (a Bluesky stream rebuilds its state
        # from them) and emits from the first one not emitted.
        for batch in self._batches:
            n = batch.records
            if self._skip >= self._pos + n:  # resuming: this batch was emitted before
                self._pos += n
                continue
            if self._skip > self._pos:
                raise ConfigError(
                    f"cannot resume {self._url} at record {self._skip}: the "
                    "batch size differs from the interrupted run's"
                )
            self._pos += n
            return [batch]
        raise StopIteration

    def next_awake(self) -> datetime | None:
        return None

    def snapshot(self) -> int:
        return self._pos

    def close(self) -> None:
        self._file.close()


class FileSource(FixedPartitionedSource[RawBatch, int]):
    """Read input files as micro-batches; one partition per file.

    Validates at once that every file has a known format; opens nothing until built. CSV files
    are split at ``delimiter``, or at the one their header line shows (``sniff_delimiter``).
    With ``bluesky`` every file is a Bluesky document stream (``connectors.sources.bluesky.io``).
    """

    def __init__(
        self,
        urls: list[str],
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        delimiter: str | None = None,
        bluesky: BlueskyInput | None = None,
    ) -> None:
        if not urls:
            raise ConfigError("no input files given")
        if len(set(urls)) != len(urls):
            raise ConfigError("an input file is listed twice")
        if bluesky is None:
            for url in urls:
                format_of(url)
        if batch_rows < 1:
            raise ConfigError(f"batch_rows must be positive, not {batch_rows}")
        self.urls = list(urls)
        self.batch_rows = batch_rows
        self.delimiter = delimiter
        self.bluesky = bluesky

    def list_parts(self) -> list[str]:
        return self.urls

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FilePartition:
        return _FilePartition(for_part, self.batch_rows, self.delimiter, resume_state, self.bluesky)
