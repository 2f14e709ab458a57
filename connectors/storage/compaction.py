"""Compaction and clean-up: Delta's ``optimize`` and ``vacuum``, done the way a capture needs.

A live session commits every second, so a capture collects one small file per partition and
cycle. ``compact`` rewrites each partition's runs of consecutive small files (in capture
order) into files of up to ``target_rows`` readings and commits them as one Delta commit that
removes the small files and adds the new ones (``dataChange`` false: the same rows). Readers
of any version see every reading once; replay keeps the capture's order, since every reading
carries its commit number and a new file is named after the first file it replaces (files
sort by their first commit, then by name). The commit takes no number: it changes no reading,
so it conflicts with no run (only with another compaction of the same files).

``vacuum`` deletes what no version younger than the retention (7 days by default) needs: files
compactions and archiving removed, and files no commit ever added (what crashed or beaten runs
left, older than the retention: so it must exceed the longest run, whose commit otherwise
finds its files gone and commits nothing), in the capture, its views, their late readings and
its documents; and the bookkeeping folders no current state refers to and nothing was written
in within the retention.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from obsflow.connectors.algorithms.partitions import conform
from obsflow.connectors.datasets.capture import CAPTURE_STORED
from obsflow.connectors.datasets.capture_source import CapturePlan, part_sources
from obsflow.connectors.datasets.views import view_base
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.ids import is_name
from obsflow.connectors.storage import commits, layout, table_writes, tables
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import FileEntry, TableChange

ROW_GROUP = 1 << 17


@dataclass(frozen=True)
class CompactResult:
    before: int  # capture files compacted
    after: int  # files written in their place
    rows: int
    version: int | None  # the capture table's version that holds them


@dataclass(frozen=True)
class VacuumResult:
    files: int  # data files deleted
    folders: int  # bookkeeping folders deleted


def compact(
    store: Store, capture: str, run: str, *, target_rows: int = 1 << 20, small: int | None = None
) -> CompactResult:
    """Compact the capture's small files (under ``small`` rows, default a quarter of
    ``target_rows``), partition by partition, as one commit."""
    if target_rows < 2:
        raise ConfigError("--target-rows must be at least 2")
    small = small or max(1, target_rows // 4)
    commits.finish_pending(store, capture)  # (its files are final before they are merged)
    table = layout.capture_dir(capture)
    snap = tables.snapshot(store, table)
    if snap is None:
        raise ConfigError(f"no capture {capture!r} in {store.uri()}")
    entries = {f.path: f for f in snap.files}
    plan = CapturePlan(snap.files, (), {})
    parts = sorted({int(f.path.split("/")[2][5:9]) for f in snap.files})
    groups: list[list[FileEntry]] = []
    for part in parts:
        pending: list[FileEntry] = []
        rows = 0
        for src in part_sources(plan, part):
            f = entries[src.path]
            fits = f.rows < small
            if fits and rows + f.rows <= target_rows:
                pending.append(f)
                rows += f.rows
                continue
            if len(pending) > 1:
                groups.append(pending)
            pending, rows = ([f], f.rows) if fits else ([], 0)
        if len(pending) > 1:
            groups.append(pending)
    if not groups:
        return CompactResult(0, 0, 0, None)
    adds = []
    for olds in groups:
        first = olds[0].path.removesuffix(".parquet")
        new = f"{first}.c{run}.parquet"  # sorts where its first file did
        rows_ = conform(store.scan([f.path for f in olds], schema=CAPTURE_STORED), CAPTURE_STORED)
        adds.append(table_writes.write_file(store, table, new, rows_, layout.STATS, stored=True))
    change = TableChange(
        table,
        CAPTURE_STORED,
        adds=adds,
        removes=[f.path for g in groups for f in g],
        info={"kind": "compact", "run": run},
        data_change=False,
    )
    try:
        table_writes.commit(store, change, app=capture, n=None)
    except tables.ConflictError:
        for written in adds:
            store.delete(written.path)
        raise
    after = tables.snapshot(store, table)
    return CompactResult(
        sum(len(g) for g in groups),
        len(groups),
        sum(a.rows for a in adds),
        None if after is None else after.version,
    )


def vacuum(
    store: Store, capture: str, *, retention_hours: float = tables.TIME_TRAVEL_HOURS
) -> VacuumResult:
    """Delete what no version younger than ``retention_hours`` needs (module docstring)."""
    if retention_hours < 1:
        raise ConfigError(
            "the retention must be at least 1h: files younger than that may belong to a run "
            "still writing"
        )
    commits.finish_pending(store, capture)  # (what their commits name is then in the tables)
    head = commits.last_commit(store, layout.capture_dir(capture), capture)
    views = [
        name
        for name in store.listdir("views")
        if store.exists(f"views/{name}/{tables.LOG_DIR}")
        and tables.snapshot(store, layout.view_dir(name)) is not None
        and _capture_of(store, name) == capture
    ]
    deleted = 0
    for table in (
        layout.capture_dir(capture),
        layout.documents_dir(capture),
        *(layout.view_dir(v) for v in views),
        *(layout.late_dir(v) for v in views),
    ):
        deleted += len(table_writes.vacuum(store, table, retention_hours=retention_hours))
    cutoff = datetime.now(UTC) - timedelta(hours=retention_hours)
    folders = 0
    keep = commits.state_runs(head.state) if head else set()
    folders += _drop_old(store, layout.capture_state_dir(capture), keep, cutoff)
    for v in views:
        keep = set(view_base(store, v).state.values())
        folders += _drop_old(store, layout.view_state_dir(v), keep, cutoff)
    return VacuumResult(deleted, folders)


def _capture_of(store: Store, view: str) -> str | None:
    snap = tables.snapshot(store, layout.view_dir(view))
    return None if snap is None else snap.description.get("capture")


def _drop_old(store: Store, folder: str, keep: set[str], cutoff: datetime) -> int:
    """Delete the run folders under ``folder`` not in ``keep`` in which nothing was written
    since ``cutoff`` (a run still going, or resumed, writes its state at its end: its folder
    is young however long ago the run began)."""
    n = 0
    for run in store.listdir(folder):
        if run in keep or not is_name(run):  # (not a run's folder: not ours to delete)
            continue
        written = store.newest(f"{folder}/{run}")
        if written is None or written < cutoff:
            store.delete(f"{folder}/{run}", recursive=True)
            n += 1
    return n
