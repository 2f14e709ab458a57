"""Wide inputs (``station,timestamp,temp_c,rh_pct``): which columns become channels, and the
melt that turns each of their numeric cells into one long reading."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from obsflow.connectors.formats.parsing import parse_float
from obsflow.connectors.formats.schema import CONTEXT_FIELDS, PAYLOAD_INPUTS, RECEIVED, InputSpec


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


def channels_problem(table: pa.Table, spec: InputSpec) -> str | None:
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
        values, bad = parse_float(col, spec.decimal)
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
