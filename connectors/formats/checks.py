"""The field checks of ``normalize``, in the order they run (``CHECKS``).

Each check reads the batch's columns and returns its normalised column(s) and the rows it
rejects, each mask with a reason code and message. The order is part of the contract: a row
keeps the first reason found for it, and a reason's message is the first one given for it in
the batch. Whole-batch problems (a missing or duplicated column) come first, so they win.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.formats.parsing import (
    DECIMAL_COMMA,
    as_ids,
    infer_epoch_unit,
    looks_like_values,
    np_bool,
    parse_seq,
    parse_times,
    parse_values,
)
from obsflow.connectors.formats.schema import (
    AUTO,
    CONTEXT_FIELDS,
    DEFAULT_CHANNEL,
    FIELDS,
    ID_TYPE,
    MAX_CONTEXT_CHARS,
    PAYLOAD_INPUTS,
    RECEIVED,
    REQUIRED,
    TIME_TYPE,
    InputSpec,
)
from obsflow.connectors.ids import valid_ids


class Rejected(NamedTuple):
    """Rows a check rejects (a boolean mask), their reason code and its message: one for
    every row, or each row's own (an array of ``rows``' length: ``each``)."""

    rows: np.ndarray
    reason: str
    message: str | np.ndarray


def each(bad: np.ndarray, column: pa.ChunkedArray, say: Callable[[Any], str]) -> np.ndarray:
    """Each rejected row's message, naming its own value (``say(value)``): only the rows of
    ``bad`` are looked at."""
    out = np.full(len(bad), "", dtype=object)
    rows = np.flatnonzero(bad)
    if rows.size:
        taken = column.take(pa.array(rows, pa.int64()))
        try:
            values = taken.to_pylist()
        except (ValueError, OverflowError):  # (a time Python's datetime cannot hold)
            values = [f"{v} ({taken.type})" for v in taken.cast(pa.int64()).to_pylist()]
        out[rows] = [say(v) for v in values]
    return out


def sample(value: Any) -> str:
    """A value as a message shows it: text quoted (its first 60 characters), a number as
    written."""
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:60] + "...")
    return str(value)


class Checked(NamedTuple):
    """What a check gives back: its normalised output column(s) and its rejections in order."""

    columns: dict[str, Any]
    rejects: tuple[Rejected, ...] = ()
    epoch_unit: str | None = None  # (the time check's: the unit inferred for epoch numbers)


@dataclass(frozen=True)
class Batch:
    """The raw batch the checks read (already decoded and, if wide, melted)."""

    table: pa.Table
    spec: InputSpec
    channels_problem: str | None  # why --channels cannot apply (found before the melt)

    @property
    def n(self) -> int:
        """Rows in the batch."""
        rows: int = self.table.num_rows
        return rows

    def everyone(self, reason: str, message: str) -> Rejected:
        """Every row rejected for one reason (a problem of the whole batch)."""
        return Rejected(np.ones(self.n, dtype=bool), reason, message)

    def lookup(self, name: str) -> tuple[pa.ChunkedArray | None, str | None]:
        """Input column ``name`` and, if it cannot be used as is, the reason why."""
        hits = [i for i, c in enumerate(self.table.column_names) if c == name]
        if not hits:
            return None, None
        if len(hits) > 1:
            return None, f"column {name!r} appears {len(hits)} times"
        return self.table.column(hits[0]), None

    def field(self, name: str) -> pa.ChunkedArray | None:
        """The input column of reading field ``name`` (None if absent or duplicated: then
        ``check_columns`` has rejected the batch)."""
        return self.lookup(self.spec.column(name))[0]

    @property
    def received(self) -> pa.ChunkedArray | None:
        """A broker's receipt times, if a broker source added them."""
        names = self.table.column_names
        return self.table.column(RECEIVED) if RECEIVED in names else None


def _stands_in(batch: Batch, name: str) -> bool:
    """Whether a missing field's column is not needed: a broker's receipt time is the time;
    readings that carry a payload (an array) need no value."""
    if name == "value":
        return "payload" in batch.table.column_names
    return name == "time" and batch.received is not None


def check_columns(batch: Batch) -> Checked:
    """Whole-batch problems: ``--channels`` that cannot apply, a field's column that appears
    twice, a required field with no column (a broker's receipt time stands in for time)."""
    spec, rejects = batch.spec, []
    if batch.channels_problem:
        rejects.append(batch.everyone("missing_field", batch.channels_problem))
    for name in FIELDS:
        col, problem = batch.lookup(spec.column(name))
        if problem:
            rejects.append(batch.everyone("bad_schema", problem))
        elif col is None and name in REQUIRED and not _stands_in(batch, name):
            have = ", ".join(batch.table.column_names) or "none"
            rejects.append(
                batch.everyone(
                    "missing_field",
                    f"no column {spec.column(name)!r} for field {name!r} (columns: {have}); "
                    f"use --map {name}=COLUMN",
                )
            )
    return Checked({}, tuple(rejects))


