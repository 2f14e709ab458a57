"""The capture as a Bytewax source: replay a reading log exactly as it was captured.

One Bytewax partition per capture partition; each reads its objects in capture order — commit
by commit, each commit's objects in the order they were written — as micro-batches, and after
each commit a ``Boundary`` saying what the commit declared (the end of a run, windows closed
by hand), so that the window operator repeats the decisions ingest made at that point.
``snapshot()`` is the exact read position, so a resumed replay neither skips nor repeats.

Optional restrictions: sources (only their partitions are read), an event-time range
``[start, until)`` (row groups outside it are skipped using Parquet statistics), commits up to
``upto``, and pacing: with ``speed`` set, readings are released at ``speed`` times the
original event-time rate, measured from the capture's first reading (or ``start``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from obsflow.connectors.archive import group_spans, outside, time_span
from obsflow.connectors.batch import DEFAULT_BATCH_ROWS
from obsflow.connectors.capture import open_capture
from obsflow.connectors.commits import Commit, archived_objects, capture_objects, read_log
from obsflow.connectors.compaction import located
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.ids import check_id
from obsflow.connectors.partitions import (
    ID_COLUMNS,
    conform,
    encoded_schema,
    partition_of,
    partitions_of,
)
from obsflow.connectors.schema import READING_SCHEMA, TRACE
from obsflow.connectors.store import Store

PACE_TICK = 0.05  # seconds of wall time per paced slice

REPLAYED = READING_SCHEMA.append(pa.field(TRACE, pa.string()))
ENCODED_READINGS = encoded_schema(REPLAYED)
"""What a replay emits: the reading columns and the trace id (which late readings keep), ids
dictionary-encoded."""


@dataclass(frozen=True)
class Boundary:
    """The end of one commit's readings in a partition, and what the commit declared."""

    commit: int
    end_of_run: bool
    close: tuple[dict[str, Any], ...] = ()


ReplayBatch = tuple[int, pa.Table | Boundary]  # (capture partition, readings or a boundary)
Position = tuple[int, int, int]  # (commit index, object index, batch index within the object)


Piece = tuple[str, int | None, str | None]
"""(object, row group or None for all of it, the archive store's URL or None)."""


@dataclass(frozen=True)
class Segment:
    """One commit's share of a partition: its objects (or, once compacted, the row groups
    that hold them now), then its boundary."""

    objects: tuple[Piece, ...]
    boundary: Boundary


def plan(log: list[Commit], capture: str, part: int, partitions: int) -> list[Segment]:
    """The segments a partition replays, in commit order."""
    where = located(log)
    cold = archived_objects(log)
    out = []
    for entry in log:
        if entry.kind in ("compact", "archive"):
            continue  # it moved readings of earlier commits, which replay reads there
        objects = tuple(
            (rel, group, cold.get(rel))
            for rel, group in (where.get(r, (r, None)) for r in entry.parts(capture).get(part, ()))
        )
        close = tuple(
            c
            for c in entry.close
            if not c.get("sources") or part in partitions_of(list(c["sources"]), partitions)
        )
        if objects or close:
            out.append(Segment(objects, Boundary(entry.n, entry.end_of_run, close)))
    return out


def time_range(store: Store, capture: str) -> tuple[int, int] | None:
    """(min, max) event time of a capture in ns, from Parquet footers only (those of objects
    in an archive store too)."""
    log = read_log(store, capture)
    objects = capture_objects(store, capture, log).values()
    cold = archived_objects(log)
    return time_span(
        [
            *(store.parquet_metadata(rel) for rels in objects for rel in rels),
            *(Store(url).parquet_metadata(rel) for rel, url in cold.items()),
        ]
    )


