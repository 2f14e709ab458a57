"""File sources: input files of any format that can be read (Parquet, CSV, JSON lines:
``connectors.formats.registry``) as Bytewax partitioned sources.

Input: one or more file URLs (local paths or any fsspec URL; the format comes from the
extension, or every file is a Bluesky document stream: ``connectors.sources.bluesky.io``). Output:
``RawBatch`` micro-batches of up to ``batch_rows`` rows, one Bytewax partition per file, so a
file is read in order by one worker. Guarantee: ``snapshot()`` is the
number of records emitted, and resuming from it neither skips nor repeats a record.

Text formats are read as strings and parsed by the normalizer, so one odd value never changes a
whole column's type; a line that cannot be parsed at all becomes a ``malformed`` reject.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, BinaryIO

import fsspec
import pyarrow as pa
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from obsflow.connectors.batch import DEFAULT_BATCH_ROWS, RawBatch
from obsflow.connectors.errors import ConfigError, ObsflowError
from obsflow.connectors.formats.registry import format_of, reader_of
from obsflow.connectors.formats.schema import MAX_RECORD_BYTES, REJECT_SCHEMA
from obsflow.connectors.storage.backends import BACKENDS

if TYPE_CHECKING:
    from obsflow.connectors.sources.bluesky.io import BlueskyInput


_KINDS = (
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
)


def check_regular(url: str) -> None:
    """Refuse a local input that is no regular file (after symlinks): a device such as
    ``/dev/zero`` has no end to read or hash, and opening a FIFO waits for a writer. Other
    URLs (and a path that does not exist or is a folder: its opening says so) pass."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme != "file":
        return
    try:
        mode = os.stat(rest if sep else url).st_mode
    except OSError:
        return
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):  # a folder: its opening says what to do
        return
    kind = next((name for test, name in _KINDS if test(mode)), "special file")
    raise ConfigError(
        f"input {url!r} is a {kind}, not a regular file: obsflow reads files (copy what it "
        "holds into one)"
    )


def open_input(url: str) -> BinaryIO:
    """Open an input URL for binary reading with the same backends as the store; a local
    input must be a regular file (``check_regular``)."""
    check_regular(url)
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


def raw_batches(
    url: str,
    f: BinaryIO,
    batch_rows: int,
    delimiter: str | None,
    max_record_size: int = MAX_RECORD_BYTES,
) -> Iterator[RawBatch]:
    """A file of readings as raw batches: offsets count its parsed records."""
    parsed = 0
    for table, bad in reader_of(url, max_record_size)(f, batch_rows, delimiter):
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
        max_record_size: int = MAX_RECORD_BYTES,
    ) -> None:
        self._url = url
        self._file = open_input(url)
        self._format = "bluesky" if bluesky else format_of(url).name
        self._batches = (
            bluesky.batches(url, self._file, batch_rows)
            if bluesky
            else raw_batches(url, self._file, batch_rows, delimiter, max_record_size)
        )
        self._pos = 0  # records emitted, malformed lines included: where a resume starts
        self._skip = resume or 0

    def next_batch(self) -> list[RawBatch]:
        try:
            return self._next_batch()
        except ObsflowError:
            raise  # (a store's own errors say what they are)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError, OSError) as exc:
            # A file that cannot be read as its extension says (not a bad record in it; a
            # corrupt Parquet page is an OSError from pyarrow).
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

    Validates at once that every file has a known format; opens nothing until built. CSV
    files are split at ``delimiter``, or at the one their header line shows
    (``csv_files.sniff_delimiter``); a JSON or CSV line over ``max_record_size`` bytes is
    malformed.
    With ``bluesky`` every file is a Bluesky document stream (``connectors.sources.bluesky.io``).
    """

    def __init__(
        self,
        urls: list[str],
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        delimiter: str | None = None,
        bluesky: BlueskyInput | None = None,
        max_record_size: int = MAX_RECORD_BYTES,
    ) -> None:
        if not urls:
            raise ConfigError("no input files given")
        if len(set(urls)) != len(urls):
            raise ConfigError("an input file is listed twice")
        for url in urls:
            check_regular(url)
            if bluesky is None:
                format_of(url)
        if batch_rows < 1:
            raise ConfigError(f"batch_rows must be positive, not {batch_rows}")
        self.urls = list(urls)
        self.batch_rows = batch_rows
        self.delimiter = delimiter
        self.bluesky = bluesky
        self.max_record_size = max_record_size

    def list_parts(self) -> list[str]:
        return self.urls

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FilePartition:
        return _FilePartition(
            for_part,
            self.batch_rows,
            self.delimiter,
            resume_state,
            self.bluesky,
            self.max_record_size,
        )