def _invalid_ids(name: str, ids: pa.DictionaryArray) -> Rejected:
    """Rows whose id is not in the id charset or is too long (or empty), each message naming
    its id (ids become paths and keys: only these characters, ASCII)."""
    bad = ~np_bool(valid_ids(ids))
    rule = f"{name} id must match [A-Za-z0-9._:-]{{1,128}} (ASCII; --map picks another column)"
    return Rejected(
        bad, "bad_id", each(bad, pa.chunked_array([ids]), lambda v: f"{rule}: {sample(v)}")
    )


def check_source(batch: Batch) -> Checked:
    """Source ids: text (or integers) matching the id charset; null where absent."""
    col = batch.field("source")
    ids = as_ids(col) if col is not None else None
    if ids is None:  # (a column of another type stays as it is: every row is rejected)
        rejects = () if col is None else (batch.everyone("bad_id", "source column is not text"),)
        return Checked({"source": col if col is not None else pa.nulls(batch.n, ID_TYPE)}, rejects)
    return Checked({"source": ids}, (_invalid_ids("source", ids),))


def check_channel(batch: Batch) -> Checked:
    """Channel ids, as source's; ``value`` where the input has none. A ``--map channel=``
    column that holds measurements rejects the batch (the input is wide)."""
    col, spec = batch.field("channel"), batch.spec
    ids = as_ids(col) if col is not None else None
    if ids is None:
        default = pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(batch.n, np.int32)), pa.array([DEFAULT_CHANNEL])
        )
        rejects = () if col is None else (batch.everyone("bad_id", "channel column is not text"),)
        return Checked({"channel": col if col is not None else default}, rejects)
    found = []
    if "channel" in spec.mapping and looks_like_values(ids.dictionary):
        found.append(
            batch.everyone(
                "bad_schema",
                f"--map channel={spec.column('channel')}: that column holds measurements, not "
                "channel names; leave channel out and each numeric column becomes a channel",
            )
        )
    found.append(_invalid_ids("channel", ids))
    return Checked({"channel": ids}, tuple(found))


UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
TIME_FORMATS = (
    "use ISO 8601 (2026-01-01T00:00:00Z, or +01:00; naive is UTC) or an epoch number in s, ms, "
    "us or ns (--time-unit)"
)
"""What a time may be written as: said by every ``bad_time`` message."""


def check_time(batch: Batch) -> Checked:
    """Event times as timestamp[ns, UTC] from any supported column; a record without one
    takes its broker's receipt time. When the unit is inferred, epoch numbers of another
    magnitude than most of the column's, and 0 or negative ones, are rejected: each says
    why, with its value."""
    col, received, n = batch.field("time"), batch.received, batch.n
    times, ok = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    rejects, epoch_unit = [], None
    if col is not None:
        unit: str | None = batch.spec.time_unit
        if unit == AUTO:
            unit, odd, placeholder = infer_epoch_unit(col)
            epoch_unit = unit
            says = _placeholder(unit)
            rejects.append(Rejected(placeholder, "bad_time", each(placeholder, col, says)))
            rejects.append(Rejected(odd, "bad_time", each(odd, col, _odd(unit))))
        times, ok = parse_times(col, unit or "ns")
    if received is not None:  # a record without a time has its broker's
        absent = (
            np.ones(n, dtype=bool) if col is None else np_bool(pc.is_null(col, nan_is_null=True))
        )
        times = np.where(absent, received.cast(pa.int64()).to_numpy(), times)
        ok |= absent
    if col is not None:
        rejects.append(Rejected(~ok, "bad_time", each(~ok, col, _no_time)))
    column = pa.array(times, type=pa.int64()).cast(TIME_TYPE)
    return Checked({"time": column}, tuple(rejects), epoch_unit)


def _placeholder(unit: str | None) -> Callable[[Any], str]:
    read = f"no time to read in {UNIT_NAMES[unit]} (the unit" if unit else "no time (no unit"
    return lambda value: (
        f"epoch time {sample(value)} is 0 or negative: {read} --time-unit auto finds in this "
        "column's epoch times) but a placeholder; give --time-unit s (or its unit) to read it "
        "as given"
    )