@dataclass(frozen=True)
class ReplaySpec:
    """What to replay. Times are ns since the epoch, UTC; ``speed`` None means max speed;
    ``upto`` is the last commit read (None: all)."""

    capture: str
    sources: tuple[str, ...] = ()
    start: int | None = None
    until: int | None = None
    speed: float | None = None
    batch_rows: int = DEFAULT_BATCH_ROWS
    upto: int | None = None

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
        segments: list[Segment],
        resume: Position | None,
        pace_origin: int | None,
    ) -> None:
        self._store, self._spec, self._part, self._segments = store, spec, part, segments
        self._pos: Position = resume or (0, 0, 0)
        self._items = self._iterate()
        self._origin = pace_origin or 0  # event time paced from (only used with a speed)
        self._speed = spec.speed or 1.0
        self._wall0 = datetime.now(UTC)
        self._pending: list[pa.Table | Boundary] = []
        self._due: datetime | None = None
        self._stores: dict[str, Store] = {}

    def _iterate(self) -> Iterator[tuple[Position, pa.Table | Boundary]]:
        first_seg, first_obj, first_batch = self._pos
        for s in range(first_seg, len(self._segments)):
            seg = self._segments[s]
            start_obj = first_obj if s == first_seg else 0
            for i in range(start_obj, len(seg.objects)):
                skip = first_batch if (s, i) == (first_seg, first_obj) else 0
                rel, group, url = seg.objects[i]
                store = self._store if url is None else self._cold(url)
                # Ids as the file's own dictionaries: the views group by them without hashing
                # a string per reading; only the reading columns are read.
                pf = pq.ParquetFile(
                    store.arrow_fs.open_input_file(store.path(rel)),
                    read_dictionary=ID_COLUMNS,
                )
                groups = [g for g in self._row_groups(pf) if group is None or g == group]
                if groups:
                    # (objects written before the trace id existed lack it: null then)
                    names = [n for n in REPLAYED.names if n in pf.schema_arrow.names]
                    batches = pf.iter_batches(
                        batch_size=self._spec.batch_rows, row_groups=groups, columns=names
                    )
                    for b, rb in enumerate(batches):
                        if b >= skip:
                            yield (s, i, b + 1), self._restrict(pa.Table.from_batches([rb]))
            yield (s + 1, 0, 0), seg.boundary

    def _cold(self, url: str) -> Store:
        """The archive store at ``url`` (one per replay partition)."""
        if url not in self._stores:
            self._stores[url] = Store(url)
        return self._stores[url]

    def _row_groups(self, pf: pq.ParquetFile) -> list[int]:
        """Row groups that can hold readings in [start, until) (by footer statistics)."""
        spans = group_spans(pf.metadata)
        return [
            g
            for g, span in enumerate(spans)
            if not outside(span, self._spec.start, self._spec.until)
        ]

    def _restrict(self, table: pa.Table) -> pa.Table:
        table = conform(table, ENCODED_READINGS)  # (a trace id the object lacks: null)
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
            for pos, item in self._items:
                self._pos = pos
                if isinstance(item, Boundary) or item.num_rows:
                    return [(self._part, item)]
            raise StopIteration
        return self._paced()

    def _paced(self) -> list[ReplayBatch]:
        """Release slices of about PACE_TICK wall seconds when their time has come."""
        now = datetime.now(UTC)
        while not self._pending:
            item = next(self._items, None)
            if item is None:
                raise StopIteration
            self._pos, data = item
            self._pending = [data] if isinstance(data, Boundary) else self._slices(data)
        head = self._pending[0]
        if isinstance(head, Boundary):
            self._pending.pop(0)
            return [(self._part, head)]
        if self._due is None:
            self._due = self._due_of(head)
        if now < self._due:
            return []
        self._pending.pop(0)
        nxt = self._pending[0] if self._pending else None
        self._due = self._due_of(nxt) if isinstance(nxt, pa.Table) else None
        return [(self._part, head)]

    def _slices(self, table: pa.Table) -> list[pa.Table | Boundary]:
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
        meta = open_capture(self.store, self.spec.capture)
        log = [
            c
            for c in read_log(self.store, self.spec.capture)
            if self.spec.upto is None or c.n <= self.spec.upto
        ]
        origin = None
        if self.spec.speed is not None:
            origin = self.spec.start
            if origin is None:
                span = time_range(self.store, self.spec.capture)
                origin = span[0] if span else 0
        segments = plan(log, self.spec.capture, part, meta.partitions)
        return _CapturePartition(self.store, self.spec, part, segments, resume_state, origin)
