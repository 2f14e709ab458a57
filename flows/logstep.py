"""The step that writes a run's record logs (late readings, dead letters) for its commit.

A ``stateful_batch`` step per log, keyed like its input (by capture partition), that appends
to a ``ChunkLog``, flushes at every snapshot (so the snapshot's chunk number is durable) and at
end of input, and reports what it wrote as count deltas. Because it flushes in ``on_eof``,
the run's summary step, downstream of it, ends only after every row is staged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import bytewax.operators as op
import pyarrow as pa
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from obsflow.connectors.sinks import ChunkLog
from obsflow.connectors.store import Store
from obsflow.flows.routing import part_of_key
from obsflow.flows.summary import Counts

LogState = tuple[int, int]  # (partition, next chunk)


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
            self._open(*resume)

    def _open(self, part: int, chunk: int) -> None:
        store, folder, run, _, schema = self.args
        self.log = ChunkLog(store, folder, run, part, schema, chunk=chunk)

    def on_batch(self, values: list[tuple[int, pa.Table]]) -> tuple[Iterable[Counts], bool]:
        if self.log is None:
            self._open(values[0][0], 0)
        assert self.log is not None
        n = 0
        for _, table in values:
            self.log.append(table)
            n += table.num_rows
        return ([self.counts(n)] if self.counts and n else []), self.RETAIN

    def on_eof(self) -> tuple[Iterable[Counts], bool]:
        if self.log is not None:
            self.log.flush()
        return [], self.RETAIN

    def snapshot(self) -> LogState:
        assert self.log is not None
        self.log.flush()
        return (self.log.part, self.log.chunk)


def add_log(
    items: Stream[tuple[str, pa.Table]],
    store: Store,
    folder: str,
    run: str,
    schema: pa.Schema,
    counts: Callable[[int], Counts] | None = None,
) -> Stream[Counts]:
    """Write ``("0003", table)`` items to the run's log ``folder``; ``counts`` says what the
    rows written count as (e.g. a view's late readings)."""
    step = folder.replace("/", "_")
    keyed = op.map(f"part_{step}", items, lambda kv: (kv[0], (part_of_key(kv[0]), kv[1])))
    written = op.stateful_batch(
        f"write_{step}", keyed, lambda s: LogLogic(store, folder, run, schema, counts, s)
    )
    return op.map(f"counts_{step}", written, lambda kv: kv[1])
