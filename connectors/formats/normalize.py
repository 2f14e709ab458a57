"""The vectorized normalizer: a raw input batch in, valid readings and rejected rows out.

``normalize`` turns a raw input batch (any column names, any reasonable types) into a table
with ``READING_SCHEMA`` plus a table of rejected rows with reason codes, by running the field
checks of ``checks.CHECKS`` in order. It works on whole columns; only rejected rows (the rare
path) are touched one by one, to render their raw form for the dead-letter store.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from obsflow.connectors.formats.checks import CHECKS, Batch, Rejected
from obsflow.connectors.formats.schema import FIELDS, RECEIVED, REJECT_SCHEMA, InputSpec
from obsflow.connectors.formats.wide import channels_problem, melt, wide_columns


@dataclass(frozen=True)
class Normalized:
    """The result of normalizing one raw batch."""

    readings: pa.Table  # READING_SCHEMA, but seq may be null where the input had none
    rejects: pa.Table  # REJECT_SCHEMA
    rows: np.ndarray  # record number (offset + position) of each reading, for dead letters
    input: int  # readings in the batch (records; for a wide batch, its numeric cells)
    epoch_unit: str | None = None  # the unit inferred for epoch-number times (``auto``)


class _Rejector:
    """Collects per-row reason codes and messages; the first reason found for a row wins."""

    def __init__(self, n: int) -> None:
        self.ok = np.ones(n, dtype=bool)
        self.reason = np.full(n, "", dtype=object)
        self.message = np.full(n, "", dtype=object)

    def reject(self, found: Rejected) -> None:
        bad, reason, what = found
        new = bad & self.ok
        if new.any():
            self.reason[new] = reason
            # (one message for every row, or each row's own: ``Rejected.message``)
            self.message[new] = what if isinstance(what, str) else what[new]
            self.ok &= ~bad


def _raw_rows(table: pa.Table, rows: np.ndarray) -> list[str]:
    """JSON text of the given rows exactly as read (only used for rejected rows)."""
    if not table.num_columns:  # (``{}`` lines: Arrow's take keeps no rows of no columns)
        return ["{}"] * len(rows)
    picked = table.take(pa.array(rows, type=pa.int64()))
    if "payload" in picked.column_names:  # an array can be megabytes: keep the record readable
        picked = picked.drop_columns(["payload"])
    return [json.dumps(r, default=str, ensure_ascii=False) for r in picked.to_pylist()]


def _decoded(table: pa.Table, keep: Sequence[str]) -> pa.Table:
    """Dictionary-encoded columns (as Parquet text is read) as plain arrays, but ``keep``;
    text of every kind Arrow has — ``large_string`` (what pandas 3 writes), ``string_view``
    (what pyarrow writes on request), either inside a dictionary — as ``string``, the one kind
    the checks read."""
    for i, f in enumerate(table.schema):
        kind = f.type
        if pa.types.is_dictionary(kind):
            values = pa.string() if _other_text(kind.value_type) else kind.value_type
            target = pa.dictionary(kind.index_type, values) if f.name in keep else values
        else:
            target = pa.string() if _other_text(kind) else kind
        if target != kind:
            table = table.set_column(i, f.name, table.column(i).cast(target))
    return table


def _other_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_large_string(kind) or pa.types.is_string_view(kind))


def _batch(table: pa.Table, spec: InputSpec) -> tuple[Batch, np.ndarray | None]:
    """The batch the checks read, and each reading's record index if it was melted."""
    table = _decoded(table, keep=(spec.column("source"), spec.column("channel")))
    picked = channels_problem(table, spec)
    wide = [] if picked else wide_columns(table, spec)
    timed = spec.column("time") in table.column_names or RECEIVED in table.column_names
    record = None
    if wide and timed and spec.column("source") in table.column_names:
        table, record = melt(table, spec, wide)  # (without them, say so for the records)
    return Batch(table, spec, picked), record


def _rejects(table: pa.Table, rej: _Rejector, rows: np.ndarray, origin: str) -> pa.Table:
    """The dead-letter rows of a batch: where each came from, why, and its raw form."""
    bad_rows = np.flatnonzero(~rej.ok)
    if bad_rows.size == 0:
        return REJECT_SCHEMA.empty_table()
    reasons = rej.reason[bad_rows]
    return pa.table(
        {
            "origin": pa.array([origin] * bad_rows.size, pa.string()),
            "row": pa.array(rows[bad_rows], pa.int64()),
            "reason": pa.array(reasons.tolist(), pa.string()),
            "message": pa.array(rej.message[bad_rows].tolist(), pa.string()),
            "raw": pa.array(_raw_rows(table, bad_rows), pa.string()),
        },
        schema=REJECT_SCHEMA,
    )


def normalize(table: pa.Table, spec: InputSpec, *, origin: str, offset: int) -> Normalized:
    """Validate and convert one raw batch. Never raises for bad rows: they become rejects.

    ``origin`` names the input (file URL) and ``offset`` is the row number of the batch's first
    row in it, so each reject says exactly where it came from. A wide batch (``wide_columns``)
    is melted first: one reading per numeric cell, ``Normalized.input`` readings in all.
    """
    batch, record = _batch(table, spec)
    rej = _Rejector(batch.n)
    columns: dict[str, Any] = {}
    epoch_unit = None
    for check in CHECKS:
        checked = check(batch)
        columns.update(checked.columns)
        for found in checked.rejects:
            rej.reject(found)
        epoch_unit = epoch_unit or checked.epoch_unit
    # the reading fields first, in schema order; then context, then raw payloads
    readings = pa.table({**{name: columns.pop(name) for name in FIELDS}, **columns})
    if not rej.ok.all():  # a filter copies every column, payloads included
        readings = readings.filter(pa.array(rej.ok))
    rows = (np.arange(batch.n) if record is None else record) + offset  # each reading's record
    rejects = _rejects(batch.table, rej, rows, origin)
    return Normalized(readings, rejects, rows[rej.ok], batch.n, epoch_unit)
