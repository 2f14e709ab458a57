"""The capture: an append-only, partitioned reading log, a Delta table at ``captures/<name>/``.

Files are ``part-0003/<run>-<chunk>.parquet`` (``CAPTURE_TABLE_SCHEMA`` as stored), each in
arrival order; every reading carries the number of the commit that captured it, so the table
read in commit order is the capture's order. A source's readings always land in one partition
(a stable crc32 of its id), so its order is kept and replay can run partitions in parallel.
The table's description holds the partition count, fixed at creation. A run's bookkeeping —
next seq numbers, dedup memory — goes to ``_obsflow/captures/<name>/state/<run>/``, and the
commit names, per partition, the runs whose folders hold its current state.
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.algorithms.dedup import DEFAULT_HORIZON, Deduper
from obsflow.connectors.algorithms.partitions import ENCODED_SCHEMA, assign_seq, conform, encode_ids
from obsflow.connectors.datasets.dedup_index import Archive
from obsflow.connectors.errors import CaptureExistsError, ConfigError, StoreError
from obsflow.connectors.formats.schema import REJECT_SCHEMA
from obsflow.connectors.storage import layout, table_writes, tables
from obsflow.connectors.storage.commits import snapshot_as_of
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import DataFile, FileEntry, Snapshot

FORMAT_VERSION = 3
DEFAULT_PARTITIONS = 4
MAX_PARTITIONS = 1024

ORIGIN_COLUMNS = ("_origin", "_row", "_parent_seq")
"""Where each reading came from (and, for a feature derived from a payload, the payload
reading's seq); travels with readings up to the capture, is not stored."""
CAPTURE_STORED = layout.stored_schema(layout.CAPTURE_TABLE_SCHEMA)


def new_run_id() -> str:
    """A unique run id: UTC time plus random hex (its order means nothing: commits order)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass(frozen=True)
class CaptureMeta:
    name: str
    partitions: int
    created: str
    format: int = FORMAT_VERSION

    def description(self) -> dict[str, Any]:
        """What the capture table's description holds."""
        return {"kind": "capture", **self.__dict__}


DROPPED = "obsflow.dropped"
"""The Delta txn application id whose number is the capture's commit that dropped it
(``obsflow capture drop``): a capture whose last commit is that one holds nothing and is no
capture to anyone but time travel, until a run into its name commits again."""


def dropped(snap: Snapshot, name: str) -> bool:
    """Whether this version of capture ``name``'s table is one of a dropped capture."""
    at = snap.txn(DROPPED)
    return at > 0 and at == snap.txn(name)


def capture_snapshot(store: Store, name: str, *, as_of: Any = None) -> Snapshot | None:
    """A version of the capture's table — the latest, or ``as_of`` a commit number of the
    capture or a time — None if there is none (or the capture was dropped by then)."""
    snap = snapshot_as_of(store, layout.capture_dir(name), name, as_of)
    return None if snap is None or dropped(snap, name) else snap


def open_capture(store: Store, name: str, snap: Snapshot | None = None) -> CaptureMeta:
    """A capture's metadata (``StoreError`` if there is no such capture)."""
    snap = snap or capture_snapshot(store, name)
    if snap is None:
        raise StoreError(
            f"no capture {name!r} in {store.uri()} (captures: "
            f"{', '.join(list_captures(store)) or 'none'})"
        )
    d = snap.description
    return CaptureMeta(
        name=name,
        partitions=int(d["partitions"]),
        created=str(d.get("created", "")),
        format=int(d.get("format", FORMAT_VERSION)),
    )


def no_version(store: Store, name: str, as_of: Any) -> StoreError:
    """The error for a read of capture ``name`` that found no version ``as_of``: there is no
    such capture, or it did not exist yet then."""
    open_capture(store, name)  # (raises: no such capture)
    return StoreError(f"capture {name!r} did not exist then (--as-of {as_of})")


def capture_exists(store: Store, name: str) -> bool:
    """Whether capture ``name`` is there (a dropped one is not)."""
    snap = tables.snapshot(store, layout.capture_dir(name))
    return snap is not None and not dropped(snap, name)


def planned_capture(store: Store, name: str, partitions: int | None) -> CaptureMeta:
    """The capture a run writes: the existing one (its partition count is fixed), or a new one
    with ``partitions`` (default 4), created when the run commits."""
    snap = tables.snapshot(store, layout.capture_dir(name))
    if snap is not None:  # (a dropped capture's name keeps its table, so its partitions)
        meta = open_capture(store, name, snap)
        if partitions is not None and partitions != meta.partitions:
            raise CaptureExistsError(
                f"capture {name!r} has {meta.partitions} partitions, not {partitions}; "
                "leave out --partitions or use a new capture name"
            )
        return meta
    n = DEFAULT_PARTITIONS if partitions is None else partitions
    if not 1 <= n <= MAX_PARTITIONS:
        raise ConfigError(f"--partitions must be 1..{MAX_PARTITIONS}, not {n}")
    return CaptureMeta(name=name, partitions=n, created=datetime.now(UTC).isoformat())


def list_captures(store: Store) -> list[str]:
    """The store's captures (not those dropped)."""
    return [
        n
        for n in store.listdir("captures")
        if store.exists(f"captures/{n}/{tables.LOG_DIR}") and capture_exists(store, n)
    ]


@dataclass(frozen=True)
class StateRef:
    """Where a partition's bookkeeping is after a run: the runs whose ``state/<run>/`` folders
    hold it (the first one's holds the partition's state document)."""

    table: str  # the capture's (or a view's) store-relative root
    part: int
    runs: tuple[str, ...]


@dataclass
class WriterState:
    """Everything a capture partition needs to resume exactly (a Bytewax snapshot)."""

    part: int
    run_id: str
    chunk: int
    next_seq: dict[str, int]
    dedup: Deduper
    written: list[DataFile] = field(default_factory=list)  # files not reported yet


MAX_KEPT_MEMORIES = 64
"""Partitions whose dedup memory this process keeps after writing it (see ``_MEMORY``)."""
_MEMORY: dict[tuple[str, str, int], tuple[str, Deduper]] = {}
"""(store, capture, partition) -> (the run that wrote the partition's state, its dedup memory
as that run left it): valid while that run's state is the committed one, so a live session's
next cycle need not read the memory back."""
_MEMORY_LOCK = threading.Lock()  # worker threads close their partitions at once
_WRITES = ThreadPoolExecutor(max_workers=1, thread_name_prefix="obsflow-capture-write")
"""Where capture objects are written, off the dataflow's worker threads (``flush``)."""
_IN_FLIGHT = threading.BoundedSemaphore(1)
"""Capture objects written at once in this process. One overlaps the writing with the work
well enough; one per partition held up to four objects' tables and encoders at once, and peak
memory grew with the length of the input until that overlap set in (``bench_memory.py``)."""


@dataclass(frozen=True)
class SavedDedup:
    """Where a partition's dedup state is saved: ``ranges`` names the run whose folder holds
    ``.dedup-ranges.parquet`` (one range per key space). States written before ranges name a
    whole memory (``.dedup.parquet`` in run ``base``'s folder) plus the deltas of the runs
    after it (``.dedup-delta.parquet``); they are still read, and reduced to their ranges."""

    ranges: str | None = None
    base: str | None = None
    deltas: tuple[str, ...] = ()

    @classmethod
    def of(cls, state: dict[str, Any]) -> SavedDedup:
        doc = state.get("dedup", {})
        return cls(doc.get("ranges"), doc.get("base"), tuple(map(str, doc.get("deltas", ()))))

    def to_json(self) -> dict[str, Any]:
        if self.ranges is None and self.base is not None:  # (an old state, carried on)
            return {"base": self.base, "deltas": list(self.deltas)}
        return {"ranges": self.ranges}

    @property
    def runs(self) -> tuple[str, ...]:
        if self.ranges is not None:
            return (self.ranges,)
        return (*((self.base,) if self.base else ()), *self.deltas)


@dataclass(frozen=True)
class Appended:
    rows: pa.Table  # ENCODED_SCHEMA: the readings as captured (ids dictionary-encoded)
    conflicts: pa.Table  # REJECT_SCHEMA: same identity as a kept reading, other content
    duplicates: int
    origins: dict[str, int]  # readings accepted per input (its ``_origin``)


class PartitionWriter:
    """Writes one capture partition of one run: dedup, seq numbers, buffered Parquet files.

    Files get deterministic names per (run, chunk) in the capture table's folder, invisible
    until the run's commit adds them, so a resumed run rewrites exactly the files it had not
    snapshotted (``discard_after`` removes the rest). Seq numbers and dedup memory start from
    the state of the capture's commit ``n - 1`` (``state``: the runs whose folders hold it) and
    are saved in this run's folder at ``close``. Every reading is marked with the number ``n``
    this run commits as.
    """

    def __init__(
        self,
        store: Store,
        capture: str,
        part: int,
        run_id: str,
        *,
        n: int,
        state: list[str] | None = None,
        horizon: int = DEFAULT_HORIZON,
        resume: WriterState | None = None,
        target_rows: int = 1 << 17,
        files: list[FileEntry] | None = None,
    ) -> None:
        self.store, self.capture, self.part, self.n = store, capture, part, n
        self.target_rows = target_rows
        self._files = files  # the partition's committed files (for old duplicates)
        committed = self._committed_state(state)
        self._saved = SavedDedup.of(committed)
        if resume is None:
            next_seq = {str(k): int(v) for k, v in committed.get("next_seq", {}).items()}
            dedup = self._load_dedup(horizon, str(committed.get("run", "")))
            resume = WriterState(part, run_id, 0, next_seq, dedup)
            # A run restarted before its first snapshot starts over: drop what the earlier
            # attempt wrote for this partition.
            self.state = resume
            self.discard_after(0)
        self.state = resume
        self._archive: Archive | None = None  # loaded when a reading older than memory comes
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._writing: Future[DataFile] | None = None

    def _committed_state(self, runs: list[str] | None) -> dict[str, Any]:
        """The partition's bookkeeping as the capture's last commit left it."""
        if not runs:
            return {}
        rel = layout.capture_state(self.capture, runs[0], self.part, ".json")
        state: dict[str, Any] = self.store.read_json(rel)
        return state

    def _load_dedup(self, horizon: int, written_by: str) -> Deduper:
        """The dedup memory the capture's last commit left: kept in this process if this
        process wrote it (a live session's next cycle), else its saved ranges (or, from a state
        of the format before ranges, the identities it lists, reduced to ranges)."""
        with _MEMORY_LOCK:
            kept = _MEMORY.pop((self.store.url, self.capture, self.part), None)
        if kept is not None and kept[0] == written_by and kept[1].horizon == horizon:
            return kept[1]
        saved = self._saved
        if horizon <= 0:
            return Deduper(horizon=horizon)
        if saved.ranges is not None:
            return Deduper.from_table(self.store.read_parquet(self._ranges(saved.ranges)), horizon)
        tables_ = []
        if saved.base:
            tables_.append(self.store.read_parquet(self._base(saved.base)))
        tables_ += [self.store.read_parquet(self._delta(run)) for run in saved.deltas]
        if not tables_:
            return Deduper(horizon=horizon)
        return Deduper.from_table(pa.concat_tables(tables_, promote_options="permissive"), horizon)

    def _ranges(self, run: str) -> str:
        return layout.capture_state(self.capture, run, self.part, ".dedup-ranges.parquet")

    def _base(self, run: str) -> str:
        return layout.capture_state(self.capture, run, self.part, ".dedup.parquet")

    def _delta(self, run: str) -> str:
        return layout.capture_state(self.capture, run, self.part, ".dedup-delta.parquet")

    def append(self, table: pa.Table) -> Appended:
        """Drop duplicates, set conflicts aside, number and buffer the rest."""
        origin = {c: table.column(c) for c in ORIGIN_COLUMNS if c in table.column_names}
        readings = encode_ids(table.drop_columns(list(origin)))
        accept, conflict = self._dedup(readings)
        n_accept, n_conflict = int(accept.sum()), int(conflict.sum())
        conflicts = REJECT_SCHEMA.empty_table()
        if n_conflict:
            conflicts = conflict_rejects(
                readings.filter(pa.array(conflict)),
                {c: v.filter(pa.array(conflict)) for c, v in origin.items()},
            )
        if n_accept < readings.num_rows:
            readings = readings.filter(pa.array(accept))
        origins = {}
        if "_origin" in origin and n_accept:
            counts = pc.value_counts(origin["_origin"].filter(pa.array(accept)).cast(pa.string()))
            origins = {str(c["values"]): int(c["counts"]) for c in counts.to_pylist()}
        if "_parent_seq" in origin:  # a derived feature numbered like its payload reading
            parent = origin["_parent_seq"].filter(pa.array(accept))
            readings = readings.set_column(1, "seq", pc.coalesce(readings.column("seq"), parent))
        rows = conform(assign_seq(readings, self.state.next_seq), ENCODED_SCHEMA)
        if rows.num_rows:
            self._buffer.append(rows)
            self._buffered += rows.num_rows
            if self._buffered >= self.target_rows:
                self.flush()
        return Appended(rows, conflicts, table.num_rows - n_accept - n_conflict, origins)

    def _dedup(self, readings: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(accept, conflict): against the dedup memory and, for keys it may have forgotten,
        against the committed capture itself (``connectors.datasets.dedup_index``)."""
        return self.state.dedup.check(readings, self._in_capture)

    def _in_capture(self, readings: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(duplicate, conflict) masks of readings the partition's committed files hold."""
        if self._archive is None:
            files = self._files
            if files is None:
                snap = capture_snapshot(self.store, self.capture)
                files = [] if snap is None else snap.under(layout.part_name(self.part) + "/")
            self._archive = Archive(self.store, files)
        return self._archive.check(readings)

    def _file(self, chunk: int) -> str:
        return layout.capture_file(self.capture, self.part, self.state.run_id, chunk)

    def flush(self) -> None:
        """Write buffered rows as the next chunk file (not yet part of the table).

        The write runs on a background thread (Parquet encoding and the upload release the
        GIL, so it overlaps the next batches' work); at most one write per partition is in
        flight, and ``wait`` (called by ``snapshot`` and ``close``) makes them durable."""
        if not self._buffer:
            return
        # Ids stay dictionaries: the statistics are bounded by the dictionaries (not a pass over
        # every string), and the writer thread turns them into text.
        table = layout.with_commit(pa.concat_tables(self._buffer), self.n)
        self._buffer, self._buffered = [], 0
        self.wait()
        _IN_FLIGHT.acquire()
        rel = self._file(self.state.chunk)
        try:
            self._writing = _WRITES.submit(
                lambda: table_writes.write_file(
                    self.store,
                    layout.capture_dir(self.capture),
                    rel,
                    table,
                    layout.STATS,
                )
            )
        except BaseException:
            _IN_FLIGHT.release()
            raise
        self._writing.add_done_callback(lambda _: _IN_FLIGHT.release())
        self.state.chunk += 1

    def wait(self) -> None:
        """Wait for the file being written, if any (its error is raised here)."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            self.state.written.append(writing.result())

    def take_written(self) -> list[DataFile]:
        """The files written since the last call (for the run's commit)."""
        out, self.state.written = self.state.written, []
        return out

    def close(self) -> StateRef:
        """Flush, and save the seq numbers and the dedup ranges (one per key space: a small
        fraction of the capture) for the next run in this run's folder. The memory is also
        kept in this process for the next cycle. Returns where the partition's state now is."""
        self.flush()
        self.wait()
        dedup, saved, run = self.state.dedup, self._saved, self.state.run_id
        if dedup.horizon > 0:  # (with dedup off, the state before stays as it was)
            self.store.write_parquet(self._ranges(run), dedup.to_table())
            saved = SavedDedup(ranges=run)
        self.store.write_json(
            layout.capture_state(self.capture, run, self.part, ".json"),
            {"next_seq": self.state.next_seq, "run": run, "dedup": saved.to_json()},
        )
        with _MEMORY_LOCK:
            _MEMORY[(self.store.url, self.capture, self.part)] = (run, dedup)
            while len(_MEMORY) > MAX_KEPT_MEMORIES:
                del _MEMORY[next(iter(_MEMORY))]
        runs = tuple(dict.fromkeys((run, *saved.runs)))
        return StateRef(layout.capture_dir(self.capture), self.part, runs)

    def snapshot(self) -> WriterState:
        """Flush (so "chunks below n are durable" is true), then copy the state."""
        self.flush()
        self.wait()
        return copy.deepcopy(self.state)

    def discard_after(self, chunk: int) -> int:
        """Delete this run's files numbered ``chunk`` or later; returns how many."""
        folder = layout.capture_part_dir(self.capture, self.part)
        removed = 0
        prefix = f"{self.state.run_id}-"
        for name in self.store.listdir(folder):
            if name.startswith(prefix):
                m = layout.CAPTURE_FILE_RE.match(f"{layout.part_name(self.part)}/{name}")
                if m and m["run"] == self.state.run_id and int(m["chunk"]) >= chunk:
                    self.store.delete(f"{folder}/{name}")
                    removed += 1
        return removed


def conflict_rejects(readings: pa.Table, origin: dict[str, pa.ChunkedArray]) -> pa.Table:
    """Dead-letter rows for readings that conflict with an earlier reading's identity."""
    n = readings.num_rows
    raws = []
    for r in readings.to_pylist():  # rare path: one dict per conflicting reading
        r["time"] = r["time"].isoformat() if r["time"] is not None else None
        raws.append(json.dumps(r, default=str))
    return pa.table(
        {
            "origin": origin["_origin"].cast(pa.string())
            if "_origin" in origin
            else pa.nulls(n, pa.string()),
            "row": origin["_row"] if "_row" in origin else pa.nulls(n, pa.int64()),
            "reason": pa.repeat("conflict", n).cast(pa.string()),
            "message": pa.repeat(
                "same identity as an earlier reading (source and seq, or source, "
                "channel and time) with other content; the first one was kept",
                n,
            ).cast(pa.string()),
            "raw": pa.array(raws, pa.string()),
        },
        schema=REJECT_SCHEMA,
    )


def capture_files(
    store: Store, name: str, parts: list[int] | None = None, snap: Snapshot | None = None
) -> list[FileEntry]:
    """The files of a capture version (of some partitions), sorted by path."""
    snap = snap or capture_snapshot(store, name)
    if snap is None:
        open_capture(store, name)  # (says there is no such capture)
        return []
    if parts is None:
        return list(snap.files)
    return [f for p in sorted(set(parts)) for f in snap.under(layout.part_name(p) + "/")]


@dataclass(frozen=True)
class CaptureInfo:
    name: str
    partitions: int
    files: int
    rows: int
    bytes: int
    sources: int
    first: str | None
    last: str | None
    created: str
    commits: int = 0
    version: int = 0


def capture_info(store: Store, name: str, *, as_of: Any = None) -> CaptureInfo:
    """Summary of a capture version from its files' statistics plus one read of the source
    column."""
    snap = capture_snapshot(store, name, as_of=as_of)
    if snap is None:
        raise no_version(store, name, as_of)
    meta = open_capture(store, name, snap)
    files = list(snap.files)
    spans = [s for f in files if (s := f.span("time_ns")) is not None]
    sources = 0
    if snap.rows:
        t = store.scan([f.path for f in files], columns=["source"])
        sources = pc.count_distinct(t.column("source")).as_py()
    first = _iso(min(s[0] for s in spans)) if spans else None
    last = _iso(max(s[1] for s in spans)) if spans else None
    return CaptureInfo(
        name,
        meta.partitions,
        len(files),
        snap.rows,
        sum(f.size for f in files),
        sources,
        first,
        last,
        meta.created,
        snap.txn(name),
        snap.version,
    )


def _iso(ns: int) -> str:
    return str(pa.scalar(ns, pa.timestamp("ns", tz="UTC")).as_py().isoformat())


# -- inputs already captured ---------------------------------------------------------------


def input_fingerprint(url: str) -> str:
    """sha256 of an input's bytes (of the URL itself for a ``sim://`` input)."""
    from obsflow.connectors.sources.files import open_input  # files imports bytewax: keep this lazy

    h = hashlib.sha256()
    if url.startswith("sim://"):
        h.update(url.encode())
        return h.hexdigest()
    try:
        with open_input(url) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except FileNotFoundError:
        raise ConfigError(f"input {url!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(
            f"input {url!r} is a folder, not a file: name the files in it (FOLDER/*.parquet)"
        ) from None
    return h.hexdigest()


def captured_inputs(store: Store, capture: str) -> dict[str, dict[str, Any]]:
    """Fingerprint -> record of every input a committed run captured into ``capture``."""
    folder = layout.inputs_dir(capture)
    return {
        n.removesuffix(".json"): store.read_json(f"{folder}/{n}")
        for n in store.listdir(folder)
        if n.endswith(".json")
    }


_CONTRACT: type[table_writes.StagedWriter] = PartitionWriter  # (mypy holds it to the contract)
