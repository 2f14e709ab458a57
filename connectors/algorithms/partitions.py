"""Capture partitions and seq numbers: pure functions over reading tables.

A source's readings always land in one capture partition (a stable crc32 of its id modulo the
partition count), so per-source order is kept and partitions are independent.
"""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.formats.schema import ID_TYPE
from obsflow.connectors.storage.layout import CAPTURE_SCHEMA


def partition_of(sources: pa.Array | pa.ChunkedArray, partitions: int) -> np.ndarray:
    """Capture partition of each reading: crc32 of its source id, hashed once per distinct id."""
    encoded = pc.dictionary_encode(sources)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    per_id = np.array(
        [zlib.crc32(s.encode()) % partitions for s in encoded.dictionary.to_pylist()],
        dtype=np.int64,
    )
    return (
        per_id[encoded.indices.to_numpy(zero_copy_only=False)]
        if len(per_id)
        else np.zeros(0, np.int64)
    )


def partitions_of(sources: list[str], partitions: int) -> list[int]:
    """The sorted distinct partitions that hold ``sources``."""
    return sorted(set(partition_of(pa.array(sources, pa.string()), partitions).tolist()))


def split_by_partition(table: pa.Table, partitions: int) -> list[tuple[int, pa.Table]]:
    """Split a reading table into per-partition tables, keeping row order inside each."""
    if table.num_rows == 0:
        return []
    parts = partition_of(table.column("source"), partitions)
    sizes = np.bincount(parts, minlength=partitions)
    present = np.flatnonzero(sizes)
    if present.size == 1:
        return [(int(present[0]), table)]
    # One gather in partition order (stable: row order kept), then zero-copy slices: one pass
    # over the columns instead of one filter per partition.
    grouped = table.take(pa.array(np.argsort(parts, kind="stable")))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return [(int(p), grouped.slice(int(starts[p]), int(sizes[p]))) for p in present]


def assign_seq(table: pa.Table, next_seq: dict[str, int]) -> pa.Table:
    """Fill null seq numbers in arrival order per source, continuing from ``next_seq``.

    ``next_seq`` is updated in place to one past the largest seq seen per source, including
    seq numbers the input supplied, so numbers never go backwards.
    """
    seq = table.column("seq")
    encoded = pc.dictionary_encode(table.column("source")).combine_chunks()
    ids = encoded.dictionary.to_pylist()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    missing = np.asarray(seq.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    values = seq.fill_null(-1).to_numpy().copy()
    if missing.any():
        idx = np.flatnonzero(missing)
        c = codes[idx]
        order = np.argsort(c, kind="stable")  # stable: keeps arrival order within a source
        in_order = c[order]
        rank = np.empty(idx.size, dtype=np.int64)
        rank[order] = np.arange(idx.size) - np.searchsorted(in_order, in_order, side="left")
        start = np.array([next_seq.get(s, 0) for s in ids], dtype=np.int64)
        values[idx] = start[c] + rank
    top = np.full(len(ids), -1, dtype=np.int64)
    np.maximum.at(top, codes, values)
    for i, s in enumerate(ids):
        next_seq[s] = max(next_seq.get(s, 0), int(top[i]) + 1)
    return table.set_column(table.schema.get_field_index("seq"), "seq", pa.array(values))


ID_COLUMNS = ("source", "channel")


def encoded_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with source and channel as dictionary arrays (``ID_TYPE``)."""
    return pa.schema([f.with_type(ID_TYPE) if f.name in ID_COLUMNS else f for f in schema])


ENCODED_SCHEMA = encoded_schema(CAPTURE_SCHEMA)
"""How readings travel from the capture step on (the Parquet objects hold plain strings)."""


def encode_ids(table: pa.Table) -> pa.Table:
    """Source and channel as dictionary arrays. Every later step that groups by them (dedup,
    seq numbers, the views' series) then reads the codes instead of hashing strings again."""
    for name in ID_COLUMNS:
        i = table.schema.get_field_index(name)
        column = table.column(i)
        if not pa.types.is_dictionary(column.type):
            table = table.set_column(i, name, pc.dictionary_encode(column))
    return table


def conform(table: pa.Table, schema: pa.Schema = CAPTURE_SCHEMA) -> pa.Table:
    """A table in ``schema`` (``CAPTURE_SCHEMA``, ``ENCODED_SCHEMA``, a view's): the columns
    it lacks (written before they existed) added as nulls."""
    for column_field in schema:
        if column_field.name not in table.column_names:
            table = table.append_column(column_field, pa.nulls(table.num_rows, column_field.type))
    return table.select(schema.names).cast(schema)
