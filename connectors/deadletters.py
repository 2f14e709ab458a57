"""Reading the dead-letter store: ``<store>/deadletter/<run>/part-*.parquet``.

Each row is one rejected input record: ``origin`` (file or URL), ``row`` (record number, or
line number for malformed text lines), ``reason`` (a code), ``message`` (for a human), ``raw``
(the record as read, JSON) and ``run``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from obsflow.connectors.ids import check_name
from obsflow.connectors.schema import REJECT_SCHEMA
from obsflow.connectors.store import Store

SCHEMA = REJECT_SCHEMA.append(pa.field("run", pa.string()))


def read_deadletters(
    store: Store, *, run: str | None = None, reason: str | None = None
) -> pa.Table:
    """Dead letters of every run (or one), optionally of one reason."""
    folder = "deadletter" if run is None else f"deadletter/{check_name(run, kind='run id')}"
    if not store.exists(folder):
        return SCHEMA.empty_table()
    dataset = ds.dataset(
        store.path(folder),
        filesystem=store.fs,
        format="parquet",
        schema=SCHEMA,
        ignore_prefixes=[".", "_"],
    )
    expr = pc.field("reason") == reason if reason else None
    table = dataset.to_table(filter=expr)
    return table.sort_by([("run", "ascending"), ("origin", "ascending"), ("row", "ascending")])


def count_by_run_and_reason(table: pa.Table) -> pa.Table:
    return (
        table.group_by(["run", "reason"])
        .aggregate([("row", "count")])
        .rename_columns(["run", "reason", "records"])
        .sort_by([("run", "ascending"), ("reason", "ascending")])
    )
