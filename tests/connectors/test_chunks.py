"""Chunk reassembly: any arrival order, expiry in event time, bounded memory, duplicates."""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obsflow.connectors.errors import SchemaError
from obsflow.connectors.formats.schema import TIME_TYPE
from obsflow.connectors.payloads.chunks import (
    REASON_CONFLICT,
    REASON_EXPIRED,
    REASON_INCONSISTENT,
    REASON_INVALID,
    REASON_OVERFLOW,
    ChunkAssembler,
    ChunkOutput,
)

S = 1_000_000_000

Row = dict[str, Any]


def row(
    cid: str, index: int, count: int, t: int, data: bytes, source: str = "cam-1", **extra: Any
) -> Row:
    return {
        "source": source,
        "chunk_id": cid,
        "chunk_index": index,
        "chunk_count": count,
        "time": t,
        "data": data,
        **extra,
    }


def batch(rows: Sequence[Row]) -> pa.Table:
    schema = {
        "source": pa.string(),
        "chunk_id": pa.string(),
        "chunk_index": pa.int32(),
        "chunk_count": pa.int32(),
        "time": pa.int64(),
        "data": pa.binary(),
    }
    names = list(rows[0]) if rows else list(schema)
    return pa.table({n: pa.array([r[n] for r in rows], schema.get(n)) for n in names})


def split(payload: bytes, count: int) -> list[bytes]:
    step = -(-len(payload) // count) if payload else 0
    return [payload[i * step : (i + 1) * step] for i in range(count)]


def set_rows(cid: str, payload: bytes, count: int, t: int, source: str = "cam-1") -> list[Row]:
    return [row(cid, i, count, t, part, source) for i, part in enumerate(split(payload, count))]


def summary(outs: Sequence[ChunkOutput], offsets: Sequence[int]) -> dict[str, Any]:
    """Outputs of several feeds, with row numbers made global, for comparing batch cuts."""
    return {
        "completed": [c for o in outs for c in o.completed],
        "expired": [e for o in outs for e in o.expired],
        "rejected": [
            (r.row + off, r.reason)
            for o, off in zip(outs, offsets, strict=True)
            for r in o.rejected
        ],
        "duplicates": [d + off for o, off in zip(outs, offsets, strict=True) for d in o.duplicates],
    }


def feed_in_cuts(asm: ChunkAssembler, rows: list[Row], cuts: Sequence[int]) -> dict[str, Any]:
    bounds = [0, *sorted(set(cuts)), len(rows)]
    outs, offsets = [], []
    for lo, hi in itertools.pairwise(bounds):
        if hi > lo:
            outs.append(asm.feed(batch(rows[lo:hi])))
            offsets.append(lo)
    return summary(outs, offsets)


# --- reassembly ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=5),
    data=st.data(),
)
def test_chunks_in_any_order_reassemble_exactly(payloads: list[bytes], data: Any) -> None:
    rows: list[Row] = []
    for n, payload in enumerate(payloads):
        count = data.draw(st.integers(1, 8))
        rows += set_rows(f"m{n}", payload, count, t=n * S, source=f"s{n % 2}")
    dup_rows = data.draw(st.lists(st.sampled_from(rows), max_size=4))
    order = data.draw(st.permutations(rows + dup_rows))
    cuts = data.draw(st.lists(st.integers(0, len(order)), max_size=4))

    got = feed_in_cuts(ChunkAssembler(expiry_ns=100 * S), order, cuts)
    assert sorted(c.chunk_id for c in got["completed"]) == [f"m{n}" for n in range(len(payloads))]
    for c in got["completed"]:
        assert c.data == payloads[int(c.chunk_id[1:])]
        assert c.source == f"s{int(c.chunk_id[1:]) % 2}"
    assert len(got["duplicates"]) == len(dup_rows)
    assert got["expired"] == []
    assert got["rejected"] == []


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_batch_cuts_and_snapshots_do_not_change_the_result(data: Any) -> None:
    rows: list[Row] = []
    for n in range(data.draw(st.integers(1, 6))):
        count = data.draw(st.integers(1, 4))
        t = data.draw(st.integers(0, 20)) * S
        parts = set_rows(f"m{n}", bytes([n]) * 100, count, t)
        keep = data.draw(st.lists(st.sampled_from(parts), min_size=1, max_size=count + 1))
        rows += keep
    rows = data.draw(st.permutations(rows))
    cuts = data.draw(st.lists(st.integers(0, len(rows)), max_size=5))

    def fresh() -> ChunkAssembler:
        return ChunkAssembler(expiry_ns=5 * S, max_pending_sets=2, max_pending_bytes=150)

    whole = feed_in_cuts(fresh(), rows, [])
    assert feed_in_cuts(fresh(), rows, cuts) == whole
    # Resume from a pickled state at every cut: the same result.
    asm, outs, offsets = fresh(), [], []
    bounds = [0, *sorted(set(cuts)), len(rows)]
    for lo, hi in itertools.pairwise(bounds):
        if hi > lo:
            asm = pickle.loads(pickle.dumps(asm))
            outs.append(asm.feed(batch(rows[lo:hi])))
            offsets.append(lo)
    assert summary(outs, offsets) == whole
    assert asm.pending_bytes <= 150
    assert asm.pending_sets <= 2


