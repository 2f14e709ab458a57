"""The field checks of ``normalize``, in the order they run (``CHECKS``).

Each check reads the batch's columns and returns its normalised column(s) and the rows it
rejects, each mask with a reason code and message. The order is part of the contract: a row
keeps the first reason found for it, and a reason's message is the first one given for it in
the batch. Whole-batch problems (a missing or duplicated column) come first, so they win.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.formats.parsing import (
    as_ids,
    infer_epoch_unit,
    looks_like_values,
    np_bool,
    parse_float,
    parse_seq,
    parse_times,
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
    """Rows a check rejects (a boolean mask), their reason code and its message."""

    rows: np.ndarray
    reason: str
    message: str


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
    """Rows whose id is not in the id charset or is too long (or empty)."""
    message = f"{name} id must match [A-Za-z0-9._:-]{{1,128}}"
    return Rejected(~np_bool(valid_ids(ids)), "bad_id", message)


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


def check_time(batch: Batch) -> Checked:
    """Event times as timestamp[ns, UTC] from any supported column; a record without one
    takes its broker's receipt time. Epoch numbers of another magnitude than the rest are
    rejected when the unit is inferred."""
    col, received, n = batch.field("time"), batch.received, batch.n
    times, ok = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    rejects, epoch_unit = [], None
    if col is not None:
        unit: str | None = batch.spec.time_unit
        if unit == AUTO:
            unit, odd = infer_epoch_unit(col)
            epoch_unit = unit
            rejects.append(
                Rejected(
                    odd,
                    "bad_time",
                    f"an epoch time of another magnitude than the rest (read as {unit}); "
                    "give --time-unit",
                )
            )
        times, ok = parse_times(col, unit or "ns")
    if received is not None:  # a record without a time has its broker's
        absent = (
            np.ones(n, dtype=bool) if col is None else np_bool(pc.is_null(col, nan_is_null=True))
        )
        times = np.where(absent, received.cast(pa.int64()).to_numpy(), times)
        ok |= absent
    if col is not None or received is not None:
        message = "time is missing, unparseable or outside the ns range"
        rejects.append(Rejected(~ok, "bad_time", message))
    column = pa.array(times, type=pa.int64()).cast(TIME_TYPE)
    return Checked({"time": column}, tuple(rejects), epoch_unit)


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


def check_value(batch: Batch) -> Checked:
    """Values as float64: NaN where missing; unparseable text and ±inf are rejected."""
    col = batch.field("value")
    if col is None:
        return Checked({"value": pa.array(np.full(batch.n, np.nan), type=pa.float64())})
    values, bad = parse_float(col)
    column = pa.array(values, type=pa.float64(), from_pandas=False)
    return Checked({"value": column}, (Rejected(bad, "bad_value", "value is not a finite number"),))


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
