"""Writing Delta tables (``connectors.storage.tables``): data files with Delta's statistics,
conditional commits, vacuum.

obsflow writes its own Parquet files (``parquet_bytes``: its tuned encodings, with the
statistics Delta keeps per file) into the table's folder, where no reader sees them until a
commit adds them. ``commit`` is the one way to change a table: it carries a ``txn``
(application id, version) — the capture and its commit number — and is idempotent on it (a
table that already holds that number is left alone), it checks that every file it removes is
still in the table, and it commits on exactly the version it checked
(``max_commit_retries=0``), so a writer whose view of the table went stale commits nothing.
A change may carry more ``txn`` entries (a live session's broker positions) and a *fence*:
another application's number the table must still hold (a live session's token,
``connectors.datasets.sessions``), checked on that same version (``FencedError``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.errors import StoreError, StoreUnreachableError
from obsflow.connectors.storage.parquet import parquet_bytes
from obsflow.connectors.storage.tables import (
    KEEP_HISTORY,
    TIME_TRAVEL_HOURS,
    ConflictError,
    DataFile,
    FencedError,
    TableChange,
    deltalake_module,
    open_table,
)

if TYPE_CHECKING:
    from deltalake import DeltaTable

    from obsflow.connectors.storage.store import Store


# -- files ------------------------------------------------------------------------------------


@runtime_checkable
class StagedWriter(Protocol):
    """What every writer of a run's table files promises — a capture partition's
    (``PartitionWriter``), a view partition's segments (``SegmentWriter``), a record log's
    share (``ChunkLog``):

    1. Its files are written with ``write_file`` under names fixed by (run, partition, chunk
       or segment) in the table's folder, and no reader sees them until the run's commit adds
       them (``commit``): a run that never commits leaves nothing visible.
    2. ``flush()`` writes what it buffers; ``take_written()`` hands over, once each, the files
       written since the last call. The step reports them with its snapshot, so the run's
       commit adds exactly the files of the epochs that were snapshotted.
    3. A resumed writer first deletes its files past the snapshot it resumes from, then writes
       the same names again: a crash between a write and its snapshot never leaves a file of
       two attempts behind.
    """

    def flush(self) -> object: ...

    def take_written(self) -> list[DataFile]: ...


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

    text = file_stats(rows, stats)
    data = parquet_bytes(rows if stored else as_stored(rows))
    store.write_bytes(rel, data)
    return DataFile(table, rel, len(data), rows.num_rows, text)


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
        dl = deltalake_module()
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
        numbers = ({} if n is None else {app: n}) | change.txns
        txns = [dl.Transaction(a, v, int(time.time() * 1000)) for a, v in numbers.items()]
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
        dt = open_table(store, change.table)
        if dt is None:
            if change.fence is not None and change.fence[1] != 0:
                raise FencedError(f"{store.uri(change.table)} is gone")
            return self._create()
        if change.fence is not None:
            app, held = change.fence
            now = store.call_table("read", change.table, lambda: dt.transaction_version(app))
            if (now or 0) != held:
                raise FencedError(
                    f"{store.uri(change.table)} holds number {now or 0} of {app!r}, not {held}"
                )
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
        # An append keeps the table's own schema (one written by an earlier obsflow may differ
        # in what it says of nulls), grown first by the nullable columns it lacks; a rebuild
        # may bring a new one.
        if not change.overwrite and self._grow(dt):
            return None  # (the table has the columns now: check it again, then append)
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

    def _grow(self, dt: DeltaTable) -> bool:
        """Add to the table the nullable columns of the change's files it lacks (a capture
        from before a column existed, such as ``alarm_severity``), in a commit of their own
        (Delta: a ``metaData`` action; obsflow's history skips it: it has no number). Old
        files read null there. False: nothing to add."""
        store, table = self.store, self.change.table
        have = set(store.call_table("read", table, lambda: dt.schema().to_arrow().names))
        new = [f for f in self.schema.fields if f.name not in have and f.nullable]
        if not new:
            return False
        names = [f.name for f in new]
        props = self.dl.CommitProperties(
            custom_metadata={"obsflow": {"app": self.app, "columns_added": names}},
            max_commit_retries=0,
        )
        try:
            store.call_table(
                "commit",
                table,
                lambda: dt.alter.add_columns(new, commit_properties=props),
                retry=False,
            )
        except StoreUnreachableError:
            pass  # it may have landed or not: look at the table again
        except StoreError as exc:
            if not _lost(exc):  # (lost: another commit came first, perhaps with them)
                raise
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
    dl = deltalake_module()
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
    dt = open_table(store, table)
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
