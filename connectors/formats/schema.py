"""The reading schema, defined once: its Arrow schemas, field names and constants, and
``InputSpec``, how a raw input's columns map onto a reading's fields.

A *reading* is one observation; batches of readings travel as Arrow tables with
``READING_SCHEMA``. ``formats.normalize`` turns raw input batches into them (its field checks
are in ``formats.checks``, the column parsers they use in ``formats.parsing``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from obsflow.connectors.errors import ConfigError

TIME_TYPE = pa.timestamp("ns", tz="UTC")
ID_TYPE = pa.dictionary(pa.int32(), pa.string())
"""Source and channel ids as readings carry them through a run (stored as plain strings)."""

READING_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("time", TIME_TYPE, nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=True),
    ]
)
"""One row per reading. ``value`` NaN and null both mean missing."""

REJECT_SCHEMA = pa.schema(
    [
        pa.field("origin", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("message", pa.string()),
        pa.field("raw", pa.string()),
    ]
)
"""A rejected input record: where it came from, why, and its raw form as JSON."""

DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("run_uid", pa.string()),
        pa.field("name", pa.string()),
        pa.field("uid", pa.string()),
        pa.field("time", TIME_TYPE),
        pa.field("doc", pa.string()),
    ]
)
"""A Bluesky run or asset document kept whole (``start``, ``descriptor``, ``stop``,
``resource``, ``datum``, ``stream_resource``, ``stream_datum``): its run, name, uid, time, and
the document as JSON."""

TRACE = "trace_id"
ALARM_FIELDS = ("alarm_severity", "alarm_status")
"""A control system's alarm state of a reading, as text (EPICS: ``NO_ALARM``, ``MINOR``,
``MAJOR``, ``INVALID``; a status such as ``HIHI``, ``LINK`` or a PV Access alarm message)."""
CONTEXT_FIELDS = ("run_uid", "stream", "descriptor", TRACE, *ALARM_FIELDS)
"""Optional context of a reading, kept with it in the capture (null where the input has none):
the Bluesky run, stream and event descriptor it came from, a trace id that follows one
request or instrument session through every output (a ``trace_id`` field, ``--map
trace_id=COLUMN``, or a broker message's header of that name), and its alarm state."""
CONTEXT_SCHEMA = pa.schema([pa.field(name, pa.string()) for name in CONTEXT_FIELDS])
MAX_CONTEXT_CHARS = 256

FIELDS = ("source", "seq", "time", "channel", "value")
REQUIRED = ("source", "time", "value")
RECEIVED = "_received"
"""A column a broker source adds: each record's broker timestamp (or receipt time), as
timestamp[ns, UTC]. It is the reading's time where the record has none, so that the captured
time is what replay sees."""
DEFAULT_CHANNEL = "value"
PAYLOAD_INPUTS = (
    "payload",
    "payload_dtype",
    "payload_shape",
    "chunk_id",
    "chunk_index",
    "chunk_count",
)
"""Optional input columns of an array payload (list column, or binary with dtype and shape),
possibly one chunk of it (Pulsar-style: chunk_id, chunk_index, chunk_count)."""
TIME_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
AUTO = "auto"  # the unit of epoch numbers, from their magnitude (``parsing.infer_epoch_unit``)
MAX_RECORD_BYTES = 1 << 20
"""The default cap on one record's text (a JSON line or message): a longer one is a
``malformed`` dead letter, not parsed (``--max-record-size``)."""
DECIMAL_MARKS = (".", ",")  # --decimal: how numbers written as text mark their fraction
RECORD_BYTES_RANGE = (1 << 10, 1 << 30)  # the caps --max-record-size takes
_SIZE = re.compile(r"(\d+)\s*(|b|kb|mb|gb|kib|mib|gib)", re.IGNORECASE)
_UNITS = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def parse_size(size: int | str) -> int:
    """Bytes from ``1MiB``, ``512KiB``, ``2MB`` or a number of bytes, within
    ``RECORD_BYTES_RANGE``."""
    n = size if isinstance(size, int) else None
    if isinstance(size, str) and (m := _SIZE.fullmatch(size.strip())):
        n = int(m.group(1)) * _UNITS.get(m.group(2).lower(), 1)
    if n is None or isinstance(n, bool):
        raise ConfigError(
            f"--max-record-size {size!r}: a size such as 1MiB, 512KiB, 2MB or 65536 (bytes)"
        )
    low, high = RECORD_BYTES_RANGE
    if not low <= n <= high:
        raise ConfigError(f"--max-record-size {size!r}: between 1KiB and 1GiB")
    return n


@dataclass(frozen=True)
class InputSpec:
    """How to read a raw input table as readings.

    ``mapping`` maps a reading field to the input column holding it (``source -> source_id``);
    ``time_unit`` is the unit of integer/float epoch times (``auto``: from their magnitude);
    ``channels`` picks the columns of a wide input that become channels (default: every
    numeric one); ``delimiter`` splits CSV fields (default: sniffed from the header line);
    ``max_record_size`` caps one line's (JSON lines, CSV) or message's bytes (longer:
    ``malformed``); ``decimal`` is the decimal mark of numbers written as text (``","``:
    ``21,5``, as European CSV exports write them).
    """

    mapping: Mapping[str, str] = field(default_factory=dict)
    time_unit: str = AUTO
    channels: tuple[str, ...] = ()
    delimiter: str | None = None
    max_record_size: int = MAX_RECORD_BYTES
    decimal: str = "."

    def __post_init__(self) -> None:
        unknown = sorted(set(self.mapping) - {*FIELDS, TRACE})
        if unknown:
            raise ConfigError(
                f"--map names unknown field(s) {unknown}; fields are {', '.join((*FIELDS, TRACE))}"
            )
        if self.time_unit not in (AUTO, *TIME_UNITS):
            raise ConfigError(f"time unit {self.time_unit!r} — use one of auto, ns, us, ms, s")
        if self.delimiter is not None and (len(self.delimiter) != 1 or self.delimiter in '"\r\n'):
            raise ConfigError(
                f"--delimiter {self.delimiter!r}: one character, such as , ; | or tab"
            )
        if self.decimal not in DECIMAL_MARKS:
            raise ConfigError(f"--decimal {self.decimal!r}: the decimal mark is . or ,")
        if self.decimal == "," and self.delimiter == ",":
            raise ConfigError(
                "--decimal , needs another CSV --delimiter than the comma (e.g. ';' or tab)"
            )
        keys = {self.column(f) for f in ("source", "time", "seq")}
        if any(c in keys or not c for c in self.channels):
            raise ConfigError(
                f"--channels {','.join(self.channels)}: name the measurement columns, not the "
                "source, time or seq column"
            )
        parse_size(self.max_record_size)  # (refuses a cap out of range)

    def column(self, name: str) -> str:
        """Input column that holds reading field ``name``."""
        return self.mapping.get(name, name)

    def signature(self) -> dict[str, Any]:
        """What shapes the readings read from an input (recorded with inputs captured)."""
        out: dict[str, Any] = {
            "map": dict(sorted(self.mapping.items())),
            "time_unit": self.time_unit,
        }
        if self.channels:  # (only when given: older runs' signatures stay comparable)
            out["channels"] = list(self.channels)
        if self.delimiter:
            out["delimiter"] = self.delimiter
        if self.max_record_size != MAX_RECORD_BYTES:  # (a larger cap reads refused lines)
            out["max_record_size"] = self.max_record_size
        if self.decimal != ".":
            out["decimal"] = self.decimal
        return out

    @classmethod
    def parse_map(
        cls,
        text: str | Sequence[str] | Mapping[str, str] | None,
        time_unit: str | None = AUTO,
        *,
        channels: str | Sequence[str] | None = None,
        delimiter: str | None = None,
        max_record_size: int | str = MAX_RECORD_BYTES,
        decimal: str | None = None,
    ) -> InputSpec:
        """Build from the CLI's ``--map source=source_id,time=event_time`` (given once, or
        several times: a list; or a dict), ``--channels a,b`` (or a list, each item maybe a
        comma list), ``--delimiter`` (``tab`` or ``\\t`` for a tab),
        ``--max-record-size`` (``1MiB``, or bytes) and ``--decimal`` (``.`` or ``,``)."""
        mapping: dict[str, str] = {}
        if isinstance(text, Mapping):
            mapping = dict(text)
            text = None
        elif text is not None and not isinstance(text, str):
            text = ",".join(text)  # --map given several times: all of them
        for part in (text or "").split(","):
            if not part.strip():
                continue
            target, sep, src = part.partition("=")
            if not sep or not target.strip() or not src.strip():
                raise ConfigError(f"--map entry {part!r} is not field=column")
            target, src = target.strip(), src.strip()
            if mapping.get(target, src) != src:
                raise ConfigError(f"--map names two columns for {target}: {mapping[target]}, {src}")
            mapping[target] = src
        if channels is not None and not isinstance(channels, str):
            channels = ",".join(channels)
        names = channels.split(",") if channels else ()
        return cls(
            mapping=mapping,
            time_unit=time_unit or AUTO,
            channels=tuple(c.strip() for c in names if c.strip()),
            delimiter="\t" if delimiter in ("tab", "\\t") else delimiter,
            max_record_size=parse_size(max_record_size),
            decimal=decimal or ".",
        )
