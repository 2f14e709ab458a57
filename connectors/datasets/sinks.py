"""Append-only record logs of a run (late readings, dead letters), written idempotently.

``ChunkLog`` writes tables as Parquet files ``<table>/<run>/part-<p>-<chunk>.parquet`` into a
log table's folder, for the run's commit to add. Names are deterministic, so after a crash and
a Bytewax resume the writer deletes the files it wrote after the last snapshot and writes them
again: each row ends up in the table exactly once. Every row carries its ``run``.
"""

from __future__ import annotations

import pyarrow as pa

from obsflow.connectors.algorithms.partitions import conform
from obsflow.connectors.ids import check_name
from obsflow.connectors.storage import layout, table_writes
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import DataFile


class ChunkLog:
    """One partition's share of a run's record log (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        folder: str,
        run: str,
        part: int,
        schema: pa.Schema,
        *,
        chunk: int = 0,
        target_rows: int = 1 << 18,
    ) -> None:
        for piece in folder.split("/"):
            check_name(piece, kind="log folder")
        self.store, self.folder, self.run, self.part = store, folder, run, part
        self.schema, self.chunk, self.target_rows = schema, chunk, target_rows
        self._buffer: list[pa.Table] = []
        self._rows = 0
        self.written: list[DataFile] = []  # files not reported yet
        self._discard_after(chunk)

    def _discard_after(self, chunk: int) -> None:
        folder = f"{self.folder}/{self.run}"
        for name in self.store.listdir(folder):
            m = layout.LOG_FILE_RE.match(f"{self.run}/{name}")
            if m and int(m["part"]) == self.part and int(m["chunk"]) >= chunk:
                self.store.delete(f"{folder}/{name}")

    def append(self, table: pa.Table) -> None:
        if table.num_rows:
            self._buffer.append(table)
            self._rows += table.num_rows
            if self._rows >= self.target_rows:
                self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        buffer, self._buffer, self._rows = self._buffer, [], 0
        table = pa.concat_tables(buffer, promote_options="default")
        table = table.append_column("run", pa.repeat(self.run, table.num_rows).cast(pa.string()))
        table = conform(table, self.schema)  # (a column some producers do not fill: null)
        rel = layout.log_file(self.folder, self.run, self.part, self.chunk)
        self.written.append(
            table_writes.write_file(self.store, self.folder, rel, table, layout.STATS)
        )
        self.chunk += 1

    def take_written(self) -> list[DataFile]:
        """The files written since the last call (for the run's commit)."""
        out, self.written = self.written, []
        return out


_CONTRACT: type[table_writes.StagedWriter] = ChunkLog  # (mypy holds it to the contract)
