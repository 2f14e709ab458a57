"""Payload offload at ingest: arrays out of the stream, references in (the claim check).

Input: a normalized reading table whose rows may carry a raw payload in ``_payload`` (an Arrow
list of numbers, or binary with ``_payload_dtype`` and ``_payload_shape``). Output: the same
readings with the ``payload_*`` reference columns (``PAYLOAD_SCHEMA``), the
objects already durable in ``<store>/payloads/`` (``offload_many`` returns only then), plus
optional derived scalar readings ``<channel>.<feature>`` per payload, and rejects for payloads
that are malformed (``bad_payload``) or too large (``oversize``).

Per-payload Python is fine here: a payload is kilobytes to megabytes, never one number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from obsflow.connectors.formats.schema import CONTEXT_FIELDS, REJECT_SCHEMA
from obsflow.connectors.payloads.format import (
    PayloadError,
    PayloadTooLargeError,
    array_from_bytes,
    numpy_dtype,
    payloads_to_arrow,
)
from obsflow.connectors.payloads.offload import PayloadStore
from obsflow.flows.kernels.features import derive_features

RAW_COLUMNS = ("_payload", "_payload_dtype", "_payload_shape")


def _array_of(table: pa.Table, i: int, store: PayloadStore) -> NDArray[Any]:
    """Row ``i``'s payload as a numpy array (validated: dtype allow-list, size cap)."""
    col = table.column("_payload")
    typ = col.type
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        if "_payload_dtype" not in table.column_names:
            raise PayloadError("a binary payload needs a payload_dtype column")
        data = col[i].as_py()
        dtype = table.column("_payload_dtype")[i].as_py()
        shape_value = (
            table.column("_payload_shape")[i].as_py()
            if "_payload_shape" in table.column_names
            else None
        )
        if isinstance(
            shape_value, str
        ):  # CSV/JSON carry the shape as text: "512x512" or "[512, 512]"
            shape_value = (
                json.loads(shape_value)
                if shape_value.startswith("[")
                else [int(x) for x in shape_value.split("x")]
            )
        if shape_value is None:  # a flat array of as many items as the bytes hold
            shape_value = [len(data) // numpy_dtype(dtype).itemsize]
        return array_from_bytes(data, dtype, tuple(shape_value), max_bytes=store.max_payload_bytes)
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        chunk = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        values = chunk[i].values
        if values.null_count:
            raise PayloadError("a payload list holds nulls")
        arr = values.to_numpy(zero_copy_only=False)
        if arr.nbytes > store.max_payload_bytes:
            raise PayloadTooLargeError(
                f"payload is {arr.nbytes} bytes, more than {store.max_payload_bytes}"
            )
        if "_payload_shape" in table.column_names:
            shape = table.column("_payload_shape")[i].as_py()
            if shape is not None:
                arr = arr.reshape(tuple(shape))
        return np.ascontiguousarray(arr)
    raise PayloadError(
        f"payload column of type {typ} — use a list of numbers, or binary with "
        "payload_dtype and payload_shape"
    )


def offload_batch(
    readings: pa.Table, store: PayloadStore, features: Sequence[str] = ()
) -> tuple[pa.Table, pa.Table]:
    """Offload the batch's payloads; returns (readings with references [+ features], rejects)."""
    if "_payload" not in readings.column_names:
        return readings, REJECT_SCHEMA.empty_table()
    has = np.asarray(
        readings.column("_payload").is_valid().to_numpy(zero_copy_only=False), dtype=bool
    )
    arrays: list[NDArray[Any]] = []
    rows: list[int] = []
    bad: dict[int, tuple[str, str]] = {}
    for i in np.flatnonzero(has).tolist():
        try:
            arrays.append(_array_of(readings, i, store))
            rows.append(i)
        except PayloadTooLargeError as exc:
            bad[i] = ("oversize", str(exc))
        except (PayloadError, ValueError, TypeError) as exc:
            bad[i] = ("bad_payload", str(exc)[:300])
    payloads = store.offload_many(arrays)  # all objects durable before anything is emitted
    where = np.full(readings.num_rows, -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    refs = payloads_to_arrow(payloads).take(pa.array(where, mask=where < 0))
    out = readings.drop_columns([c for c in RAW_COLUMNS if c in readings.column_names])
    for field, column in zip(refs.schema, refs.columns, strict=True):
        out = out.append_column(field, column)
    rejects = _rejects(out, bad)
    if bad:
        keep = np.ones(out.num_rows, bool)
        keep[list(bad)] = False
        out = out.filter(pa.array(keep))
    if features and arrays:
        out = out.append_column("_parent_seq", pa.nulls(out.num_rows, pa.int64()))
        out = pa.concat_tables([out, _feature_rows(readings, rows, arrays, features, out.schema)])
    return out, rejects


def _feature_rows(
    readings: pa.Table,
    rows: list[int],
    arrays: list[NDArray[Any]],
    which: Sequence[str],
    schema: pa.Schema,
) -> pa.Table:
    """One scalar reading per payload and feature, at the payload's time and source.

    They have no seq of their own (identity: source, channel, time) and carry their payload
    reading's seq in ``_parent_seq``, which the capture uses as theirs.
    """
    idx = pa.array(rows, pa.int64())
    channels = readings.column("channel").take(idx).to_pylist()
    feats = derive_features(arrays, channels, which)
    take = pa.array(np.asarray(rows, np.int64)[feats.column("row").to_numpy()])
    n = feats.num_rows
    cols: dict[str, Any] = {
        "source": readings.column("source").take(take),
        "seq": pa.nulls(n, pa.int64()),
        "time": readings.column("time").take(take),
        "channel": feats.column("channel"),
        "value": feats.column("value"),
    }
    for name in (*CONTEXT_FIELDS, "_origin", "_row"):
        if name in readings.column_names:
            cols[name] = readings.column(name).take(take)
    table = pa.table(cols)
    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(n, field.type))
    table = table.set_column(
        table.schema.get_field_index("_parent_seq"),
        "_parent_seq",
        readings.column("seq").take(take),
    )
    return table.select(schema.names).cast(schema)


def _rejects(readings: pa.Table, bad: dict[int, tuple[str, str]]) -> pa.Table:
    if not bad:
        return REJECT_SCHEMA.empty_table()
    rows = sorted(bad)
    picked = readings.take(pa.array(rows, pa.int64()))
    raws = []
    for r in picked.select(["source", "seq", "time", "channel", "value"]).to_pylist():
        r["time"] = r["time"].isoformat() if r["time"] is not None else None
        raws.append(json.dumps(r, default=str))
    origin = (
        picked.column("_origin").cast(pa.string())
        if "_origin" in picked.column_names
        else pa.nulls(len(rows), pa.string())
    )
    row = (
        picked.column("_row") if "_row" in picked.column_names else pa.nulls(len(rows), pa.int64())
    )
    return pa.table(
        {
            "origin": origin,
            "row": row,
            "reason": pa.array([bad[i][0] for i in rows], pa.string()),
            "message": pa.array([bad[i][1] for i in rows], pa.string()),
            "raw": pa.array(raws, pa.string()),
        },
        schema=REJECT_SCHEMA,
    )
