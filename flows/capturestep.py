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

from obsflow.connectors.capture import PartitionWriter, WriterState
from obsflow.connectors.store import Store
from obsflow.flows.summary import Counts

PartTable = tuple[int, pa.Table]  # (capture partition, readings)


@dataclass(frozen=True)
class Captured:
    """What the capture step did with one batch of a partition."""

    part: int
    rows: pa.Table  # as written to the capture (source and channel dictionary-encoded)
    conflicts: pa.Table  # REJECT_SCHEMA
    duplicates: int
    origins: dict[str, int] = field(default_factory=dict)  # rows accepted per input

    @property
    def counts(self) -> Counts:
        n = self.conflicts.num_rows
        return Counts(
            accepted=self.rows.num_rows,
            duplicates=self.duplicates,
            rejected=n,
            reasons={"conflict": n} if n else {},
            origins=self.origins,
        )


class CaptureLogic(StatefulBatchLogic[PartTable, Captured, WriterState]):
    """Owns one capture partition: drops duplicates, sets conflicts aside, numbers readings and
    appends them to the partition's objects (staged for the run's commit).

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
        recoverable: bool = True,
    ) -> None:
        self.store, self.capture, self.run_id, self.horizon = store, capture, run_id, horizon
        self.recoverable = recoverable
        self.writer: PartitionWriter | None = None
        if resume is not None:
            self.writer = PartitionWriter(store, capture, resume.part, resume.run_id, resume=resume)
            self.writer.discard_after(resume.chunk)  # objects written after the snapshot

    def on_batch(self, values: list[PartTable]) -> tuple[Iterable[Captured], bool]:
        if self.writer is None:
            self.writer = PartitionWriter(
                self.store, self.capture, values[0][0], self.run_id, horizon=self.horizon
            )
        out = []
        for part, table in values:
            a = self.writer.append(table)
            out.append(Captured(part, a.rows, a.conflicts, a.duplicates, a.origins))
        return out, self.RETAIN

    def on_eof(self) -> tuple[Iterable[Captured], bool]:
        if self.writer is not None:
            self.writer.close()
        return [], self.RETAIN

    def snapshot(self) -> WriterState:
        assert self.writer is not None  # Bytewax snapshots only logics that have seen an item
        if not self.recoverable:
            # Bytewax asks at every epoch, recovery or not; a live cycle never resumes (the
            # broker redelivers instead), so copying a large dedup memory would be waste.
            return self.writer.state
        return self.writer.snapshot()
