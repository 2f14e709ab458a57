"""Delta Lake tables in a store: snapshots to read (conditional commits to write:
``connectors.storage.table_writes``).

Every table of a store — captures, views, late readings, dead letters, documents — is a Delta
table: Parquet data files plus a ``_delta_log`` of numbered commits. obsflow writes its own
Parquet files into the table's folder, where no reader sees them until a commit adds them, and
commits through ``deltalake`` (delta-rs): each commit is one conditional put of the log's next
entry, so one writer wins each version.

Readers take a ``Snapshot``: one table version, its files with their statistics, its
description; they never list folders.

A ``memory://`` store lives in a folder of this process (under ``/dev/shm`` where there is
one) so that delta-rs, which cannot see Python's in-memory filesystems, can open its tables.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from obsflow.connectors.errors import StoreError

if TYPE_CHECKING:
    from deltalake import DeltaTable

    from obsflow.connectors.storage.store import Store

LOG_DIR = "_delta_log"
KEEP_HISTORY = {
    # A capture's log is its commit history (replay repeats it): never expire it.
    "delta.enableExpiredLogCleanup": "false",
    "delta.logRetentionDuration": "interval 36500 days",
    # Opening a table reads the log entries since its last checkpoint: keep them few (a
    # live session commits every second).
    "delta.checkpointInterval": "10",
}
TIME_TRAVEL_HOURS = 7 * 24
"""How long files a commit removed stay readable (``vacuum``'s default retention)."""


class ConflictError(StoreError):
    """A table changed under a writer: what it meant to replace is gone, or another commit
    took the version it had checked."""


class FencedError(StoreError):
    """A commit's fence did not hold: the table's number of the fencing application is not
    the one the writer holds (``TableChange.fence``), so another writer took it over."""


@dataclass(frozen=True)
class DataFile:
    """A Parquet file written into a table's folder, not yet committed: what its ``add``
    action needs. ``table`` and ``path`` are store-relative (the table's root, the file)."""

    table: str
    path: str
    size: int
    rows: int
    stats: str  # Delta's per-file statistics, as JSON

    @property
    def name(self) -> str:
        """The file's path inside its table."""
        return self.path[len(self.table) + 1 :]


@dataclass(frozen=True)
class FileEntry:
    """A file of a table version with the statistics of its integer columns."""

    path: str  # store-relative
    size: int
    rows: int
    mins: Mapping[str, int] = field(default_factory=dict)
    maxs: Mapping[str, int] = field(default_factory=dict)

    def span(self, column: str) -> tuple[int, int] | None:
        lo, hi = self.mins.get(column), self.maxs.get(column)
        return None if lo is None or hi is None else (int(lo), int(hi))


@dataclass(frozen=True)
class Snapshot:
    """One version of a table (see the module docstring)."""

    table: str  # store-relative root
    version: int
    files: tuple[FileEntry, ...]
    description: dict[str, Any]
    delta: Any = field(default=None, repr=False, compare=False)  # the DeltaTable read
    store: Any = field(default=None, repr=False, compare=False)

    def txn(self, app: str) -> int:
        """The last number application ``app`` committed to this version (0: none)."""
        delta = self.delta
        if delta is None:
            return 0
        if delta.version() != self.version:  # (the thread's table object moved on since)
            delta = open_table(self.store, self.table, self.version)
        version = delta.transaction_version(app)
        return 0 if version is None else int(version)

    def under(self, prefix: str) -> list[FileEntry]:
        """Files whose path inside the table starts with ``prefix`` (a partition folder)."""
        start = f"{self.table}/{prefix}"
        return [f for f in self.files if f.path.startswith(start)]

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


@dataclass
class TableChange:
    """What one run does to one table in its commit."""

    table: str  # store-relative root
    schema: pa.Schema  # the table's schema (as stored)
    adds: list[DataFile] = field(default_factory=list)
    removes: list[str] = field(default_factory=list)  # store-relative paths
    description: dict[str, Any] | None = None  # set: the table is created if missing
    overwrite: bool = False  # every file the table holds is removed
    info: dict[str, Any] = field(default_factory=dict)  # kept in the commit's commitInfo
    data_change: bool = True  # False: a compaction (the same rows, other files)
    # More Delta ``txn`` entries committed with the change: application id -> number (a live
    # session's broker positions, its token).
    txns: dict[str, int] = field(default_factory=dict)
    # (application id, number): committed only while the table holds exactly that number
    # for that application (0: none) — checked in the same conditional commit.
    fence: tuple[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "schema": _schema_json(self.schema),
            "adds": [
                {"path": a.path, "size": a.size, "rows": a.rows, "stats": a.stats}
                for a in self.adds
            ],
            "removes": list(self.removes),
            "description": self.description,
            "overwrite": self.overwrite,
            "info": self.info,
            "data_change": self.data_change,
            "txns": dict(self.txns),
            "fence": None if self.fence is None else list(self.fence),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TableChange:
        table = str(doc["table"])
        return cls(
            table=table,
            schema=_schema_of(doc["schema"]),
            adds=[
                DataFile(table, str(a["path"]), int(a["size"]), int(a["rows"]), str(a["stats"]))
                for a in doc.get("adds", ())
            ],
            removes=[str(r) for r in doc.get("removes", ())],
            description=doc.get("description"),
            overwrite=bool(doc.get("overwrite", False)),
            info=dict(doc.get("info", {})),
            data_change=bool(doc.get("data_change", True)),
            txns={str(k): int(v) for k, v in (doc.get("txns") or {}).items()},
            fence=None if not doc.get("fence") else (str(doc["fence"][0]), int(doc["fence"][1])),
        )


def _schema_json(schema: pa.Schema) -> str:
    return str(schema.serialize().to_pybytes().hex())


def _schema_of(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(text)))


# -- reading ---------------------------------------------------------------------------------


def deltalake_module() -> Any:
    import deltalake  # (heavy: imported on first use)

    return deltalake


_OPENED = threading.local()
"""Per thread: (store URL, table) -> the table as last opened, brought up to date on reuse
(reading only the log entries since: a fraction of opening it anew), and the signature of its
first log entry, which tells the table from one deleted and made anew at the same place."""


def open_table(store: Store, table: str, version: int | None = None) -> DeltaTable | None:
    """The table at ``version`` (the latest: None), or None if there is no such table."""
    dl = deltalake_module()
    uri, options = store.table_location(table)
    cache: dict[tuple[str, str], tuple[DeltaTable, Any]] = _OPENED.__dict__.setdefault("tables", {})
    key = (store.url, table)
    first = f"{table}/{LOG_DIR}/{0:020d}.json"
    if key in cache:
        known, signature = cache[key]
        if store.signature(first) != signature:  # (deleted, or made anew)
            del cache[key]
        elif version is not None and int(known.version()) == version:
            return known  # (the version asked for is the one last read)
        elif version is None:
            # Versions are numbered without gaps and a log entry, once written, stays: while
            # the next one does not exist the table is current (a stat, not a listing).
            if store.exists(f"{table}/{LOG_DIR}/{int(known.version()) + 1:020d}.json"):
                store.call_table("read", f"{table}/{LOG_DIR}", known.update_incremental)
            return known

    def load() -> DeltaTable | None:
        try:
            found: DeltaTable = dl.DeltaTable(uri, version=version, storage_options=options)
        except dl.exceptions.TableNotFoundError:
            return None
        return found

    signature = store.signature(first)
    opened = store.call_table("read", f"{table}/{LOG_DIR}", load)
    if version is None and opened is not None:
        if len(cache) > 256:
            cache.clear()
        cache[key] = (opened, signature)
    return opened


def exists(store: Store, table: str) -> bool:
    """Whether a table has been created: its log's first entry is there (obsflow's tables
    keep their whole log), else whether it opens (one of another tool's)."""
    if store.exists(f"{table}/{LOG_DIR}/{0:020d}.json"):
        return True
    return store.exists(f"{table}/{LOG_DIR}") and open_table(store, table) is not None


def snapshot(store: Store, table: str, *, as_of: int | datetime | None = None) -> Snapshot | None:
    """A version of ``table`` (the latest; a Delta version number; the version current at a
    time: the newest whose commit time is at or before it), or None if the table did not
    exist then."""
    if isinstance(as_of, datetime):
        # By the commit times the log records (what `history` shows), not by the log files'
        # modification times, which delta-rs goes by: a file is written after the time its
        # commit records (under load, by more than a millisecond), and S3 lists it to the
        # second.
        ms = as_of.timestamp() * 1000
        found = next(
            (e["version"] for e in entries(store, table) if int(e.get("timestamp", 0)) <= ms),
            None,
        )
        return None if found is None else snapshot(store, table, as_of=int(found))
    dt = open_table(store, table, as_of)
    if dt is None:
        return None
    return _snapshot_of(store, table, dt)


def _snapshot_of(store: Store, table: str, dt: DeltaTable) -> Snapshot:
    # A version never changes: its files are listed once per table object (a run reads the
    # same version of a table in several places), kept on the object itself so that a table
    # deleted and made anew is never answered from the old one's.
    version = int(dt.version())
    known: dict[int, Snapshot] | None = getattr(dt, "_obsflow_snapshots", None)
    if known is not None and version in known:
        return known[version]

    def read() -> Snapshot:
        adds = pa.table(dt.get_add_actions(flatten=True))
        files = _entries(table, adds)
        try:
            description = json.loads(dt.metadata().description or "{}")
        except ValueError:
            description = {}
        return Snapshot(table, version, files, description, dt, store)

    found = store.call_table("read", table, read)
    with contextlib.suppress(AttributeError):  # (a table object that takes no attributes)
        # (the last version read: a run reads one)
        setattr(dt, "_obsflow_snapshots", {version: found})  # noqa: B010 - not a DeltaTable field
    return found


def _entries(table: str, adds: pa.Table) -> tuple[FileEntry, ...]:
    if adds.num_rows == 0:
        return ()
    names = adds.column_names
    ints = [
        n[4:]
        for n in names
        if n.startswith("min.") and pa.types.is_integer(adds.schema.field(n).type)
    ]
    cols = {c: adds.column(c).to_pylist() for c in ("path", "size_bytes", "num_records")}
    mins = {c: adds.column(f"min.{c}").to_pylist() for c in ints}
    maxs = {c: adds.column(f"max.{c}").to_pylist() for c in ints if f"max.{c}" in names}
    out = []
    for i, path in enumerate(cols["path"]):
        rows = cols["num_records"][i]
        out.append(
            FileEntry(
                f"{table}/{path}",
                int(cols["size_bytes"][i]),
                int(rows) if rows is not None else 0,
                {c: v[i] for c, v in mins.items() if v[i] is not None},
                {c: v[i] for c, v in maxs.items() if v[i] is not None},
            )
        )
    out.sort(key=lambda f: f.path)
    return tuple(out)


def entries(store: Store, table: str, *, version: int | None = None) -> Iterator[dict[str, Any]]:
    """The table's commits, newest first: Delta's commitInfo of each, with its ``version``.
    Read from the log entries themselves (every table of obsflow's keeps its whole log), a
    few at a time and more as the reader goes on: finding the last commit costs one read.
    ``version``: start there (else at the table's latest version)."""
    if version is None:
        dt = open_table(store, table)
        if dt is None:
            return
        version = int(dt.version())
    if store.local:  # (a local read is quicker than handing it to a thread)
        for v in range(version, -1, -1):
            info = log_entry(store, table, v)
            if info:
                yield {**info, "version": v}
        return
    batch = 1
    with ThreadPoolExecutor(max_workers=8) as pool:
        while version >= 0:
            versions = list(range(version, max(-1, version - batch), -1))
            infos = pool.map(lambda v: log_entry(store, table, v), versions)
            for v, info in zip(versions, infos, strict=True):
                if info:
                    yield {**info, "version": v}
            version -= batch
            batch = min(batch * 4, 64)


def history(
    store: Store, table: str, limit: int | None = None, *, version: int | None = None
) -> list[dict[str, Any]]:
    """The table's last ``limit`` commits (all: None), newest first (``entries``)."""
    return list(itertools.islice(entries(store, table, version=version), limit))


def log_entry(store: Store, table: str, version: int) -> dict[str, Any] | None:
    """The commitInfo of a table's log entry ``version`` (None: there is no such entry yet).
    One read of the entry, as Delta's protocol lays it out: for pollers that must not list."""
    try:
        data = store.read_bytes(f"{table}/{LOG_DIR}/{version:020d}.json", max_bytes=64 << 20)
    except FileNotFoundError:
        return None
    for line in data.splitlines():
        action = json.loads(line) if line.strip() else {}
        if "commitInfo" in action:
            info: dict[str, Any] = action["commitInfo"]
            return info
    return {}
