"""The format table: every file and response format by name, the one place that says which
extensions, media type and functions a format has.

An entry leaves out what its format cannot do: ``read`` (a file into tables, for
``obsflow ingest``), ``write`` (a table into a file or stdout: exports, ``sql -o``,
``simulate``), ``encode`` (a table as bytes: HTTP responses, broker messages). A new format
is one module with those functions and one entry in ``FORMATS``; the front ends choose which
names they offer (``serve`` json, csv, arrow; ``sql`` csv, json, parquet).
"""

from __future__ import annotations

import codecs
import functools
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

import pyarrow as pa

from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats import (
    arrow_ipc,
    csv_files,
    json_records,
    jsonl_files,
    parquet_files,
)
from obsflow.connectors.formats.schema import MAX_RECORD_BYTES

# (file, batch_rows, delimiter) -> (table, [(line, why, text) of malformed lines]) per batch
Reader = Callable[
    [BinaryIO, int, str | None], Iterator[tuple[pa.Table, list[tuple[int, str, str]]]]
]
Writer = Callable[[pa.Table, BinaryIO], None]


class CappedReader(Protocol):
    """A ``Reader`` that also takes a record cap: a line of over ``max_bytes`` is malformed."""

    def __call__(
        self, f: BinaryIO, batch_rows: int, delimiter: str | None = None, *, max_bytes: int
    ) -> Iterator[tuple[pa.Table, list[tuple[int, str, str]]]]: ...


Encoder = Callable[[pa.Table], bytes]


@dataclass(frozen=True)
class Format:
    """One format. ``extensions`` (lower case, with the dot; the first is the one messages
    name) choose it for a file; ``binary``: its cells may hold bytes (``payload_inline``),
    where text formats get references; ``capped``: its reader again, as one that takes a
    record cap (``--max-record-size``)."""

    name: str
    extensions: tuple[str, ...] = ()
    media_type: str = "application/octet-stream"
    read: Reader | None = None
    write: Writer | None = None
    encode: Encoder | None = None
    binary: bool = False
    capped: CappedReader | None = None


def written(write: Writer) -> Encoder:
    """An encoder from a writer: the bytes it would write to a file."""

    def encode(table: pa.Table) -> bytes:
        sink = io.BytesIO()
        write(table, sink)
        return sink.getvalue()

    return encode


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "parquet",
            (".parquet", ".pq"),
            "application/vnd.apache.parquet",
            read=parquet_files.read,
            write=parquet_files.write,
            binary=True,
        ),
        Format(
            "csv",
            (".csv",),
            "text/csv",
            read=csv_files.read,
            write=csv_files.write,
            encode=written(csv_files.write),
            capped=csv_files.read,
        ),
        Format(
            "jsonl",
            (".jsonl", ".ndjson", ".json"),
            "application/x-ndjson",
            read=jsonl_files.read,
            write=jsonl_files.write,
            encode=written(jsonl_files.write),
            capped=jsonl_files.read,
        ),
        Format("json", (), "application/json", encode=json_records.encode),
        Format("arrow", (), "application/vnd.apache.arrow.stream", encode=arrow_ipc.encode),
    )
}


def format_of(url: str, use: Literal["read", "write"] = "read") -> Format:
    """The format that can ``use`` a file, from its name's extension."""
    name = url.lower().split("?")[0]
    able = [f for f in FORMATS.values() if getattr(f, use) is not None and f.extensions]
    for fmt in able:
        if name.endswith(fmt.extensions):
            return fmt
    first = [f.extensions[0] for f in able]
    listed = ", ".join(first[:-1]) + " or " + first[-1] if len(first) > 1 else "".join(first)
    raise ConfigError(f"cannot tell the format of {url!r}: use {listed}")


_MAGIC = (
    (b"\xff\xfe\x00\x00", "UTF-32 text: save it as UTF-8 (iconv -f UTF-32 -t UTF-8)"),
    (b"\x00\x00\xfe\xff", "UTF-32 text: save it as UTF-8 (iconv -f UTF-32 -t UTF-8)"),
    (b"\xff\xfe", "UTF-16 text: save it as UTF-8 (iconv -f UTF-16 -t UTF-8)"),
    (b"\xfe\xff", "UTF-16 text: save it as UTF-8 (iconv -f UTF-16 -t UTF-8)"),
    (b"\x1f\x8b", "gzip-compressed: decompress it first (gunzip)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed: decompress it first (unzstd)"),
    (b"BZh", "bzip2-compressed: decompress it first (bunzip2)"),
    (b"\xfd7zXZ\x00", "xz-compressed: decompress it first (unxz)"),
    (b"PK\x03\x04", "a zip archive: unpack it first"),
    (b"PAR1", "a Parquet file: name it .parquet"),
    (b"\x89PNG", "a PNG image, not data"),
    (b"\xff\xd8\xff", "a JPEG image, not data"),
    (b"%PDF", "a PDF document, not data"),
    (b"\x89HDF", "an HDF5 file: export it as Parquet or CSV"),
)


def not_text(url: str, head: bytes) -> str | None:
    """Why an input of a text format (CSV, JSON lines) is no UTF-8 text at all, from its
    first bytes — another encoding, compressed, binary — or None. Only what makes every record
    unreadable: a CSV's header line (which every row needs) must be text; a bad line further on
    is that line's dead letter."""
    fmt = format_of(url)
    if fmt.name not in ("csv", "jsonl"):
        return None
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return f"it is {what}"
    if fmt.name == "csv":
        first = head.removeprefix(b"\xef\xbb\xbf").split(b"\n", 1)[0]
        if b"\x00" in first:
            return "its header line holds NUL bytes: it is binary, not CSV text"
        try:  # (not final: the head may end inside a character)
            codecs.getincrementaldecoder("utf-8")().decode(first, final=b"\n" in head)
        except UnicodeDecodeError as exc:
            return (
                f"its header line is not UTF-8 text (byte {exc.start}: {exc.reason}); save it "
                "as UTF-8 (iconv -f LATIN1 -t UTF-8, or pandas' to_csv(encoding='utf-8'))"
            )
    return None


def reader_of(url: str, max_record_size: int = MAX_RECORD_BYTES) -> Reader:
    """How to read the file ``url`` names, chosen by its extension; a text record longer than
    ``max_record_size`` bytes is a malformed line (``--max-record-size``)."""
    fmt = format_of(url, "read")
    assert fmt.read is not None
    if fmt.capped is not None:
        return functools.partial(fmt.capped, max_bytes=max_record_size)
    return fmt.read


def encoder(name: str) -> Encoder:
    """How format ``name`` encodes a table as bytes (a name the caller offered)."""
    encode = FORMATS[name].encode
    if encode is None:
        raise ConfigError(f"format {name!r} cannot be sent as bytes")
    return encode


def write_table(table: pa.Table, out: str, fmt: str | None = None) -> None:
    """Write a table to a local file in format ``fmt``, or the one its extension names."""
    write = (FORMATS[fmt] if fmt else format_of(out, "write")).write
    if write is None:
        raise ConfigError(f"format {fmt!r} cannot be written to a file")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        write(table, f)
