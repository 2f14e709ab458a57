"""The capture step: one ``stateful_batch`` logic per capture partition writes the capture.

Input: ``("0003", (3, readings))`` items. Output: ``Captured`` — the rows as written (seq
numbers assigned, duplicates dropped), the conflicts set aside, the count of duplicates. The
rows go on to the views, so every view sees exactly the capture's content, in its order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
from bytewax.operators import StatefulBatchLogic

from obsflow.connectors.datasets.capture import PartitionWriter, StateRef, WriterState
from obsflow.connectors.formats.schema import REJECT_SCHEMA
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import DataFile
from obsflow.flows.steps.summary import Counts, wrote

PartTable = tuple[int, pa.Table]  # (capture partition, readings)
_NO_REJECTS = REJECT_SCHEMA.empty_table()
_NO_ROWS = pa.table({})


@dataclass(frozen=True)
class Captured:
    """What the capture step did with one batch of a partition."""

    part: int
    rows: pa.Table  # as written to the capture (source and channel dictionary-encoded)
    conflicts: pa.Table  # REJECT_SCHEMA
    duplicates: int
    origins: dict[str, int] = field(default_factory=dict)  # rows accepted per input
    written: tuple[DataFile | StateRef, ...] = ()  # for the run's commit

    @property
    def counts(self) -> Counts:
        n = self.conflicts.num_rows
        return Counts(
            accepted=self.rows.num_rows,
            duplicates=self.duplicates,
            rejected=n,
            reasons={"conflict": n} if n else {},
            origins=self.origins,
        ) + wrote(*self.written)


class CaptureLogic(StatefulBatchLogic[PartTable, Captured, WriterState]):
    """Owns one capture partition: drops duplicates, sets conflicts aside, numbers readings and
    appends them to the partition's files (for the run's commit ``n``; ``state``: partition ->
    the runs whose folders hold its state at commit ``n - 1``).

    Bytewax builds the logic without telling it its key, so the partition number travels with
    each item and the writer is made on the first batch (or from the resume state).
    """

    def __init__(
        self,
        store: Store,
        capture: str,
        run_id: str,
        horizon: int,
        resume: WriterState | None,
        *,
        n: int,
        state: dict[int, list[str]],
        recoverable: bool = True,
    ) -> None:
        self.store, self.capture, self.run_id, self.horizon = store, capture, run_id, horizon
        self.n, self.state = n, state
        self.recoverable = recoverable
        self.writer: PartitionWriter | None = None
        if resume is not None:
            self.writer = self._writer(resume.part, resume)
            self.writer.discard_after(resume.chunk)  # files written after the snapshot

    def _writer(self, part: int, resume: WriterState | None = None) -> PartitionWriter:
        return PartitionWriter(
            self.store,
            self.capture,
            part,
            resume.run_id if resume else self.run_id,
            n=self.n,
            state=self.state.get(part),
            horizon=self.horizon,
            resume=resume,
        )

    def on_batch(self, values: list[PartTable]) -> tuple[Iterable[Captured], bool]:
        if self.writer is None:
            self.writer = self._writer(values[0][0])
        out = []
        for part, table in values:
            a = self.writer.append(table)
            out.append(Captured(part, a.rows, a.conflicts, a.duplicates, a.origins))
        done = self.writer.take_written()
        if done:
            last = out[-1]
            out[-1] = Captured(
                last.part, last.rows, last.conflicts, last.duplicates, last.origins, tuple(done)
            )
        return out, self.RETAIN

    def on_eof(self) -> tuple[Iterable[Captured], bool]:
        if self.writer is None:
            return [], self.RETAIN
        ref = self.writer.close()
        done: tuple[DataFile | StateRef, ...] = (*self.writer.take_written(), ref)
        return [Captured(self.writer.part, _NO_ROWS, _NO_REJECTS, 0, {}, done)], self.RETAIN

    def snapshot(self) -> WriterState:
        assert self.writer is not None  # Bytewax snapshots only logics that have seen an item
        if not self.recoverable:
            # Bytewax asks at every epoch, recovery or not; a live cycle never resumes (the
            # broker redelivers instead), so copying a large dedup memory would be waste.
            return self.writer.state
        return self.writer.snapshot()
