"""The capture as a Bytewax source: replay a reading log exactly as it was captured.

One Bytewax partition per capture partition; each reads its Parquet objects in stored order
(run id, then chunk: the order readings arrived in) as micro-batches. ``snapshot()`` is the
exact read position (object index, batch index), so a resumed replay neither skips nor repeats.

Optional restrictions: sources (only their partitions are read), an event-time range
``[start, until)`` (row groups outside it are skipped using Parquet statistics), and pacing:
with ``speed`` set, readings are released at ``speed`` times the original event-time rate,
measured from the capture's first reading (or ``start``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from obsflow.connectors.capture import capture_dir, open_capture, partition_of
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.ids import check_id
from obsflow.connectors.schema import READING_SCHEMA
from obsflow.connectors.store import Store

PACE_TICK = 0.05  # seconds of wall time per paced slice
ReplayBatch = tuple[int, pa.Table]  # (capture partition, readings)
Position = tuple[int, int]  # (object index, batch index within the object)


def partition_files(store: Store, capture: str, part: int) -> list[str]:
    """Store-relative paths of one partition's objects, in stored (arrival) order."""
    folder = f"{capture_dir(capture)}/part-{part:04d}"
    return [
        f"{folder}/{n}"
        for n in store.listdir(folder)
        if n.endswith(".parquet") and not n.startswith((".", "_"))
    ]


def time_range(store: Store, capture: str) -> tuple[int, int] | None:
    """(min, max) event time of a capture in ns, from Parquet footers only."""
    lo, hi = None, None
    meta = open_capture(store, capture)
    for part in range(meta.partitions):
        for rel in partition_files(store, capture, part):
            with store.fs.open(store.path(rel), "rb") as fh:
                md = pq.ParquetFile(fh).metadata
            col = md.schema.to_arrow_schema().get_field_index("time")
            for g in range(md.num_row_groups):
                st = md.row_group(g).column(col).statistics
                if st is None or not st.has_min_max:
                    continue
                mn, mx = _ns(st.min), _ns(st.max)
                lo = mn if lo is None else min(lo, mn)
                hi = mx if hi is None else max(hi, mx)
    return None if lo is None or hi is None else (lo, hi)


def _ns(value: object) -> int:
    return int(pa.scalar(value, pa.timestamp("ns", tz="UTC")).cast(pa.int64()).as_py())


@dataclass(frozen=True)
class ReplaySpec:
    """What to replay. Times are ns since the epoch, UTC; ``speed`` None means max speed."""

    capture: str
    sources: tuple[str, ...] = ()
    start: int | None = None
    until: int | None = None
    speed: float | None = None
    batch_rows: int = 65_536

    def __post_init__(self) -> None:
        for s in self.sources:
            check_id(s)
        if self.speed is not None and not (0 < self.speed <= 1e9):
            raise ConfigError(f"--speed must be 'max' or a positive number, not {self.speed}")
        if self.start is not None and self.until is not None and self.until <= self.start:
            raise ConfigError("--until must be later than --from")


