"""The capture as a Bytewax source: replay a reading log exactly as it was captured.

One Bytewax partition per capture partition; each reads its files of the capture version of
commit ``upto`` in capture order — files by the first commit they hold (then by name: a run's
chunks), each file's rows in the order they were written — as micro-batches, and after each
commit's readings a ``Boundary`` saying what the commit declared (the end of a run, windows
closed by hand), so that the window operator repeats the decisions ingest made at that point.
Every reading carries the number of its commit, so this order survives compaction, which
rewrites whole runs of commits into one file. Files moved to an archive store are read there.
``snapshot()`` is the exact read position, so a resumed replay neither skips nor repeats.

Optional restrictions: sources (only their partitions are read), an event-time range
``[start, until)`` (row groups outside it are skipped using Parquet statistics), and pacing:
with ``speed`` set, readings are released at ``speed`` times the original event-time rate,
measured from the capture's first reading (or ``start``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from obsflow.connectors.algorithms.partitions import (
    ID_COLUMNS,
    conform,
    encoded_schema,
    partition_of,
    partitions_of,
)
from obsflow.connectors.batch import DEFAULT_BATCH_ROWS
from obsflow.connectors.datasets.capture import open_capture
from obsflow.connectors.datasets.dedup_index import group_spans, outside, time_span
from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.formats.schema import READING_SCHEMA, TRACE
from obsflow.connectors.ids import check_id
from obsflow.connectors.storage import layout, tables
from obsflow.connectors.storage.commits import Commit, read_log
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import FileEntry

PACE_TICK = 0.05  # seconds of wall time per paced slice
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock pacing reads (a replay's ``clock`` by default)."""
    return datetime.now(UTC)


REPLAYED = READING_SCHEMA.append(pa.field(TRACE, pa.string()))
ENCODED_READINGS = encoded_schema(REPLAYED)
"""What a replay emits: the reading columns and the trace id (which late readings keep), ids
dictionary-encoded."""
_READ = [*layout.stored_columns(REPLAYED.names, REPLAYED), layout.COMMIT]  # type: ignore[misc]
_WITH_COMMIT = REPLAYED.append(pa.field(layout.COMMIT, pa.int64()))


@dataclass(frozen=True)
class Boundary:
    """The end of one commit's readings in a partition, and what the commit declared."""

    commit: int
    end_of_run: bool
    close: tuple[dict[str, Any], ...] = ()


ReplayBatch = tuple[int, pa.Table | Boundary]  # (capture partition, readings or a boundary)
Position = tuple[int, int, int, int | None, int]
"""(file index, batch index in it, items of that batch given out; and at that batch's start,
the commit whose readings came last with its boundary not given out yet, and the last commit
all of whose boundaries are out)."""


@dataclass(frozen=True)
class ReplayFile:
    """One file a partition replays: its path, the store holding it (None: the capture's),
    and the first and last commit it holds (a file of one commit is read without its
    ``commit`` column)."""

    path: str
    first: int
    url: str | None = None
    last: int | None = None  # None: not known


@dataclass(frozen=True)
class CapturePlan:
    """What a replay reads: the capture version of its last commit, the commits in order, and
    the files moved to archive stores by then (file -> store URL)."""

    files: tuple[FileEntry, ...]
    commits: tuple[Commit, ...]
    archived: dict[str, str]


def capture_plan(store: Store, capture: str, upto: int | None) -> CapturePlan:
    """The capture as of commit ``upto`` (None: the last one)."""
    log = read_log(store, capture, upto=upto)
    if not log:
        return CapturePlan((), (), {})
    snap = tables.snapshot(store, layout.capture_dir(capture), as_of=log[-1].version)
    if snap is None:
        raise StoreError(f"capture {capture!r} has no version of commit #{log[-1].n}")
    archived = {rel: url for c in log for rel, url in c.archived.items()}
    return CapturePlan(snap.files, tuple(log), archived)


def time_range(store: Store, capture: str) -> tuple[int, int] | None:
    """(min, max) event time of a capture in ns, from the table's statistics (and the footers
    of files in an archive store)."""
    plan = capture_plan(store, capture, None)
    spans = [s for f in plan.files if (s := f.span("time_ns")) is not None]
    cold = time_span(Store(url).parquet_metadata(rel) for rel, url in plan.archived.items())
    if cold is not None:
        spans.append(cold)
    if not spans:
        return None
    return min(s[0] for s in spans), max(s[1] for s in spans)


def part_sources(plan: CapturePlan, part: int) -> list[ReplayFile]:
    """The files a partition replays, in capture order."""
    prefix = f"{layout.part_name(part)}/"
    out = []
    for f in plan.files:
        name = f.path.split("/", 2)[2]
        if name.startswith(prefix):
            first, last = f.mins.get(layout.COMMIT), f.maxs.get(layout.COMMIT)
            out.append(
                ReplayFile(
                    f.path,
                    int(first) if first is not None else 0,
                    None,
                    int(last) if last is not None and first is not None else None,
                )
            )
    for rel, url in plan.archived.items():
        name = rel.split("/", 2)[2]
        if name.startswith(prefix):
            first = _first_commit(Store(url), rel)
            out.append(ReplayFile(rel, first, url))
    return sorted(out, key=lambda s: (s.first, s.path))


def _first_commit(store: Store, rel: str) -> int:
    md = store.parquet_metadata(rel)
    spans = group_spans(md, layout.COMMIT)
    return min((s[0] for s in spans if s is not None), default=0)


