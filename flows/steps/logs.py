"""The step that writes a run's record logs (late readings, dead letters) for its commit.

A ``stateful_batch`` step per log, keyed like its input (by capture partition), that appends
to a ``ChunkLog``, flushes at every snapshot (so the snapshot's chunk number is durable) and at
end of input, and reports what it wrote — rows as count deltas, files for the commit. Because
it flushes in ``on_eof``, the run's summary step, downstream of it, ends only after every row
is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import bytewax.operators as op
import pyarrow as pa
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from obsflow.connectors.datasets.sinks import ChunkLog
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import DataFile
from obsflow.flows.steps.routing import part_of_key
from obsflow.flows.steps.summary import Counts, wrote

LogState = tuple[int, int, list[DataFile]]  # (partition, next chunk, files not reported yet)


class LogLogic(StatefulBatchLogic[tuple[int, pa.Table], Counts, LogState]):
    def __init__(
        self,
        store: Store,
        folder: str,
        run: str,
        schema: pa.Schema,
        counts: Callable[[int], Counts] | None,
        resume: LogState | None,
    ) -> None:
        self.args = (store, folder, run, -1, schema)
        self.counts = counts
        self.log: ChunkLog | None = None
        if resume is not None:
            self._open(resume[0], resume[1])
            assert self.log is not None
            self.log.written = list(resume[2])

    def _open(self, part: int, chunk: int) -> None:
        store, folder, run, _, schema = self.args
        self.log = ChunkLog(store, folder, run, part, schema, chunk=chunk)

    def _report(self, rows: int) -> list[Counts]:
        assert self.log is not None
        out = self.counts(rows) if self.counts and rows else Counts()
        files = self.log.take_written()
        if files:
            out = out + wrote(*files)
        return [out] if rows or files else []

    def on_batch(self, values: list[tuple[int, pa.Table]]) -> tuple[Iterable[Counts], bool]:
        if self.log is None:
            self._open(values[0][0], 0)
        assert self.log is not None
        n = 0
        for _, table in values:
            self.log.append(table)
            n += table.num_rows
        return self._report(n), self.RETAIN

    def on_eof(self) -> tuple[Iterable[Counts], bool]:
        if self.log is None:
            return [], self.RETAIN
        self.log.flush()
        return self._report(0), self.RETAIN

    def snapshot(self) -> LogState:
        assert self.log is not None
        self.log.flush()
        return (self.log.part, self.log.chunk, list(self.log.written))


@operator
def write_log(
    step_id: str,
    items: Stream[tuple[str, pa.Table]],
    store: Store,
    folder: str,
    run: str,
    schema: pa.Schema,
    counts: Callable[[int], Counts] | None = None,
) -> Stream[Counts]:
    """Write ``("0003", table)`` items to the run's log ``folder``; ``counts`` says what the
    rows written count as (e.g. a view's late readings)."""
    keyed = op.map("part", items, lambda kv: (kv[0], (part_of_key(kv[0]), kv[1])))
    written = op.stateful_batch(
        "write", keyed, lambda s: LogLogic(store, folder, run, schema, counts, s)
    )
    return op.map("counts", written, lambda kv: kv[1])