def _odd(unit: str | None) -> Callable[[Any], str]:
    return lambda value: (
        f"epoch time {sample(value)} is of another magnitude than the rest (read as {unit}); "
        "give --time-unit"
    )


def _no_time(value: Any) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"time is missing: every record needs one; {TIME_FORMATS}"
    return (
        f"time {sample(value)} is not a time obsflow reads, or outside its range (1677-09-21 "
        f"to 2262-04-11); {TIME_FORMATS}"
    )


def check_context(batch: Batch) -> Checked:
    """Context ids (run, stream, descriptor, trace) as text of at most ``MAX_CONTEXT_CHARS``;
    an empty cell is none. Only the fields the input has become columns."""
    columns: dict[str, Any] = {}
    rejects = []
    for name in CONTEXT_FIELDS:
        col, problem = batch.lookup(batch.spec.column(name))
        if problem:
            rejects.append(batch.everyone("bad_schema", problem))
        elif col is not None:
            if pa.types.is_string(col.type) or pa.types.is_integer(col.type):
                text = col.cast(pa.string())
                # An empty cell (a CSV's) is no context, as a missing field is none.
                text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
                too_long = np_bool(pc.greater(pc.utf8_length(text), MAX_CONTEXT_CHARS))
                what = f"{name} is longer than {MAX_CONTEXT_CHARS} characters"
            else:  # (a nested value, say: kept as nothing rather than guessed at)
                text, too_long = pa.nulls(batch.n, pa.string()), ~np_bool(col.is_null())
                what = f"{name} is not text"
            rejects.append(Rejected(too_long, "bad_context", what))
            columns[name] = text
    return Checked(columns, tuple(rejects))


MISSING_VALUE = (
    "value is missing (no value, null or an empty cell): every reading needs one; a missing "
    "value written as NaN is kept as one"
)


def check_value(batch: Batch) -> Checked:
    """Values as float64. A record without one (null, an empty cell) is rejected, but one
    that carries a payload; a value written NaN is a missing value, kept as NaN; unparseable
    text and ±inf are rejected, each with its value (and a decimal comma said so)."""
    col, decimal = batch.field("value"), batch.spec.decimal
    if col is None:
        return Checked({"value": pa.array(np.full(batch.n, np.nan), type=pa.float64())})
    values, bad, missing = parse_values(col, decimal)
    for name in ("payload", "chunk_id"):  # (a payload's reading may have no scalar value)
        carried, _problem = batch.lookup(name)
        if carried is not None and missing.any():
            missing &= np_bool(carried.is_null())
    column = pa.array(values, type=pa.float64(), from_pandas=False)
    return Checked(
        {"value": column},
        (
            Rejected(missing, "missing_field", MISSING_VALUE),
            Rejected(bad, "bad_value", each(bad, col, _bad_value(decimal))),
        ),
    )


def _bad_value(decimal: str) -> Callable[[Any], str]:
    def say(value: Any) -> str:
        why = f"value is not a finite number: {sample(value)}"
        if decimal == "," and isinstance(value, str) and "." in value:
            return f"{why} (--decimal , says a comma marks the fraction)"
        if decimal == "." and isinstance(value, str) and re.match(DECIMAL_COMMA, value):
            return f"{why} (written with a decimal comma: --decimal , reads it)"
        return why

    return say


def check_seq(batch: Batch) -> Checked:
    """Sequence numbers as int64, null where the input has none (numbered later)."""
    col = batch.field("seq")
    if col is None:
        return Checked({"seq": pa.nulls(batch.n, pa.int64())})
    seq, bad = parse_seq(col)
    return Checked({"seq": seq}, (Rejected(bad, "bad_seq", "seq must be a non-negative integer"),))


def check_payloads(batch: Batch) -> Checked:
    """Raw payload columns travel on as ``_payload``…, to be offloaded by the next step."""
    columns = {}
    for name in PAYLOAD_INPUTS:
        col, _problem = batch.lookup(name)
        if col is not None:
            columns[f"_{name}"] = col
    return Checked(columns)


Check = Callable[[Batch], Checked]
CHECKS: tuple[Check, ...] = (
    check_columns,  # whole batch: --channels, duplicated or missing field columns
    check_source,  # -> source (bad_id)
    check_channel,  # -> channel (bad_id, bad_schema)
    check_time,  # -> time (bad_time)
    check_context,  # -> run_uid, stream, descriptor, trace_id (bad_schema, bad_context)
    check_value,  # -> value (bad_value)
    check_seq,  # -> seq (bad_seq)
    check_payloads,  # -> _payload, _payload_dtype, ... (never rejects)
)
"""The checks in the order they run; a row keeps the first reason found for it."""