def boundaries(plan: CapturePlan, part: int, partitions: int) -> dict[int, Boundary]:
    """Each commit's boundary as this partition repeats it (close events of its sources)."""
    out = {}
    for c in plan.commits:
        close = tuple(
            e
            for e in c.close
            if not e.get("sources") or part in partitions_of(list(e["sources"]), partitions)
        )
        out[c.n] = Boundary(c.n, c.end_of_run, close)
    return out


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
        sources: list[ReplayFile],
        bounds: dict[int, Boundary],
        resume: Position | None,
        pace_origin: int | None,
        clock: Clock = utc_now,
    ) -> None:
        self._store, self._spec, self._part = store, spec, part
        self._clock = clock
        self._sources, self._bounds = sources, bounds
        self._pos: Position = resume or (0, 0, 0, None, 0)
        self._items = self._iterate()
        self._origin = pace_origin or 0  # event time paced from (only used with a speed)
        self._speed = spec.speed or 1.0
        self._wall0 = clock()
        self._pending: list[pa.Table | Boundary] = []
        self._due: datetime | None = None
        self._stores: dict[str, Store] = {}

    def _iterate(self) -> Iterator[tuple[Position, pa.Table | Boundary]]:
        """Items in capture order, each with the position just after it. A commit's
        boundary is due after its last readings in this partition; a commit that only closed
        windows has its boundary where it falls among the others."""
        closing = sorted(n for n, b in self._bounds.items() if b.close)
        first_file, first_batch, first_item, current, seen = self._pos

        def due(n: int | None) -> list[Boundary]:
            """Boundaries that come before readings of commit ``n`` (None: the end)."""
            nonlocal current, seen
            if n is not None and n == current:
                return []
            upto = n if n is not None else max([*self._bounds, seen]) + 1
            out = [c for c in closing if seen < c < upto and c != current]
            if current is not None:
                out.append(current)
            current, seen = n, max(seen, upto - 1)
            return [self._bounds[c] for c in sorted(out) if c in self._bounds]

        for f in range(first_file, len(self._sources) + 1):
            last = f == len(self._sources)  # the end: what is due after every file
            batches = iter([(None, 0)]) if last else self._batches(self._sources[f])
            for b, (table, one) in enumerate(batches):
                if (f, b) < (first_file, first_batch):
                    continue
                state = (current, seen)  # (the position of an item keeps its batch's start)
                items: list[pa.Table | Boundary] = []
                if table is None:
                    items += due(None)
                elif one is not None:  # a file of one commit
                    items += due(one)
                    items.append(self._restrict(table))
                else:
                    commit = table.column(layout.COMMIT).to_numpy()
                    cuts = [0, *(np.flatnonzero(np.diff(commit)) + 1).tolist(), len(commit)]
                    for lo, hi in itertools.pairwise(cuts):
                        items += due(int(commit[lo]))
                        items.append(self._restrict(table.slice(lo, hi - lo)))
                skip = first_item if (f, b) == (first_file, first_batch) else 0
                for i in range(skip, len(items)):
                    yield (f, b, i + 1, *state), items[i]

    def _batches(self, src: ReplayFile) -> Iterator[tuple[pa.Table, int | None]]:
        """A file's readings (ids as the file's own dictionaries: the views group by them
        without hashing a string per reading), with their commit numbers — the one commit of
        a file that holds one, else a ``commit`` column; row groups outside the time range are
        not read."""
        store = self._store if src.url is None else self._cold(src.url)
        pf = pq.ParquetFile(
            store.arrow_fs.open_input_file(store.path(src.path)), read_dictionary=ID_COLUMNS
        )
        groups = [
            g
            for g, span in enumerate(group_spans(pf.metadata))
            if not outside(span, self._spec.start, self._spec.until)
        ]
        if not groups:
            return
        one = src.first if src.last == src.first else None
        names = [n for n in _READ if n in pf.schema_arrow.names]
        if one is not None:
            names = [n for n in names if n != layout.COMMIT]
        for rb in pf.iter_batches(
            batch_size=self._spec.batch_rows, row_groups=groups, columns=names
        ):
            yield layout.loaded(pa.Table.from_batches([rb]), _WITH_COMMIT), one

    def _cold(self, url: str) -> Store:
        """The archive store at ``url`` (one per replay partition)."""
        if url not in self._stores:
            self._stores[url] = Store(url)
        return self._stores[url]

    def _restrict(self, table: pa.Table) -> pa.Table:
        table = conform(table, ENCODED_READINGS)  # (a trace id the file lacks: null)
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
        now = self._clock()
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
    """Replay a capture (see module docstring). Opens nothing until partitions are built.

    ``clock`` is the wall clock pacing reads (a module-level function: the source is pickled);
    a paced partition never sleeps, it asks Bytewax to wake it (``next_awake``) at the time of
    that clock its next slice is due.
    """

    def __init__(self, store: Store, spec: ReplaySpec, *, clock: Clock = utc_now) -> None:
        self.store, self.spec, self.clock = store, spec, clock
        self._read: tuple[int, CapturePlan, int | None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"store": self.store, "spec": self.spec, "clock": self.clock, "_read": None}

    def _capture(self) -> tuple[int, CapturePlan, int | None]:
        """The capture's partition count, what the replay reads of it, and where pacing
        starts: read once per process (every partition of a worker shares them)."""
        if self._read is None:
            meta = open_capture(self.store, self.spec.capture)
            plan = capture_plan(self.store, self.spec.capture, self.spec.upto)
            origin = None
            if self.spec.speed is not None:
                origin = self.spec.start
                if origin is None:
                    span = time_range(self.store, self.spec.capture)
                    origin = span[0] if span else 0
            self._read = (meta.partitions, plan, origin)
        return self._read

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
        partitions, plan, origin = self._capture()
        return _CapturePartition(
            self.store,
            self.spec,
            part,
            part_sources(plan, part),
            boundaries(plan, part, partitions),
            resume_state,
            origin,
            self.clock,
        )
