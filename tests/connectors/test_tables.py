"""Delta tables in a store (``connectors.storage.tables``): conditional commits that fence, on every
backend — a local folder, ``memory://``, moto's S3 and SeaweedFS (both take S3's conditional
put, ``If-None-Match: *``, so no lock service is needed) — and exact times."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from obsflow.connectors.errors import StoreError
from obsflow.connectors.formats.schema import TIME_TYPE
from obsflow.connectors.storage import layout, table_writes, tables
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import ConflictError, TableChange

SCHEMA = pa.schema([pa.field("k", pa.int64()), pa.field("t", TIME_TYPE)])


def rows(*ks: int) -> pa.Table:
    return pa.table({"k": pa.array(ks, pa.int64()), "t": pa.array(ks, pa.int64()).cast(TIME_TYPE)})


def change(store: Store, name: str, *ks: int, removes: list[str] | None = None) -> TableChange:
    """A change adding one new file of rows ``ks`` to table ``t``."""
    f = table_writes.write_file(store, "t", f"t/{name}.parquet", rows(*ks), ["k"])
    return TableChange(
        "t", layout.stored_schema(SCHEMA), adds=[f], removes=removes or [], description={}
    )


@pytest.fixture(params=["local", "memory", "moto", "seaweed"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "store"))
    if request.param == "memory":
        return Store(f"memory://tables-{tmp_path.name}/store")
    bucket = request.getfixturevalue("s3_env" if request.param == "moto" else "seaweed_env")
    return Store(f"s3://{bucket}/store")


def test_numbered_commits_are_idempotent_and_fenced(store: Store) -> None:
    assert table_writes.commit(store, change(store, "a", 1), app="c", n=1, after=0)
    assert not table_writes.commit(
        store, change(store, "a", 1), app="c", n=1, after=0
    )  # already in
    snap = tables.snapshot(store, "t")
    assert snap is not None
    assert snap.txn("c") == 1
    assert snap.rows == 1
    # a writer whose base is stale (it started from #0, #1 is taken) commits nothing
    with pytest.raises(ConflictError, match="holds commit #1"):
        table_writes.commit(store, change(store, "b", 2), app="c", n=3, after=1 - 1)
    assert table_writes.commit(store, change(store, "b", 2), app="c", n=2, after=1)
    # a file another commit removed cannot be removed (or replaced) again
    first = [f.path for f in tables.snapshot(store, "t").files if f.path.endswith("a.parquet")]  # type: ignore[union-attr]
    assert table_writes.commit(store, change(store, "c", 3, removes=first), app="c", n=3)
    with pytest.raises(ConflictError, match="no longer in it"):
        table_writes.commit(store, change(store, "d", 4, removes=first), app="c", n=4)
    latest = tables.snapshot(store, "t")
    assert latest is not None
    assert latest.rows == 2  # b and c; a removed once, d never committed
    # time travel: version 0 still reads a
    old = tables.snapshot(store, "t", as_of=0)
    assert old is not None
    assert [f.path for f in old.files] == first


def test_racing_commits_of_one_version_have_one_winner(store: Store) -> None:
    """Eight writers commit number 1 at once, each with its own file: exactly one commit
    lands, the others are told the table moved on (conditional puts of the log entry)."""
    table_writes.commit(store, change(store, "base", 0), app="c", n=0)
    results: list[object] = []
    changes = [change(store, f"w{i}", i) for i in range(8)]

    def write(c: TableChange) -> None:
        try:
            results.append(table_writes.commit(store, c, app="c", n=1, after=0))
        except ConflictError as exc:
            results.append(exc)

    threads = [threading.Thread(target=write, args=(c,)) for c in changes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1, results
    assert all(r is False or isinstance(r, ConflictError) for r in results if r is not True)
    snap = tables.snapshot(store, "t")
    assert snap is not None
    assert snap.rows == 2  # base, and one writer's row
    assert snap.txn("c") == 1


@given(st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=50))
def test_times_round_trip_exactly_and_tools_get_the_floor_microsecond(ns: list[int]) -> None:
    table = pa.table({"t": pa.array(ns, pa.int64()).cast(TIME_TYPE)})
    stored = layout.stored(table)
    assert stored.column_names == ["t", "t_ns"]
    assert stored.column("t_ns").to_pylist() == ns
    assert stored.column("t").cast(pa.int64()).to_pylist() == [v // 1000 for v in ns]
    back = layout.loaded(stored, table.schema)
    assert back.equals(table)


def test_file_statistics_are_deltas_own_form() -> None:
    table = pa.table(
        {
            "source": ["b", "a"],
            "time": pa.array([1_500_000_000_123_456_789, 2], pa.int64()).cast(TIME_TYPE),
            "value": [np.nan, 2.0],
        }
    )
    table = table.set_column(0, "source", table.column("source").dictionary_encode())
    text = table_writes.file_stats(table, ["source", "time", "time_ns", "value"])
    import json

    stats = json.loads(text)
    assert stats["numRecords"] == 2
    assert stats["minValues"]["source"] == "a"
    assert stats["maxValues"]["time"] == "2017-07-14T02:40:00.123Z"  # ms, truncated
    assert stats["maxValues"]["time_ns"] == 1_500_000_000_123_456_789
    assert stats["minValues"]["value"] == stats["maxValues"]["value"] == 2.0  # NaN skipped


def test_a_table_deleted_and_made_anew_is_read_anew(store: Store) -> None:
    """A reader that opened a table, while another writer deletes it and makes it anew at the
    same place (a store removed and written again), then reads the new table, never the old
    one it had open: whether the new log is shorter than the one it read, as long, or longer."""

    def elsewhere(fn: Callable[[], object]) -> None:  # (another thread: its own open tables)
        worker = threading.Thread(target=fn)
        worker.start()
        worker.join()

    def remake(made: int) -> None:
        store.delete("t", recursive=True)
        for i in range(made):
            table_writes.commit(store, change(store, f"x{made}-{i}", 10 + i), app="c", n=i + 1)

    for made in (1, 2, 3):
        elsewhere(lambda: store.delete("t", recursive=True))
        table_writes.commit(store, change(store, "a", 1, 2), app="c", n=1)
        table_writes.commit(store, change(store, "b", 3), app="c", n=2)
        first = tables.snapshot(store, "t")
        assert first is not None
        assert (first.version, first.rows, first.txn("c")) == (1, 3, 2)
        elsewhere(lambda made=made: remake(made))  # type: ignore[misc]
        again = tables.snapshot(store, "t")
        assert again is not None
        assert (again.version, again.rows, again.txn("c")) == (made - 1, made, made)
        assert [f.path for f in again.files] == [f"t/x{made}-{i}.parquet" for i in range(made)]


def test_a_commit_whose_file_is_gone_commits_nothing(store: Store) -> None:
    """A vacuum with a retention shorter than a run deletes the run's uncommitted files; the
    run's commit then fails saying so (Delta would take it, and the table could not be read)."""
    assert table_writes.commit(store, change(store, "base", 0), app="c", n=1)
    slow = change(store, "slow", 1)
    store.delete(slow.adds[0].path)
    with pytest.raises(StoreError, match="is gone before its run committed it"):
        table_writes.commit(store, slow, app="c", n=2, after=1)
    snap = tables.snapshot(store, "t")
    assert snap is not None
    assert (snap.txn("c"), snap.rows) == (1, 1)


