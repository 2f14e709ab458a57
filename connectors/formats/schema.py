"""The reading schema, defined once, and the vectorized normalizer that enforces it.

A *reading* is one observation; batches of readings travel as Arrow tables with
``READING_SCHEMA``. ``normalize`` turns a raw input batch (any column names, any reasonable
types) into a valid reading table plus a table of rejected rows with reason codes. It works on
whole columns; only rejected rows (the rare path) are touched one by one, to render their raw
form for the dead-letter store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.errors import ConfigError
from obsflow.connectors.ids import valid_ids

if TYPE_CHECKING:  # pandas is imported where text is parsed: an ingest of typed files, and
    import pandas as pd  # the CLI's start, do without it (it takes half a second to import)

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
CONTEXT_FIELDS = ("run_uid", "stream", "descriptor", TRACE)
"""Optional context of a reading, kept with it in the capture (null where the input has none):
the Bluesky run, stream and event descriptor it came from, and a trace id that follows one
request or instrument session through every output (a ``trace_id`` field, ``--map
trace_id=COLUMN``, or a broker message's header of that name)."""
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
AUTO = "auto"  # the unit of epoch numbers, from their magnitude (``infer_epoch_unit``)
_MAGNITUDES = (1e11, 1e14, 1e17)  # below each: s, ms, us; above the last: ns
_BY_MAGNITUDE = ("s", "ms", "us", "ns")
_I64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class InputSpec:
    """How to read a raw input table as readings.

    ``mapping`` maps a reading field to the input column holding it (``source -> source_id``);
    ``time_unit`` is the unit of integer/float epoch times (``auto``: from their magnitude);
    ``channels`` picks the columns of a wide input that become channels (default: every
    numeric one); ``delimiter`` splits CSV fields (default: sniffed from the header line).
    """

    mapping: Mapping[str, str] = field(default_factory=dict)
    time_unit: str = AUTO
    channels: tuple[str, ...] = ()
    delimiter: str | None = None

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
        keys = {self.column(f) for f in ("source", "time", "seq")}
        if any(c in keys or not c for c in self.channels):
            raise ConfigError(
                f"--channels {','.join(self.channels)}: name the measurement columns, not the "
                "source, time or seq column"
            )

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
        return out

    @classmethod
    def parse_map(
        cls,
        text: str | Mapping[str, str] | None,
        time_unit: str | None = AUTO,
        *,
        channels: str | Sequence[str] | None = None,
        delimiter: str | None = None,
    ) -> InputSpec:
        """Build from the CLI's ``--map source=source_id,time=event_time`` (or a dict),
        ``--channels a,b`` (or a list) and ``--delimiter`` (``tab`` or ``\\t`` for a tab)."""
        mapping: dict[str, str] = {}
        if isinstance(text, Mapping):
            mapping = dict(text)
            text = None
        for part in (text or "").split(","):
            if not part.strip():
                continue
            target, sep, src = part.partition("=")
            if not sep or not target.strip() or not src.strip():
                raise ConfigError(f"--map entry {part!r} is not field=column")
            mapping[target.strip()] = src.strip()
        names = channels.split(",") if isinstance(channels, str) else channels or ()
        return cls(
            mapping=mapping,
            time_unit=time_unit or AUTO,
            channels=tuple(c.strip() for c in names if c.strip()),
            delimiter="\t" if delimiter in ("tab", "\\t") else delimiter,
        )


@dataclass(frozen=True)
class Normalized:
    """The result of normalizing one raw batch."""

    readings: pa.Table  # READING_SCHEMA, but seq may be null where the input had none
    rejects: pa.Table  # REJECT_SCHEMA
    rows: np.ndarray  # record number (offset + position) of each reading, for dead letters
    input: int  # readings in the batch (records; for a wide batch, its numeric cells)
    epoch_unit: str | None = None  # the unit inferred for epoch-number times (``auto``)


class _Rejector:
    """Collects per-row reason codes; the first reason found for a row wins."""

    def __init__(self, n: int) -> None:
        self.ok = np.ones(n, dtype=bool)
        self.reason = np.full(n, "", dtype=object)
        self.detail: dict[str, str] = {}

    def reject(self, bad: np.ndarray, reason: str, what: str) -> None:
        new = bad & self.ok
        if new.any():
            self.reason[new] = reason
            self.detail.setdefault(reason, what)
            self.ok &= ~bad


def _np_bool(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _scale_to_ns(raw: np.ndarray, known: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Multiply epoch integers by ``factor``; rows that would overflow int64 ns become invalid."""
    limit = _I64_MAX // factor
    ok = known & (np.abs(np.where(known, raw, 0)) <= limit)
    return np.where(ok, raw, 0) * factor, ok


def to_utc(value: object, what: str = "time") -> pd.Timestamp:
    """One time (ISO-8601 text, datetime, Timestamp) as UTC; naive means UTC."""
    import pandas as pd

    try:
        ts = pd.Timestamp(value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise ConfigError(
            f"{what} {value!r} is not a time — use ISO-8601, e.g. 2026-01-01T00:00Z"
        ) from None
    if pd.isna(ts):
        raise ConfigError(f"{what} {value!r} is not a time")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def parse_times(column: pa.ChunkedArray, time_unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse any supported time column to (int64 ns since epoch UTC, valid mask).

    Timestamps (naive means UTC), dates, ISO-8601 strings, and integer or float epochs in
    ``time_unit`` are supported; anything unparseable or outside the ns range is invalid.
    """
    typ = column.type
    n = len(column)
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        if pa.types.is_date(typ):
            column = column.cast(pa.timestamp("s"))
            typ = column.type
        known = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        raw = column.cast(pa.int64()).fill_null(0).to_numpy()
        return _scale_to_ns(raw, known, TIME_UNITS[typ.unit])
    if pa.types.is_integer(typ):
        if pa.types.is_unsigned_integer(typ):
            too_big = _np_bool(pc.greater(column, _I64_MAX))
            column = pc.if_else(too_big, None, column)
        known = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        raw = column.cast(pa.int64()).fill_null(0).to_numpy()
        return _scale_to_ns(raw, known, TIME_UNITS[time_unit])
    if pa.types.is_floating(typ):
        f = column.cast(pa.float64()).fill_null(np.nan).to_numpy() * TIME_UNITS[time_unit]
        ok = np.isfinite(f) & (np.abs(f) < 9.2e18)
        return np.where(ok, np.round(np.where(ok, f, 0.0)), 0).astype(np.int64), ok
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        column = pc.utf8_trim_whitespace(column.cast(pa.string()))
        digits = _np_bool(pc.match_substring_regex(column, r"^-?[0-9]{1,19}$"))
        import pandas as pd

        series = pd.Series(column.to_numpy(zero_copy_only=False), dtype=object)
        parsed = pd.to_datetime(
            series.where(~digits, None), utc=True, format="ISO8601", errors="coerce"
        )
        unit = parsed.dt.unit  # pandas may pick s/ms/us/ns resolution
        known = ~parsed.isna().to_numpy()
        ns, ok = _scale_to_ns(_as_int(parsed), known, TIME_UNITS[unit])
        if digits.any():  # text epochs, as CSV and JSON hold them
            eps, eps_ok = _scale_to_ns(*_digits_to_int(column, digits), TIME_UNITS[time_unit])
            ns, ok = np.where(digits, eps, ns), np.where(digits, eps_ok, ok)
        return ns, ok
    return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)


def infer_epoch_unit(column: pa.ChunkedArray) -> tuple[str | None, np.ndarray]:
    """The unit of a time column's epoch numbers from their magnitude — below 1e11 seconds,
    1e14 milliseconds, 1e17 microseconds, else nanoseconds, so any time from 1973 to 5138
    reads right — and the rows whose magnitude says another unit than most of the column's
    (those are ``bad_time``). ``(None, none)`` when it holds no epoch number."""
    typ, n = column.type, len(column)
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):  # (only the magnitude matters)
        mag = np.abs(column.cast(pa.float64(), safe=False).fill_null(np.nan).to_numpy())
    elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
        text = pc.utf8_trim_whitespace(column.cast(pa.string()))
        digits = _np_bool(pc.match_substring_regex(text, r"^-?[0-9]{1,19}$"))
        if not digits.any():  # ISO text, the usual case: nothing to infer
            return None, np.zeros(n, dtype=bool)
        mag = np.full(n, np.nan)
        mag[digits] = np.abs(text.filter(pa.array(digits)).cast(pa.float64()).to_numpy())
    else:
        return None, np.zeros(n, dtype=bool)
    known = np.isfinite(mag)
    if not known.any():
        return None, np.zeros(n, dtype=bool)
    magnitude = np.digitize(np.where(known, mag, 0.0), _MAGNITUDES)
    most = int(np.bincount(magnitude[known], minlength=len(_BY_MAGNITUDE)).argmax())
    return _BY_MAGNITUDE[most], known & (magnitude != most)


def _as_int(parsed: pd.Series) -> np.ndarray:
    """Epoch integers (in the series' own unit) of a tz-aware datetime series; NaT -> 0."""
    values = parsed.dt.tz_localize(None).to_numpy()
    return np.where(parsed.isna().to_numpy(), 0, values.view(np.int64))


def _digits_to_int(column: pa.Array, digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact int64 of strings of up to 19 digits (split in two halves so nothing overflows)."""
    text = pc.if_else(pa.array(digits), column, "0")
    neg = _np_bool(pc.starts_with(text, "-"))
    text = pc.utf8_ltrim(text, characters="-")
    length = pc.utf8_length(text).to_numpy(zero_copy_only=False)
    low = pc.utf8_slice_codeunits(text, -9).cast(pa.int64()).to_numpy(zero_copy_only=False)
    head = pc.utf8_slice_codeunits(text, 0, -9)
    high = (
        pc.if_else(pa.array(length > 9), head, "0").cast(pa.int64()).to_numpy(zero_copy_only=False)
    )
    ok = digits & (high <= _I64_MAX // 10**9)
    high = np.where(ok, high, 0)
    value = high * 10**9 + low
    ok &= value >= 0  # the final add can still wrap for the last few values
    return np.where(neg, -value, value), ok


def _parse_float(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Values as float64 and a mask of rows whose value is unusable (unparseable or ±inf)."""
    typ = column.type
    n = len(column)
    if pa.types.is_floating(typ) or pa.types.is_integer(typ) or pa.types.is_decimal(typ):
        values = column.cast(pa.float64()).fill_null(np.nan).to_numpy()
        return values, np.isinf(values)
    if pa.types.is_null(typ):
        return np.full(n, np.nan), np.zeros(n, dtype=bool)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        text = pc.utf8_trim_whitespace(column)
        blank = _np_bool(pc.equal(text, "")) | np.asarray(
            text.is_null().to_numpy(zero_copy_only=False), dtype=bool
        )
        import pandas as pd

        series = pd.Series(text.to_numpy(zero_copy_only=False), dtype=object)
        values = pd.to_numeric(series.where(~blank, None), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
        lowered = pc.ascii_lower(text)
        spelled_nan = _np_bool(pc.is_in(lowered, pa.array(["nan", "null", "none", "na"])))
        bad = (np.isnan(values) & ~blank & ~spelled_nan) | np.isinf(values)
        return values, bad
    return np.full(n, np.nan), np.ones(n, dtype=bool)


def _parse_seq(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Sequence numbers as int64 and a mask of rows whose seq is unusable."""
    if pa.types.is_integer(column.type):
        known = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if pa.types.is_unsigned_integer(column.type):
            known &= ~_np_bool(pc.greater(column, _I64_MAX))
        raw = pc.if_else(pa.array(known), column, 0).cast(pa.int64(), safe=False).to_numpy()
        bad = ~known | (raw < 0)
        return pa.array(np.where(bad, 0, raw)), bad
    s, bad = _parse_float(column)
    bad = bad | np.isnan(s) | (s < 0) | (s != np.floor(s)) | (s >= 2.0**63)
    return pa.array(np.where(bad, 0, s).astype(np.int64)), bad


def _raw_rows(table: pa.Table, rows: np.ndarray) -> list[str]:
    """JSON text of the given rows exactly as read (only used for rejected rows)."""
    picked = table.take(pa.array(rows, type=pa.int64()))
    if "payload" in picked.column_names:  # an array can be megabytes: keep the record readable
        picked = picked.drop_columns(["payload"])
    return [json.dumps(r, default=str, ensure_ascii=False) for r in picked.to_pylist()]


def _lookup(table: pa.Table, name: str) -> tuple[pa.ChunkedArray | None, str | None]:
    """Column ``name`` and, if it cannot be used as is, the reason why."""
    hits = [i for i, n in enumerate(table.column_names) if n == name]
    if not hits:
        return None, None
    if len(hits) > 1:
        return None, f"column {name!r} appears {len(hits)} times"
    return table.column(hits[0]), None


def _looks_like_values(column: pa.Array) -> bool:
    """Whether a text column holds measurements (numbers written with a point or an exponent),
    not channel names (plain integers like ``1``, ``2`` may well be channel numbers)."""
    values, bad = _parse_float(column)
    known = ~np.isnan(values)
    if not known.any() or bad.any():
        return False
    integers = _np_bool(pc.match_substring_regex(column, r"^\s*[-+]?\d+\s*$"))
    return not integers[known].all()


def wide_columns(table: pa.Table, spec: InputSpec) -> list[str]:
    """The columns of a *wide* input that become channels: with neither a value nor a channel
    column, every column other than source, time and seq (``station,timestamp,temp_c,rh_pct``
    gives channels ``temp_c`` and ``rh_pct``), or those ``spec.channels`` names. Empty for a
    long input."""
    names = table.column_names
    if spec.column("value") in names or spec.column("channel") in names:
        return []
    if spec.channels:
        return [c for c in spec.channels if c in names]
    keys = {spec.column(f) for f in ("source", "time", "seq")}
    context = {spec.column(c) for c in CONTEXT_FIELDS}
    return [c for c in names if c not in keys and c not in PAYLOAD_INPUTS and c not in context]


def _channels_problem(table: pa.Table, spec: InputSpec) -> str | None:
    """Why ``--channels`` cannot apply to this input, if it cannot."""
    if not spec.channels:
        return None
    names = table.column_names
    if spec.column("value") in names or spec.column("channel") in names:
        return "--channels picks columns of a wide input; this input has a value or channel column"
    missing = [c for c in spec.channels if c not in names]
    if missing:
        return f"no column {missing[0]!r} for --channels (columns: {', '.join(names)})"
    return None


def melt(table: pa.Table, spec: InputSpec, columns: list[str]) -> tuple[pa.Table, np.ndarray]:
    """A wide batch as long readings, record by record: one reading per cell of a numeric
    column that holds something (an empty cell is no reading; a column with no number at all
    in the batch is text, not a channel). Returns the table (source, time, seq as read;
    ``channel``; ``value`` as text, so a bad cell is reported as written) and each reading's
    record index in the batch."""
    names = [
        *(spec.column(f) for f in ("source", "time", "seq")),
        RECEIVED,
        *(spec.column(c) for c in CONTEXT_FIELDS),
    ]
    keys = [c for c in names if c in table.column_names]
    parts, records = [], []
    for name in columns:
        col = table.column(name)
        values, bad = _parse_float(col)
        if not (~np.isnan(values) & ~bad).any():
            continue  # not one number in this batch: a text (or empty) column, not a channel
        idx = np.flatnonzero(~np.isnan(values) | bad)  # cells holding a number, or bad text
        take = pa.array(idx, pa.int64())
        part = {k: table.column(k).take(take) for k in keys}
        part[spec.column("channel")] = pa.repeat(name, idx.size).cast(pa.string())
        part[spec.column("value")] = col.take(take).cast(pa.string())
        parts.append(pa.table(part))
        records.append(idx)
    if not parts:
        return table.select(keys).slice(0, 0), np.zeros(0, np.int64)  # no reading in it
    record = np.concatenate(records)
    order = np.argsort(record, kind="stable")  # record by record, columns in file order
    return pa.concat_tables(parts).take(pa.array(order, pa.int64())), record[order]


def _ids(col: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray | None:
    """An id column (text, or integers read as text) as one ``ID_TYPE`` array; None if it is
    neither. Dictionary-encoded once, here: the id check, the partition split, dedup, seq
    numbers and the views all group by ids, and read these codes instead of hashing strings
    again (a Parquet reader hands text over already encoded: ``files.read_parquet``)."""
    typ = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    if pa.types.is_integer(typ):
        col = col.cast(pa.string())
    elif not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        return None
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    if isinstance(col, pa.ChunkedArray):  # (one dictionary for all chunks)
        col = col.combine_chunks()
    ids: pa.DictionaryArray = col.cast(ID_TYPE)
    return ids


def _decoded(table: pa.Table, keep: Sequence[str]) -> pa.Table:
    """Dictionary-encoded columns (as Parquet text is read) as plain arrays, but ``keep``."""
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type) and f.name not in keep:
            table = table.set_column(i, f.name, table.column(i).cast(f.type.value_type))
    return table


def normalize(table: pa.Table, spec: InputSpec, *, origin: str, offset: int) -> Normalized:
    """Validate and convert one raw batch. Never raises for bad rows: they become rejects.

    ``origin`` names the input (file URL) and ``offset`` is the row number of the batch's first
    row in it, so each reject says exactly where it came from. A wide batch (``wide_columns``)
    is melted first: one reading per numeric cell, ``Normalized.input`` readings in all.
    """
    record = None
    table = _decoded(table, keep=(spec.column("source"), spec.column("channel")))
    picked = _channels_problem(table, spec)
    wide = [] if picked else wide_columns(table, spec)
    timed = spec.column("time") in table.column_names or RECEIVED in table.column_names
    if wide and timed and spec.column("source") in table.column_names:
        table, record = melt(table, spec, wide)  # (without them, say so for the records)
    n = table.num_rows
    rej = _Rejector(n)
    if picked:
        rej.reject(np.ones(n, dtype=bool), "missing_field", picked)
    cols: dict[str, Any] = {}
    received = table.column(RECEIVED) if RECEIVED in table.column_names else None
    for name in FIELDS:
        col, problem = _lookup(table, spec.column(name))
        if problem:
            rej.reject(np.ones(n, dtype=bool), "bad_schema", problem)
        elif col is None and name in REQUIRED and not (name == "time" and received is not None):
            have = ", ".join(table.column_names) or "none"
            rej.reject(
                np.ones(n, dtype=bool),
                "missing_field",
                f"no column {spec.column(name)!r} for field {name!r} (columns: {have}); "
                f"use --map {name}=COLUMN",
            )
        cols[name] = col

    for name in ("source", "channel"):
        col = _ids(cols[name]) if cols[name] is not None else None
        if col is None:
            if cols[name] is not None:
                rej.reject(np.ones(n, dtype=bool), "bad_id", f"{name} column is not text")
            continue
        cols[name] = col
        if name == "channel" and "channel" in spec.mapping and _looks_like_values(col.dictionary):
            rej.reject(
                np.ones(n, dtype=bool),
                "bad_schema",
                f"--map channel={spec.column('channel')}: that column holds measurements, not "
                "channel names; leave channel out and each numeric column becomes a channel",
            )
        rej.reject(
            ~_np_bool(valid_ids(col)), "bad_id", f"{name} id must match [A-Za-z0-9._:-]{{1,128}}"
        )

    times, ok = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    epoch_unit = None  # the unit inferred for epoch numbers, if the input had any
    if cols["time"] is not None:
        unit: str | None = spec.time_unit
        if unit == AUTO:
            unit, odd = infer_epoch_unit(cols["time"])
            epoch_unit = unit
            rej.reject(
                odd,
                "bad_time",
                f"an epoch time of another magnitude than the rest (read as {unit}); "
                "give --time-unit",
            )
        times, ok = parse_times(cols["time"], unit or "ns")
    if received is not None:  # a record without a time has its broker's
        absent = (
            np.ones(n, dtype=bool)
            if cols["time"] is None
            else _np_bool(pc.is_null(cols["time"], nan_is_null=True))
        )
        times = np.where(absent, received.cast(pa.int64()).to_numpy(), times)
        ok |= absent
    if cols["time"] is not None or received is not None:
        rej.reject(~ok, "bad_time", "time is missing, unparseable or outside the ns range")

    context: dict[str, Any] = {}
    for name in CONTEXT_FIELDS:
        col, problem = _lookup(table, spec.column(name))
        if problem:
            rej.reject(np.ones(n, dtype=bool), "bad_schema", problem)
        elif col is not None:
            if pa.types.is_string(col.type) or pa.types.is_integer(col.type):
                text = col.cast(pa.string())
                # An empty cell (a CSV's) is no context, as a missing field is none.
                text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
                too_long = _np_bool(pc.greater(pc.utf8_length(text), MAX_CONTEXT_CHARS))
                what = f"{name} is longer than {MAX_CONTEXT_CHARS} characters"
            else:  # (a nested value, say: kept as nothing rather than guessed at)
                text, too_long = pa.nulls(n, pa.string()), ~_np_bool(col.is_null())
                what = f"{name} is not text"
            rej.reject(too_long, "bad_context", what)
            context[name] = text

    values = np.full(n, np.nan)
    if cols["value"] is not None:
        values, bad = _parse_float(cols["value"])
        rej.reject(bad, "bad_value", "value is not a finite number")

    seq: pa.Array = pa.nulls(n, pa.int64())
    if cols["seq"] is not None:
        seq, bad = _parse_seq(cols["seq"])
        rej.reject(bad, "bad_seq", "seq must be a non-negative integer")

    keep = pa.array(rej.ok)
    source = cols["source"] if cols["source"] is not None else pa.nulls(n, ID_TYPE)
    channel = cols["channel"]
    if channel is None:
        channel = pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, np.int32)), pa.array([DEFAULT_CHANNEL])
        )
    readings = pa.table(
        {
            "source": source,
            "seq": seq,
            "time": pa.array(times, type=pa.int64()).cast(TIME_TYPE),
            "channel": channel,
            "value": pa.array(values, type=pa.float64(), from_pandas=False),
        }
    )
    for name, text in context.items():
        readings = readings.append_column(name, text)
    for name in PAYLOAD_INPUTS:  # raw payloads travel on, to be offloaded by the next step
        col, problem = _lookup(table, name)
        if col is not None:
            readings = readings.append_column(f"_{name}", col)
    if not rej.ok.all():  # a filter copies every column, payloads included
        readings = readings.filter(keep)

    rows = np.arange(n) if record is None else record  # the record of each reading
    bad_rows = np.flatnonzero(~rej.ok)
    if bad_rows.size == 0:
        return Normalized(
            readings, REJECT_SCHEMA.empty_table(), rows[rej.ok] + offset, n, epoch_unit
        )
    reasons = rej.reason[bad_rows]
    rejects = pa.table(
        {
            "origin": pa.array([origin] * bad_rows.size, pa.string()),
            "row": pa.array(rows[bad_rows] + offset, pa.int64()),
            "reason": pa.array(reasons.tolist(), pa.string()),
            "message": pa.array([rej.detail[r] for r in reasons], pa.string()),
            "raw": pa.array(_raw_rows(table, bad_rows), pa.string()),
        },
        schema=REJECT_SCHEMA,
    )
    return Normalized(readings, rejects, rows[rej.ok] + offset, n, epoch_unit)
