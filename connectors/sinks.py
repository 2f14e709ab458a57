"""Idempotent Parquet sinks for append-only record logs (dead letters, late readings).

``ChunkSink`` writes ``(key, table)`` items as Parquet objects named
``<folder>/<run>/part-<p>-<chunk>.parquet``. Names are deterministic, so after a crash and a
Bytewax resume the partition deletes the objects it wrote after the last snapshot and writes
them again: each row ends up in the folder exactly once. ``pandas.read_parquet(<folder>)``
reads all runs at once; every row carries its ``run``.
"""

from __future__ import annotations

import re
import sys

import pyarrow as pa
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from obsflow.connectors.ids import check_name
from obsflow.connectors.store import Store

_CHUNK_RE = re.compile(r"^part-(?P<part>\d{4})-(?P<chunk>\d{6})\.parquet$")
SinkState = tuple[str, int]  # (run id, next chunk number)


class _ChunkPartition(StatefulSinkPartition[pa.Table, SinkState]):
    def __init__(
        self, store: Store, folder: str, part: int, run_id: str, chunk: int, target_rows: int
    ) -> None:
        self._store, self._part, self._run = store, part, run_id
        self._dir = f"{folder}/{run_id}"
        self._chunk = chunk
        self._target = target_rows
        self._buffer: list[pa.Table] = []
        self._rows = 0
        self._discard_orphans()

    def _discard_orphans(self) -> None:
        for name in self._store.listdir(self._dir):
            m = _CHUNK_RE.match(name)
            if m and int(m["part"]) == self._part and int(m["chunk"]) >= self._chunk:
                self._store.delete(f"{self._dir}/{name}")

    def write_batch(self, values: list[pa.Table]) -> None:
        for table in values:
            if table.num_rows:
                self._buffer.append(table)
                self._rows += table.num_rows
        if self._rows >= self._target:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        buffer, self._buffer, self._rows = self._buffer, [], 0
        # Taken before writing: if the write fails, close() (which Bytewax also calls while
        # unwinding from that error) must not fail again, or the process aborts.
        table = pa.concat_tables(buffer, promote_options="default")
        table = table.append_column("run", pa.repeat(self._run, table.num_rows).cast(pa.string()))
        self._store.write_parquet(
            f"{self._dir}/part-{self._part:04d}-{self._chunk:06d}.parquet", table
        )
        self._chunk += 1

    def snapshot(self) -> SinkState:
        # Rows buffered here are not in the snapshot, so they must be durable first.
        self._flush()
        return (self._run, self._chunk)

    def close(self) -> None:
        # Bytewax also calls close() while unwinding from another step's error, from a
        # destructor: an exception here aborts the whole process. Rows still buffered belong
        # to the epoch after the last snapshot, which a resumed run writes again, so saying so
        # loses nothing.
        rows = self._rows
        try:
            self._flush()
        except Exception as exc:  # reported, never silent
            print(
                f"obsflow: warning: {self._dir}: {rows} buffered rows not written "
                f"({exc}); a resumed run writes them",
                file=sys.stderr,
            )


class ChunkSink(FixedPartitionedSink[pa.Table, SinkState]):
    """Append ``(key, table)`` items to ``<store>/<folder>/<run>/`` with ``partitions`` writers."""

    def __init__(
        self,
        store: Store,
        folder: str,
        run_id: str,
        *,
        partitions: int = 1,
        target_rows: int = 1 << 18,
    ) -> None:
        for piece in folder.split("/"):
            check_name(piece, kind="sink folder")
        self.store, self.folder = store, folder
        self.run_id = check_name(run_id, kind="run id")
        self.partitions = partitions
        self.target_rows = target_rows

    def list_parts(self) -> list[str]:
        return [str(p) for p in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        # Keys are capture partition numbers: keep that spread instead of rehashing.
        return int(item_key) if item_key.isdigit() else super().part_fn(item_key)

    def build_part(
        self, step_id: str, for_part: str, resume_state: SinkState | None
    ) -> _ChunkPartition:
        run, chunk = resume_state if resume_state is not None else (self.run_id, 0)
        return _ChunkPartition(self.store, self.folder, int(for_part), run, chunk, self.target_rows)
