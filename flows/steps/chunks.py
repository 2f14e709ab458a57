"""Chunk reassembly at ingest: payloads that arrive in pieces become one reading.

Input: one capture partition's normalized readings; rows with a ``_chunk_id`` carry one chunk
of a payload in ``_payload`` (with ``_chunk_index`` and ``_chunk_count``). Output: the other
rows unchanged, plus one reading per completed set (the fields of its chunk 0, the joined
bytes as its payload), in a ``Step``; rejected chunks and incomplete sets (expired in event
time, evicted by the pending limits, or left at end of input) become dead letters, and their
chunks are kept as content-addressed objects in the payload store that the dead letters name.

A payload that arrives in k chunks counts as one input record: the step reports ``input``
``-(k - 1)`` when it joins them, so every run still adds up.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from bytewax.operators import StatefulBatchLogic

from obsflow.connectors.formats.schema import REJECT_SCHEMA, TIME_TYPE
from obsflow.connectors.payloads.chunks import ChunkAssembler, ChunkOutput, IncompleteSet
from obsflow.connectors.payloads.offload import PayloadStore
from obsflow.flows.steps.summary import Counts

CHUNK_COLUMNS = ("_chunk_id", "_chunk_index", "_chunk_count")
PartTable = tuple[int, pa.Table]


@dataclass(frozen=True)
class Step:
    """A partition's readings after a step, with what the step rejected and counted."""

    part: int
    readings: pa.Table
    rejects: pa.Table
    counts: Counts


def _reject_rows(rows: list[dict[str, Any]]) -> pa.Table:
    if not rows:
        return REJECT_SCHEMA.empty_table()
    return pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)


class ChunkLogic(StatefulBatchLogic[PartTable, Step, ChunkAssembler]):
    """Reassembles chunk sets of one capture partition (its sources' chunks all land here)."""

    def __init__(self, store: PayloadStore, expiry_ns: int, resume: ChunkAssembler | None) -> None:
        self.store = store
        self.assembler = resume or ChunkAssembler(expiry_ns=expiry_ns)
        self.part = -1

    def on_batch(self, values: list[PartTable]) -> tuple[Iterable[Step], bool]:
        return [self._one(part, table) for part, table in values], self.RETAIN

    def _one(self, part: int, table: pa.Table) -> Step:
        self.part = part
        if "_chunk_id" not in table.column_names:
            return Step(part, table, REJECT_SCHEMA.empty_table(), Counts())
        is_chunk = np.asarray(
            table.column("_chunk_id").is_valid().to_numpy(zero_copy_only=False), dtype=bool
        )
        plain = table.filter(pa.array(~is_chunk)).drop_columns(list(CHUNK_COLUMNS))
        if not is_chunk.any():
            return Step(part, plain, REJECT_SCHEMA.empty_table(), Counts())
        chunks = table.filter(pa.array(is_chunk))
        fed = chunks.rename_columns(
            [
                {
                    "_chunk_id": "chunk_id",
                    "_chunk_index": "chunk_index",
                    "_chunk_count": "chunk_count",
                    "_payload": "data",
                }.get(n, n)
                for n in chunks.column_names
            ]
        )
        fed = fed.set_column(
            fed.schema.get_field_index("time"), "time", fed.column("time").cast(pa.int64())
        )
        fed = fed.set_column(
            fed.schema.get_field_index("chunk_id"),
            "chunk_id",
            fed.column("chunk_id").cast(pa.string()),
        )
        if not pa.types.is_large_binary(fed.column("data").type):
            fed = fed.set_column(
                fed.schema.get_field_index("data"),
                "data",
                fed.column("data").cast(pa.large_binary()),
            )
        out = self.assembler.feed(fed)
        return self._result(part, plain, chunks, out)

    def _result(self, part: int, plain: pa.Table, chunks: pa.Table, out: ChunkOutput) -> Step:
        joined = list(out.completed)
        rows = []
        for s in joined:
            meta = dict(s.meta)
            meta.update(source=s.source, time=s.time, _payload=s.data)
            rows.append(meta)
        readings = plain
        if rows:
            schema = plain.schema.set(
                plain.schema.get_field_index("time"), pa.field("time", pa.int64())
            )
            assembled = pa.Table.from_pylist(rows, schema=_row_schema(schema))
            assembled = assembled.set_column(
                assembled.schema.get_field_index("time"),
                "time",
                assembled.column("time").cast(TIME_TYPE),
            )
            readings = pa.concat_tables([plain, assembled.cast(plain.schema)])
        origin = (
            chunks.column("_origin").cast(pa.string()).to_pylist()
            if ("_origin" in chunks.column_names)
            else [None] * chunks.num_rows
        )
        line = (
            chunks.column("_row").to_pylist()
            if "_row" in chunks.column_names
            else [None] * chunks.num_rows
        )
        dead = [
            {
                "origin": origin[r.row],
                "row": line[r.row],
                "reason": r.reason,
                "message": r.message,
                "raw": json.dumps({"chunk_row": r.row}),
            }
            for r in out.rejected
        ]
        for gone in out.expired:
            dead.extend(self._incomplete_rows(gone))
        joined_chunks = sum(s.chunk_count - 1 for s in joined)
        rejects = _reject_rows(dead)
        counts = Counts(
            input=-joined_chunks,
            duplicates=len(out.duplicates),
            rejected=rejects.num_rows,
            reasons=_reasons(rejects),
        )
        return Step(part, readings, rejects, counts)

    def _incomplete_rows(self, s: IncompleteSet) -> list[dict[str, Any]]:
        """One dead letter per chunk; the chunk's bytes kept in the payload store."""
        out = []
        for c in s.chunks:
            ref = self.store.put(np.frombuffer(c.data, dtype=np.uint8))
            raw = {
                "source": s.source,
                "chunk_id": s.chunk_id,
                "chunk_index": c.index,
                "chunk_count": s.chunk_count,
                "time": c.time,
                "bytes": len(c.data),
                # The chunk's reference, as capture columns name it: fetch it with
                # PayloadStore.fetch(json.loads(raw)).
                **{f"payload_{k}": v for k, v in ref.__dict__.items()},
            }
            out.append(
                {
                    "origin": c.meta.get("_origin"),
                    "row": c.meta.get("_row"),
                    "reason": s.reason,
                    "message": s.message,
                    "raw": json.dumps(raw),
                }
            )
        return out

    def on_eof(self) -> tuple[Iterable[Step], bool]:
        left = self.assembler.drain()
        if not left:
            return [], self.RETAIN
        dead = [row for s in left for row in self._incomplete_rows(s)]
        rejects = _reject_rows(dead)
        empty = pa.table({"source": pa.array([], pa.string())})
        return [
            Step(
                self.part,
                empty,
                rejects,
                Counts(rejected=rejects.num_rows, reasons=_reasons(rejects)),
            )
        ], self.RETAIN

    def snapshot(self) -> ChunkAssembler:
        return copy.deepcopy(self.assembler)


def _row_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f for f in schema if f.name not in CHUNK_COLUMNS])


def _reasons(rejects: pa.Table) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rejects.column("reason").to_pylist():
        out[r] = out.get(r, 0) + 1
    return out