def test_a_completed_set_carries_chunk_zero_fields() -> None:
    asm = ChunkAssembler()
    rows = [
        row("m", 1, 2, 7 * S, b"world", channel="frame", dtype="uint8"),
        row("m", 0, 2, 5 * S, b"hello ", channel="frame", dtype="uint8"),
    ]
    out = asm.feed(batch(rows))
    (done,) = out.completed
    assert done.data == b"hello world"
    assert (done.time, done.opened, done.chunk_count) == (5 * S, 7 * S, 2)
    assert done.meta == {"channel": "frame", "dtype": "uint8"}
    assert asm.pending_sets == 0
    assert asm.pending_bytes == 0


def test_timestamp_times_are_accepted() -> None:
    table = batch(set_rows("m", b"abcdef", 3, 2 * S))
    table = table.set_column(4, "time", table.column("time").cast(TIME_TYPE))
    (done,) = ChunkAssembler().feed(table).completed
    assert done.time == 2 * S


# --- expiry and bounds --------------------------------------------------------------------------


def test_an_incomplete_set_expires_in_event_time_with_its_chunks() -> None:
    asm = ChunkAssembler(expiry_ns=10 * S)
    a = set_rows("a", b"0123456789", 3, 0)
    out = asm.feed(batch([a[0], a[2]]))
    assert out.expired == []
    # The watermark reaching first time + expiry is not yet past it.
    out = asm.feed(batch(set_rows("b", b"xy", 1, 10 * S)))
    assert out.expired == []
    assert asm.pending_sets == 1
    out = asm.feed(batch(set_rows("c", b"z", 1, 10 * S + 1)))
    (gone,) = out.expired
    assert gone.reason == REASON_EXPIRED
    assert (gone.chunk_id, gone.chunk_count, gone.opened) == ("a", 3, 0)
    assert [(c.index, c.data) for c in gone.chunks] == [(0, b"0123"), (2, b"89")]
    assert gone.missing == [1]
    assert "missing 1" in gone.message
    assert asm.pending_sets == 0
    assert asm.pending_bytes == 0
    # The missing chunk arriving later opens a set of its own, already expired.
    out = asm.feed(batch([a[1]]))
    assert out.completed == []
    assert [(e.chunk_id, [c.index for c in e.chunks]) for e in out.expired] == [("a", [1])]


def test_wall_clock_does_not_expire_anything() -> None:
    asm = ChunkAssembler(expiry_ns=0)
    out = asm.feed(batch(set_rows("a", b"0123", 2, 5 * S)[:1]))
    assert out.expired == []
    # Only a later event time does; a late chunk of another set does not move the watermark back.
    assert asm.feed(batch(set_rows("b", b"01", 2, 1 * S)[:1])).expired[0].chunk_id == "b"
    assert asm.feed(batch(set_rows("c", b"x", 1, 5 * S + 1))).expired[0].chunk_id == "a"


def test_the_chunk_that_completes_a_set_counts_even_if_late() -> None:
    asm = ChunkAssembler(expiry_ns=10 * S)
    a = set_rows("a", b"0123", 2, 0)
    asm.feed(batch([a[0]]))
    late = dict(a[1], time=50 * S)
    out = asm.feed(batch([late]))
    assert [c.data for c in out.completed] == [b"0123"]
    assert out.expired == []


def test_pending_bytes_are_bounded_by_evicting_the_oldest_set() -> None:
    asm = ChunkAssembler(max_pending_bytes=100, expiry_ns=10**6 * S)
    first = set_rows("old", bytes(60), 2, 1 * S)
    second = set_rows("new", bytes(60), 2, 2 * S)
    out = asm.feed(batch([first[0], second[0]]))
    assert out.expired == []
    assert asm.pending_bytes == 60
    out = asm.feed(batch([second[1]]))  # completes "new"
    assert [c.chunk_id for c in out.completed] == ["new"]
    out = asm.feed(batch([second[0], first[1]]))  # "old" completes; a retried "new" is a dup
    assert out.duplicates == [0]
    assert [c.chunk_id for c in out.completed] == ["old"]
    # Three half sets of 40 bytes each: the third pushes the total past 100.
    big = [set_rows(f"b{i}", bytes(80), 2, (10 + i) * S)[0] for i in range(3)]
    out = asm.feed(batch(big))
    assert [(e.chunk_id, e.reason) for e in out.expired] == [("b0", REASON_OVERFLOW)]
    assert [len(c.data) for c in out.expired[0].chunks] == [40]
    assert asm.pending_bytes == 80


