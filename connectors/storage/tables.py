"""Delta Lake tables in a store: snapshots to read, conditional commits to write.

Every table of a store — captures, views, late readings, dead letters, documents — is a Delta
table: Parquet data files plus a ``_delta_log`` of numbered commits. obsflow writes its own
Parquet files (``encode``: its tuned encodings, with the statistics Delta keeps per file) into
the table's folder, where no reader sees them until a commit adds them, and commits through
``deltalake`` (delta-rs): each commit is one conditional put of the log's next entry, so one
writer wins each version.

Readers take a ``Snapshot``: one table version, its files with their statistics, its
description; they never list folders. ``commit`` is the one way to change a table: it carries
a ``txn`` (application id, version) — the capture and its commit number — and is idempotent
on it (a table that already holds that number is left alone), it checks that every file it
removes is still in the table, and it commits on exactly the version it checked
(``max_commit_retries=0``), so a writer whose view of the table went stale commits nothing.

A ``memory://`` store lives in a folder of this process (under ``/dev/shm`` where there is
one) so that delta-rs, which cannot see Python's in-memory filesystems, can open its tables.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.errors import StoreError, StoreUnreachableError

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
            delta = _open(self.store, self.table, self.version)
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
        )


def _schema_json(schema: pa.Schema) -> str:
    return str(schema.serialize().to_pybytes().hex())


def _schema_of(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(text)))


# -- files ------------------------------------------------------------------------------------


def file_stats(table: pa.Table, columns: Sequence[str]) -> str:
    """Delta's statistics JSON of a file's rows: ``numRecords`` and, for ``columns``, the
    minimum, maximum (NaN skipped, as Delta does) and null count. ``table`` holds the rows as
    obsflow works with them: a nanosecond time column ``t`` gives the statistics of both
    ``t`` (milliseconds, as Delta writes them) and ``t_ns``; ids kept as dictionaries are
    bounded by their dictionary (bounds need not be tight to be right, and reading them is
    cheaper than scanning every string)."""
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for name in table.column_names:
        if name not in columns and name + "_ns" not in columns:
            continue
        col = table.column(name)
        kind = col.type
        names = [name]
        if pa.types.is_timestamp(kind) and kind.unit == "ns":
            names.append(name + "_ns")
            col = col.cast(pa.int64())
        elif pa.types.is_dictionary(kind):
            kind = kind.value_type
            col = pa.chunked_array([c.dictionary for c in col.chunks], kind)
        for n in names:
            nulls[n] = table.column(name).null_count
        if len(col) == 0 or col.null_count == len(col):
            continue
        if pa.types.is_floating(kind):
            col = pc.drop_null(pc.if_else(pc.is_nan(col), None, col))
            if len(col) == 0:
                continue
        mm = pc.min_max(col)
        lo, hi = mm["min"].as_py(), mm["max"].as_py()
        if lo is None or hi is None:
            continue
        if len(names) == 2:  # a nanosecond time: both twins
            mins[names[1]], maxs[names[1]] = int(lo), int(hi)
            mins[name], maxs[name] = _millis(int(lo)), _millis(int(hi))
            continue
        low, high = _stat(lo, kind), _stat(hi, kind)
        if low is not None:
            mins[name] = low
        if high is not None and not (isinstance(hi, str) and len(hi) > 32):
            maxs[name] = high  # (a cut maximum would not bound the values: left out)
    return json.dumps(
        {"numRecords": table.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls},
        separators=(",", ":"),
    )


def _millis(ns: int) -> str:
    """A time statistic as Delta writes it: UTC, to the millisecond, truncated."""
    ms = ns // 1_000_000
    moment = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=(ms % 1000) * 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _stat(value: Any, kind: pa.DataType) -> Any:
    """A statistic as Delta writes it: timestamps to the millisecond in UTC (truncated, as
    delta-rs and Spark write them), floats finite, strings cut to 32 characters."""
    if pa.types.is_timestamp(kind):
        text: str = value.astimezone(UTC).isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return value[:32]
    return value


def write_file(
    store: Store,
    table: str,
    rel: str,
    rows: pa.Table,
    stats: Sequence[str],
    *,
    stored: bool = False,
) -> DataFile:
    """Write ``rows`` (as obsflow works with them; ``stored``: as a table holds them already)
    as the Parquet file ``rel`` (store-relative, inside ``table``'s folder), invisible until a
    commit adds it."""
    from obsflow.connectors.storage.layout import stored as as_stored  # (layout: schemas, no I/O)
    from obsflow.connectors.storage.store import parquet_bytes  # (store imports this module)

    text = file_stats(rows, stats)
    data = parquet_bytes(rows if stored else as_stored(rows))
    store.write_bytes(rel, data)
    return DataFile(table, rel, len(data), rows.num_rows, text)


# -- reading ---------------------------------------------------------------------------------


def _deltalake() -> Any:
    import deltalake  # (heavy: imported on first use)

    return deltalake


_OPENED = threading.local()
"""Per thread: (store URL, table) -> the table as last opened, brought up to date on reuse
(reading only the log entries since: a fraction of opening it anew), and the signature of its
first log entry, which tells the table from one deleted and made anew at the same place."""


def _open(store: Store, table: str, version: int | None = None) -> DeltaTable | None:
    """The table at ``version`` (the latest: None), or None if there is no such table."""
    dl = _deltalake()
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
    return store.exists(f"{table}/{LOG_DIR}") and _open(store, table) is not None


def snapshot(store: Store, table: str, *, as_of: int | datetime | None = None) -> Snapshot | None:
    """A version of ``table`` (the latest; a Delta version number; the version current at a
    time), or None if the table did not exist then."""
    dt = _open(store, table, None if isinstance(as_of, datetime) else as_of)
    if dt is None:
        return None
    if isinstance(as_of, datetime):
        try:
            store.call_table("read", table, lambda: dt.load_as_version(as_of))
        except StoreError as exc:
            if "before" in str(exc).lower() or "not found" in str(exc).lower():
                return None  # the table did not exist yet at that time
            raise
        info = log_entry(store, table, int(dt.version())) or {}
        if int(info.get("timestamp", 0)) > as_of.timestamp() * 1000:
            return None  # (delta-rs gives its first version for any earlier time)
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
        dt = _open(store, table)
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


# -- writing ---------------------------------------------------------------------------------


def commit(
    store: Store, change: TableChange, *, app: str, n: int | None, after: int | None = None
) -> bool:
    """Commit ``change`` to its table as number ``n`` of ``app`` (see the module docstring).

    Returns False when the table already holds ``n`` (an earlier attempt, or another process
    finishing this run, committed it). With ``after``, the table's last number must be exactly
    that (else ``ConflictError``). ``n`` None commits without a number (a compaction: the same
    rows in other files). ``ConflictError`` when a file it removes is gone. Creates the table
    (with ``change.description``) when it does not exist yet.
    """
    attempt = _Commit(store, change, app, n, after)
    budget = (store.retry.seconds if store.retry else 0.0) + 60.0
    started = time.monotonic()
    while time.monotonic() - started < budget:
        done = attempt.once()
        if done is not None:
            return done
    raise StoreError(f"cannot commit to {store.uri(change.table)}: it changes all the time")


class _Commit:
    """One commit of a change, tried on the table's latest version until it lands."""

    def __init__(
        self, store: Store, change: TableChange, app: str, n: int | None, after: int | None
    ) -> None:
        dl = _deltalake()
        self.dl, self.store, self.change, self.app, self.n, self.after = (
            dl,
            store,
            change,
            app,
            n,
            after,
        )
        self.uri, self.options = store.table_location(change.table)
        info = {"app": app, **({"commit": n} if n is not None else {}), **change.info}
        txns = [] if n is None else [dl.Transaction(app, n, int(time.time() * 1000))]
        self.props = dl.CommitProperties(
            custom_metadata={"obsflow": info}, max_commit_retries=0, app_transactions=txns
        )
        self.schema = dl.Schema.from_arrow(change.schema)
        self.now = int(time.time() * 1000)
        self.adds = [
            dl.transaction.AddAction(a.name, a.size, {}, self.now, change.data_change, a.stats)
            for a in change.adds
            if a.rows
        ]
        self.added = {a.path for a in change.adds if a.rows}

    def once(self) -> bool | None:
        """True: committed; False: it was already; None: another commit came first, look
        again."""
        store, change = self.store, self.change
        dt = _open(store, change.table)
        if dt is None:
            return self._create()
        if self.n is not None:
            done = store.call_table("read", change.table, lambda: dt.transaction_version(self.app))
            done = 0 if done is None else int(done)
            if done >= self.n:
                return False
            if self.after is not None and done != self.after:
                raise ConflictError(
                    f"{store.uri(change.table)} holds commit #{done} of {self.app!r}, "
                    f"not #{self.after}"
                )
        paths = store.call_table(
            "read", change.table, lambda: pa.table(dt.get_add_actions()).column("path")
        )
        present = {f"{change.table}/{p}" for p in paths.to_pylist()}
        if self.added and self.added <= present:
            return False  # an earlier attempt of this commit got through (its answer was lost)
        removes = sorted(present) if change.overwrite else change.removes
        gone = [r for r in removes if r not in present]
        if gone:
            raise ConflictError(
                f"{store.uri(change.table)} changed while this run was running: "
                f"{gone[0][len(change.table) + 1 :]} is no longer in it; nothing of this run "
                "was committed to it"
            )
        lost = _missing(store, [a for a in self.added if a not in present])
        if lost:  # (Delta would take the commit, and the table could not be read)
            raise StoreError(
                f"{store.uri(lost[0])} is gone before its run committed it (a vacuum whose "
                "retention was shorter than the run deletes the files the run wrote first); "
                "nothing of the run was committed to it — run the command again"
            )
        dl = self.dl
        # An append keeps the table's own schema (a run never changes it; one written by an
        # earlier obsflow may differ in what it says of nulls); a rebuild may bring a new one.
        schema = self.schema if change.overwrite else dt.schema()
        actions: list[Any] = [
            *self.adds,
            *(
                dl.transaction.RemoveAction(
                    r[len(change.table) + 1 :], change.data_change, self.now, None, {}
                )
                for r in removes
                if r not in self.added
            ),
        ]
        try:
            store.call_table(
                "commit",
                change.table,
                lambda: dt.create_write_transaction(
                    actions, "append", schema, commit_properties=self.props
                ),
                retry=False,
            )
        except StoreUnreachableError:
            return None  # it may have landed or not: look at the table again
        except StoreError as exc:
            if not _lost(exc):
                raise
            return None  # another commit took that version: look again
        return True

    def _create(self) -> bool | None:
        store, change, dl = self.store, self.change, self.dl
        if change.description is None:
            raise StoreError(f"no table {store.uri(change.table)}: it was never created")
        if self.after:
            raise ConflictError(f"{store.uri(change.table)} is gone")
        try:
            store.call_table(
                "create",
                change.table,
                lambda: dl.transaction.create_table_with_add_actions(
                    self.uri,
                    self.schema,
                    self.adds,
                    mode="error",
                    description=json.dumps(change.description, sort_keys=True),
                    configuration=dict(KEEP_HISTORY),
                    storage_options=self.options,
                    commit_properties=self.props,
                ),
            )
        except StoreError as exc:
            if not _lost(exc):
                raise
            return None  # another writer created it first: check it and commit on top
        return True


def _missing(store: Store, paths: Sequence[str]) -> list[str]:
    """Those of ``paths`` that do not exist (checked in parallel on a remote store)."""
    if store.local or len(paths) < 2:
        return [p for p in paths if not store.exists(p)]
    with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        there = list(pool.map(store.exists, paths))
    return [p for p, ok in zip(paths, there, strict=True) if not ok]


def _lost(exc: BaseException) -> bool:
    """Whether a failed commit lost the race for its version (or the table's creation)."""
    dl = _deltalake()
    cause = exc.__cause__ or exc
    if isinstance(cause, dl.exceptions.CommitFailedError):
        return True
    text = str(cause).lower()
    return "already exists" in text or ("version" in text and "exist" in text)


def vacuum(store: Store, table: str, *, retention_hours: float = TIME_TRAVEL_HOURS) -> list[str]:
    """Delete the files older than ``retention_hours`` that no version younger than that
    needs: those a commit removed, and files no commit ever added (what crashed or beaten
    runs left — and the files of a run still going that began longer ago than that, whose
    commit then fails saying so). Returns them."""
    dt = _open(store, table)
    if dt is None:
        return []
    deleted: list[str] = store.call_table(
        "vacuum",
        table,
        lambda: dt.vacuum(
            retention_hours=math.ceil(retention_hours),
            dry_run=False,
            enforce_retention_duration=False,
            full=True,  # (else delta-rs leaves the files no commit added)
        ),
    )
    return deleted