class _CapturePartition(StatefulSourcePartition[ReplayBatch, Position]):
    def __init__(
        self,
        store: Store,
        spec: ReplaySpec,
        part: int,
        files: list[str],
        resume: Position | None,
        pace_origin: int | None,
    ) -> None:
        self._store, self._spec, self._part, self._files = store, spec, part, files
        self._pos: Position = resume or (0, 0)
        self._batches = self._iterate()
        self._origin = pace_origin or 0  # event time paced from (only used with a speed)
        self._speed = spec.speed or 1.0
        self._wall0 = datetime.now(UTC)
        self._pending: list[pa.Table] = []
        self._due: datetime | None = None

    def _iterate(self) -> Iterator[tuple[Position, pa.Table]]:
        start_file, start_batch = self._pos
        for i in range(start_file, len(self._files)):
            with self._store.fs.open(self._store.path(self._files[i]), "rb") as fh:
                pf = pq.ParquetFile(fh)
                groups = self._row_groups(pf)
                if not groups:
                    continue
                for b, rb in enumerate(
                    pf.iter_batches(batch_size=self._spec.batch_rows, row_groups=groups)
                ):
                    if i == start_file and b < start_batch:
                        continue
                    yield (i, b + 1), self._restrict(pa.Table.from_batches([rb]))
            start_batch = 0

    def _row_groups(self, pf: pq.ParquetFile) -> list[int]:
        """Row groups that can hold readings in [start, until) (by footer statistics)."""
        spec, md = self._spec, pf.metadata
        col = md.schema.to_arrow_schema().get_field_index("time")
        keep = []
        for g in range(md.num_row_groups):
            st = md.row_group(g).column(col).statistics
            if (
                st is not None
                and st.has_min_max
                and (
                    (spec.start is not None and _ns(st.max) < spec.start)
                    or (spec.until is not None and _ns(st.min) >= spec.until)
                )
            ):
                continue
            keep.append(g)
        return keep

    def _restrict(self, table: pa.Table) -> pa.Table:
        table = table.select(READING_SCHEMA.names).cast(READING_SCHEMA)
        spec = self._spec
        mask = None
        if spec.sources:
            mask = pc.is_in(table.column("source"), pa.array(spec.sources))
        t = table.column("time").cast(pa.int64())
        for cond in (
            (pc.greater_equal(t, spec.start) if spec.start is not None else None),
            (pc.less(t, spec.until) if spec.until is not None else None),
        ):
            if cond is not None:
                mask = cond if mask is None else pc.and_(mask, cond)
        return table if mask is None else table.filter(mask)

    def next_batch(self) -> list[ReplayBatch]:
        if self._spec.speed is None:
            for pos, table in self._batches:
                self._pos = pos
                if table.num_rows:
                    return [(self._part, table)]
            raise StopIteration
        return self._paced()

    def _paced(self) -> list[ReplayBatch]:
        """Release slices of about PACE_TICK wall seconds when their time has come."""
        now = datetime.now(UTC)
        while not self._pending:
            item = next(self._batches, None)
            if item is None:
                raise StopIteration
            self._pos, table = item
            self._pending = self._slices(table)
        if self._due is None:
            self._due = self._due_of(self._pending[0])
        if now < self._due:
            return []
        slice_ = self._pending.pop(0)
        self._due = self._due_of(self._pending[0]) if self._pending else None
        return [(self._part, slice_)]

    def _slices(self, table: pa.Table) -> list[pa.Table]:
        if table.num_rows == 0:
            return []
        reach = np.maximum.accumulate(table.column("time").cast(pa.int64()).to_numpy())
        tick = max(1, int(PACE_TICK * self._speed * 1e9))
        bucket = (reach - self._origin) // tick
        cuts = np.flatnonzero(np.diff(bucket)) + 1
        bounds = [0, *cuts.tolist(), table.num_rows]
        return [table.slice(a, b - a) for a, b in itertools.pairwise(bounds)]

    def _due_of(self, table: pa.Table) -> datetime:
        first = int(pc.min(table.column("time").cast(pa.int64())).as_py())
        return self._wall0 + timedelta(seconds=(first - self._origin) / 1e9 / self._speed)

    def next_awake(self) -> datetime | None:
        return self._due if self._spec.speed is not None else None

    def snapshot(self) -> Position:
        return self._pos


class CaptureSource(FixedPartitionedSource[ReplayBatch, Position]):
    """Replay a capture (see module docstring). Opens nothing until partitions are built."""

    def __init__(self, store: Store, spec: ReplaySpec) -> None:
        self.store, self.spec = store, spec

    def list_parts(self) -> list[str]:
        meta = open_capture(self.store, self.spec.capture)
        parts = range(meta.partitions)
        if self.spec.sources:  # a source lives in one partition: read only those
            wanted = partition_of(pa.array(self.spec.sources), meta.partitions)
            parts = sorted(set(wanted.tolist()))  # type: ignore[assignment]
        return [f"{p:04d}" for p in parts]

    def build_part(
        self, step_id: str, for_part: str, resume_state: Position | None
    ) -> _CapturePartition:
        part = int(for_part)
        origin = None
        if self.spec.speed is not None:
            origin = self.spec.start
            if origin is None:
                span = time_range(self.store, self.spec.capture)
                origin = span[0] if span else 0
        files = partition_files(self.store, self.spec.capture, part)
        return _CapturePartition(self.store, self.spec, part, files, resume_state, origin)