def test_pending_sets_are_bounded_too() -> None:
    asm = ChunkAssembler(max_pending_sets=2)
    rows = [set_rows(f"m{i}", b"ab", 2, (5 - i) * S)[0] for i in range(4)]
    out = asm.feed(batch(rows))
    # Oldest by event time are evicted first: m2 (t=3) when m2 arrives, then m3 (t=2).
    assert [e.chunk_id for e in out.expired] == ["m2", "m3"]
    assert all(e.reason == REASON_OVERFLOW for e in out.expired)
    assert asm.pending_sets == 2


def test_a_set_larger_than_the_byte_limit_is_evicted_whole() -> None:
    asm = ChunkAssembler(max_pending_bytes=10)
    out = asm.feed(batch(set_rows("huge", bytes(40), 2, 0)))
    assert [(e.chunk_id, e.reason, len(e.chunks)) for e in out.expired] == [
        ("huge", REASON_OVERFLOW, 1),
        ("huge", REASON_OVERFLOW, 1),
    ]
    assert asm.pending_bytes == 0


def test_drain_returns_every_pending_set_oldest_first() -> None:
    asm = ChunkAssembler()
    asm.feed(batch([set_rows("b", b"ab", 2, 2 * S)[0], set_rows("a", b"ab", 2, 1 * S)[1]]))
    gone = asm.drain()
    assert [(g.chunk_id, g.reason) for g in gone] == [("a", REASON_EXPIRED), ("b", REASON_EXPIRED)]
    assert asm.pending_sets == 0
    assert asm.drain() == []


# --- duplicates, conflicts, bad rows ------------------------------------------------------------


def test_duplicates_conflicts_and_inconsistent_counts() -> None:
    asm = ChunkAssembler()
    a = set_rows("a", b"abcdef", 3, 0)
    rows = [
        a[0],
        a[0],  # duplicate
        dict(a[0], data=b"XY"),  # conflict
        dict(a[1], chunk_count=4),  # inconsistent count
        a[1],
        a[2],  # completes
        a[2],  # duplicate of a completed set
        dict(a[1], data=b"??"),  # conflict with a completed set
        dict(a[1], chunk_count=2),  # inconsistent with a completed set
    ]
    out = asm.feed(batch(rows))
    assert [c.data for c in out.completed] == [b"abcdef"]
    assert out.duplicates == [1, 6]
    assert [(r.row, r.reason) for r in out.rejected] == [
        (2, REASON_CONFLICT),
        (3, REASON_INCONSISTENT),
        (7, REASON_CONFLICT),
        (8, REASON_INCONSISTENT),
    ]
    assert asm.pending_sets == 0


def test_the_memory_of_completed_sets_expires_with_them() -> None:
    asm = ChunkAssembler(expiry_ns=10 * S)
    a = set_rows("a", b"ab", 1, 0)
    asm.feed(batch(a))
    assert asm.feed(batch(a)).duplicates == [0]
    asm.feed(batch(set_rows("later", b"x", 1, 11 * S)))
    out = asm.feed(batch(a))  # forgotten: a new set, complete at once
    assert [c.chunk_id for c in out.completed] == ["a"]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"source": None}, "source"),
        ({"source": ""}, "source"),
        ({"chunk_id": "x" * 300}, "chunk_id"),
        ({"time": None}, "required"),
        ({"data": None}, "required"),
        ({"chunk_count": 0}, "chunk_count 0"),
        ({"chunk_count": 10**6}, "chunk_count 1000000"),
        ({"chunk_index": 3}, "chunk_index 3"),
        ({"chunk_index": -1}, "chunk_index -1"),
    ],
)
def test_malformed_rows_are_rejected(change: Row, why: str) -> None:
    asm = ChunkAssembler()
    out = asm.feed(batch([dict(row("m", 0, 3, 0, b"ok"), **change)]))
    (bad,) = out.rejected
    assert bad.reason == REASON_INVALID
    assert why in bad.message
    assert asm.pending_sets == 0
    assert asm.watermark is None


def test_batches_without_the_chunk_columns_are_refused() -> None:
    asm = ChunkAssembler()
    with pytest.raises(SchemaError, match="chunk_index"):
        asm.feed(batch([row("m", 0, 1, 0, b"x")]).drop_columns(["chunk_index"]))
    with pytest.raises(SchemaError, match="binary"):
        asm.feed(batch([row("m", 0, 1, 0, b"x")]).set_column(5, "data", pa.array(["x"])))
    with pytest.raises(SchemaError, match="integer"):
        asm.feed(batch([row("m", 0, 1, 0, b"x")]).set_column(4, "time", pa.array(["x"])))
