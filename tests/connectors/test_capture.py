"""Capture bookkeeping: partitioning, seq assignment, partition files written and committed."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from obsflow.connectors.algorithms.partitions import assign_seq, partition_of, split_by_partition
from obsflow.connectors.datasets.capture import (
    PartitionWriter,
    capture_exists,
    capture_files,
    open_capture,
    planned_capture,
)
from obsflow.connectors.datasets.reads import read_capture
from obsflow.connectors.errors import CaptureExistsError, StoreError
from obsflow.connectors.formats.schema import TIME_TYPE
from obsflow.connectors.storage import commits
from obsflow.connectors.storage.commits import Commit
from obsflow.connectors.storage.store import Store
from obsflow.flows.pipeline.finish import Finish
from obsflow.flows.steps.summary import wrote


def readings(sources: list[str], seq: list[int | None] | None = None, start: int = 0) -> pa.Table:
    n = len(sources)
    return pa.table(
        {
            "source": pa.array(sources, pa.string()),
            "seq": pa.array(seq if seq is not None else [None] * n, pa.int64()),
            "time": pa.array(np.arange(start, start + n), pa.int64()).cast(TIME_TYPE),
            "channel": pa.array(["c"] * n),
            "value": pa.array(np.arange(n, dtype=float)),
        }
    )


def test_partition_is_a_stable_crc32_of_the_source() -> None:
    ids = ["a", "b", "NERACOOS.B01.SBE37", "a"]
    got = partition_of(pa.array(ids), 7)
    assert got.tolist() == [zlib.crc32(s.encode()) % 7 for s in ids]


@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=60))
def test_split_keeps_every_row_once_in_order_and_one_partition_per_source(ids: list[str]) -> None:
    t = readings(ids)
    parts = split_by_partition(t, 3)
    back = pa.concat_tables([p for _, p in parts])
    assert sorted(back.column("value").to_pylist()) == list(range(len(ids)))
    for p, sub in parts:
        assert set(partition_of(sub.column("source"), 3).tolist()) == {p}
        values = sub.column("value").to_pylist()
        assert values == sorted(values)  # arrival order kept


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.one_of(st.none(), st.integers(0, 50))),
        max_size=40,
    )
)
def test_assign_seq_numbers_missing_rows_in_arrival_order(
    rows: list[tuple[str, int | None]],
) -> None:
    start = {"a": 100}
    nxt = dict(start)
    out = assign_seq(readings([s for s, _ in rows], [q for _, q in rows]), nxt)
    got = out.column("seq").to_pylist()
    counters = dict(start)
    for (src, given_seq), seq in zip(rows, got, strict=True):
        if given_seq is None:
            assert seq == counters.get(src, 0)
            counters[src] = counters.get(src, 0) + 1
        else:
            assert seq == given_seq
    for src in {s for s, _ in rows}:  # next_seq is past every seq seen, never backwards
        seen = [q for (s, _), q in zip(rows, got, strict=True) if s == src]
        assert nxt[src] == max([*seen, start.get(src, 0) - 1]) + 1


def writer(store: Store, run: str, **kw: Any) -> PartitionWriter:
    """A writer of partition 0 of capture c for ``run``, from the capture's last commit."""
    base, state = commits.capture_base(store, "c", None)
    return PartitionWriter(store, "c", 0, run, n=base + 1, state=state.get(0), **kw)


def commit(store: Store, run: str, written: Sequence[Any] = (), partitions: int = 1) -> Commit:
    """Commit what ``run`` wrote as a run's end does (creating the capture on its first)."""
    base = commits.head(store, "c")
    meta = planned_capture(store, "c", partitions)
    new = meta if not capture_exists(store, "c") else None
    Finish(store=store.url, capture="c", run=run, kind="ingest", base=base, capture_meta=new)(
        wrote(*written)
    )
    found = commits.last_commit(store, "captures/c", "c")
    assert found is not None
    return found


def close(w: PartitionWriter) -> list[Any]:
    ref = w.close()
    return [*w.take_written(), ref]


def test_partition_count_is_fixed_at_creation(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    with pytest.raises(StoreError, match="no capture"):
        open_capture(store, "c")
    assert planned_capture(store, "c", 3).partitions == 3
    w = writer(store, "r0", target_rows=3)
    w.append(readings(["a"]))
    commit(store, "r0", close(w), partitions=3)  # the run's commit creates the table
    assert open_capture(store, "c").partitions == 3
    with pytest.raises(CaptureExistsError, match="has 3 partitions, not 5"):
        planned_capture(store, "c", 5)


def test_files_are_invisible_until_the_run_commits_then_seq_numbers_continue(
    tmp_path: Path,
) -> None:
    store = Store(str(tmp_path))
    w = writer(store, "run1", target_rows=3)
    w.append(readings(["a", "a"]))
    folder = "captures/c/part-0000"
    assert store.listdir(folder) == []  # still buffered
    w.append(readings(["a", "b"], start=2))
    w.append(readings(["b"], start=4))
    written = close(w)
    assert store.listdir(folder) == ["run1-000000.parquet", "run1-000001.parquet"]
    assert not capture_exists(store, "c")  # nothing of it is a table before the commit
    entry = commit(store, "run1", written)
    assert entry.n == 1
    assert [f.path for f in capture_files(store, "c")] == [
        "captures/c/part-0000/run1-000000.parquet",
        "captures/c/part-0000/run1-000001.parquet",
    ]
    assert read_capture(store, "c").num_rows == 5
    assert read_capture(store, "c", columns=["commit"]).column("commit").to_pylist() == [1] * 5
    # a later writer of the same capture continues the seq numbers
    w2 = writer(store, "run2")
    assert w2.append(readings(["a"], start=9)).rows.column("seq").to_pylist() == [3]


def test_resuming_after_a_snapshot_discards_what_was_written_after_it(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    w = writer(store, "run1", target_rows=2)
    w.append(readings(["a", "a"]))
    state = w.snapshot()  # chunk 0 durable
    w.append(readings(["a", "b"], start=2))  # chunk 1, after the snapshot
    w.wait()  # (its write is on a background thread: let it land, as it may before a crash)
    folder = "captures/c/part-0000"
    assert store.listdir(folder) == ["run1-000000.parquet", "run1-000001.parquet"]
    resumed = writer(store, "run1", resume=state)
    assert resumed.discard_after(state.chunk) == 1
    assert store.listdir(folder) == ["run1-000000.parquet"]
    assert [f.name for f in state.written] == ["part-0000/run1-000000.parquet"]


def test_a_run_restarted_without_a_snapshot_starts_over(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    first = writer(store, "r1")
    first.append(readings(["a", "a"]))
    commit(store, "r1", close(first))
    # Run r2 gets as far as writing its files, seq and dedup bookkeeping, then dies before
    # Bytewax took any snapshot: restarting it starts from scratch under the same run id.
    attempt = writer(store, "r2")
    assert attempt.append(readings(["a", "b"], start=5)).rows.column("seq").to_pylist() == [2, 0]
    close(attempt)
    again = writer(store, "r2")
    assert [n for n in store.listdir("captures/c/part-0000") if n.startswith("r2")] == []
    out = again.append(readings(["a", "b"], start=5))
    assert out.duplicates == 0  # not mistaken for its own earlier attempt
    assert out.rows.column("seq").to_pylist() == [2, 0]  # the same numbers as the attempt
    commit(store, "r2", close(again))
    assert read_capture(store, "c").num_rows == 4
    # A later run still sees r1's and r2's readings as already captured.
    later = writer(store, "r3")
    assert later.append(readings(["a", "b"], start=5)).duplicates == 2