def test_vacuum_deletes_what_no_commit_added_once_it_is_older_than_the_retention(
    tmp_path: Path,
) -> None:
    store = Store(str(tmp_path / "store"))
    assert table_writes.commit(store, change(store, "kept", 0), app="c", n=1)
    crashed, going = change(store, "crashed", 1), change(store, "going", 2)
    hours_ago = time.time() - 3 * 3600
    os.utime(tmp_path / "store" / crashed.adds[0].path, (hours_ago, hours_ago))
    deleted = table_writes.vacuum(store, "t", retention_hours=2)
    assert deleted == [crashed.adds[0].name]
    assert not store.exists(crashed.adds[0].path)
    # a file younger than the retention is a run still writing: its commit lands
    assert table_writes.commit(store, going, app="c", n=2, after=1)
    snap = tables.snapshot(store, "t")
    assert snap is not None
    assert sorted(f.path for f in snap.files) == ["t/going.parquet", "t/kept.parquet"]
    assert table_writes.vacuum(store, "t", retention_hours=2) == []


def test_every_staged_writer_keeps_the_one_contract() -> None:
    """Capture partitions, view segments and record logs are all ``StagedWriter``s (mypy
    checks the signatures; this, that none drifts out of the contract's list)."""
    from obsflow.connectors.datasets.capture import PartitionWriter
    from obsflow.connectors.datasets.sinks import ChunkLog
    from obsflow.connectors.datasets.views import SegmentWriter
    from obsflow.connectors.storage.table_writes import StagedWriter

    for writer in (PartitionWriter, SegmentWriter, ChunkLog):
        assert writer.__name__ in StagedWriter.__doc__
        assert all(callable(getattr(writer, m, None)) for m in ("flush", "take_written"))
    store = Store("memory://staged-contract")
    log = ChunkLog(store, "deadletter", "r1", 0, pa.schema([("x", pa.int64())]))
    assert isinstance(log, StagedWriter)
    log.append(pa.table({"x": [1, 2]}))
    assert log.take_written() == []  # (buffered: nothing written yet)
    log.flush()
    (written,) = log.take_written()
    assert written.path.endswith("part-0000-000000.parquet")
    assert log.take_written() == []  # handed over once
