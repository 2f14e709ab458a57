"""Duplicate and conflict detection against a plain-Python oracle."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from obsflow.connectors.algorithms.dedup import DEFAULT_HORIZON, MAX_CHUNKS, Deduper
from obsflow.connectors.formats.schema import TIME_TYPE

Row = tuple[str, int | None, int, str, float]  # source, seq, time, channel, value


def table(rows: list[Row]) -> pa.Table:
    return pa.table(
        {
            "source": pa.array([r[0] for r in rows], pa.string()),
            "seq": pa.array([r[1] for r in rows], pa.int64()),
            "time": pa.array([r[2] for r in rows], pa.int64()).cast(TIME_TYPE),
            "channel": pa.array([r[3] for r in rows], pa.string()),
            "value": pa.array([r[4] for r in rows], pa.float64()),
        }
    )


def oracle(rows: list[Row]) -> list[str]:
    """First reading of an identity wins; later ones are duplicates or conflicts."""
    kept: dict[tuple[object, ...], tuple[object, ...]] = {}
    out = []
    for src, seq, t, ch, v in rows:
        key = (src, "seq", seq) if seq is not None else (src, ch, t)
        content = (t, ch, "nan" if np.isnan(v) else v)
        if key not in kept:
            kept[key] = content
            out.append("accept")
        else:
            out.append("duplicate" if kept[key] == content else "conflict")
    return out


rows_st = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.one_of(st.none(), st.integers(0, 6)),
        st.integers(0, 6),
        st.sampled_from(["x", "y"]),
        st.sampled_from([1.0, 2.0, float("nan")]),
    ),
    max_size=40,
)


@given(rows_st, st.lists(st.integers(0, 40), max_size=4))
@settings(max_examples=300, deadline=None)
def test_matches_the_oracle_for_any_batching(rows: list[Row], cuts: list[int]) -> None:
    d = Deduper()
    bounds = sorted({0, len(rows), *[c for c in cuts if c < len(rows)]})
    got: list[str] = []
    for lo, hi in itertools.pairwise(bounds):
        accept, conflict = d.check(table(rows[lo:hi]))
        got += [
            "accept" if a else "conflict" if c else "duplicate"
            for a, c in zip(accept, conflict, strict=True)
        ]
    assert got == oracle(rows)


def identity(row: Row) -> tuple[object, ...]:
    src, seq, t, ch, _ = row
    return (src, "seq", seq) if seq is not None else (src, ch, t)


def content(row: Row) -> tuple[object, ...]:
    _, _, t, ch, v = row
    return (t, ch, "nan" if np.isnan(v) else v)


class Capture:
    """A committed capture as the dedup's ``lookup`` sees it: the identities (and content) of
    every reading accepted before; records what it was asked."""

    def __init__(self) -> None:
        self.held: dict[tuple[object, ...], tuple[object, ...]] = {}
        self.asked = 0

    def commit(self, rows: list[Row], accept: np.ndarray) -> None:
        for row, a in zip(rows, accept, strict=True):
            if a:
                self.held.setdefault(identity(row), content(row))

    def lookup(self, readings: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        self.asked += readings.num_rows
        rows = [
            (r["source"], r["seq"], r["time"].value, r["channel"], r["value"])
            for r in readings.to_pylist()
        ]
        held = [self.held.get(identity(r)) for r in rows]
        dup = np.array(
            [h is not None and h == content(r) for h, r in zip(held, rows, strict=True)], bool
        )
        clash = np.array(
            [h is not None and h != content(r) for h, r in zip(held, rows, strict=True)], bool
        )
        return dup, clash


def label(accept: np.ndarray, conflict: np.ndarray) -> list[str]:
    return [
        "accept" if a else "conflict" if c else "duplicate"
        for a, c in zip(accept, conflict, strict=True)
    ]


wide_rows_st = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.one_of(st.none(), st.integers(0, 30)),
        st.integers(0, 60),
        st.sampled_from(["x", "y"]),
        st.sampled_from([1.0, 2.0, float("nan")]),
    ),
    max_size=80,
)


@given(
    wide_rows_st,
    st.lists(st.integers(0, 80), max_size=8),
    st.sets(st.integers(0, 80), max_size=3),
    st.sampled_from([1, 3, 10, DEFAULT_HORIZON]),
    st.sampled_from([1, 3, MAX_CHUNKS]),
    st.booleans(),
)
@settings(max_examples=400, deadline=None)
def test_memory_plus_the_capture_match_the_oracle_whatever_the_horizon_and_restarts(
    rows: list[Row],
    cuts: list[int],
    restarts: set[int],
    horizon: int,
    max_chunks: int,
    time_order: bool,
) -> None:
    """Random batches with repeats, conflicts, out-of-order keys (or in time order), horizons
    that prune memory to almost nothing, chunks merged or not, and restarts (the state saved
    as ranges and loaded into a new memory) between batches: what memory forgot is asked of
    the capture, and the answer is always the oracle's, which forgets nothing."""
    if time_order:
        rows = sorted(rows, key=lambda r: r[2])
    bounds = sorted({0, len(rows), *[c for c in cuts if c < len(rows)]})
    capture = Capture()
    d = Deduper(horizon=horizon, max_chunks=max_chunks)
    got: list[str] = []
    for lo, hi in itertools.pairwise(bounds):
        if lo in restarts:
            d = Deduper.from_table(d.to_table(), horizon)
            d.max_chunks = max_chunks
        accept, conflict = d.check(table(rows[lo:hi]), capture.lookup)
        got += label(accept, conflict)
        capture.commit(rows[lo:hi], accept)
    assert got == oracle(rows)


@given(rows_st)
@settings(max_examples=100, deadline=None)
def test_state_survives_a_save_and_load(rows: list[Row]) -> None:
    """The saved state holds ranges, not identities: with the capture behind it, a loaded
    memory decides as the unbroken one would."""
    half = len(rows) // 2
    capture = Capture()
    first = Deduper()
    capture.commit(rows[:half], first.check(table(rows[:half]))[0])
    second = Deduper.from_table(first.to_table(), first.horizon)
    accept, conflict = second.check(table(rows[half:]), capture.lookup)
    assert label(accept, conflict) == oracle(rows)[half:]


def test_the_state_is_one_range_per_key_space_not_one_row_per_reading() -> None:
    """100,000 readings of 3 sources (with seq) and 2 series (without): 5 rows of state."""
    d = Deduper()
    n = 100_000
    i = np.arange(n)
    has_seq = i % 5 < 3
    t = pa.table(
        {
            "source": pa.array(np.where(has_seq, np.array(["a", "b", "c"])[i % 5 % 3], "d")),
            "seq": pa.array(np.where(has_seq, i, 0), mask=~has_seq),
            "time": pa.array(i * 1000).cast(TIME_TYPE),
            "channel": pa.array(np.where(i % 5 == 3, "x", "y")),
            "value": pa.array(i * 0.5),
        }
    )
    d.check(t.slice(0, n // 2))
    d.check(t.slice(n // 2))
    state = d.to_table()
    assert state.num_rows == 5
    assert sorted(zip(state["source"].to_pylist(), state["space"].to_pylist(), strict=True)) == [
        ("a", "#seq"),
        ("b", "#seq"),
        ("c", "#seq"),
        ("d", "x"),
        ("d", "y"),
    ]
    seq_a = state.filter(pc.equal(state["source"], "a"))
    assert (seq_a["first"][0].as_py(), seq_a["last"][0].as_py()) == (0, n - 5)


def test_new_keys_in_order_never_ask_the_capture() -> None:
    """After a restart, readings above every saved range are new without a look-up; a key
    inside a range (a reading sent again) is asked."""
    capture = Capture()
    d = Deduper()
    rows: list[Row] = [(s, k, k * 10, "x", float(k)) for k in range(100) for s in ("a", "b")]
    capture.commit(rows, d.check(table(rows), capture.lookup)[0])
    d = Deduper.from_table(d.to_table(), d.horizon)
    more: list[Row] = [(s, k, k * 10, "x", float(k)) for k in range(100, 200) for s in "ab"]
    assert d.check(table(more), capture.lookup)[0].all()
    assert capture.asked == 0
    accept, conflict = d.check(table([rows[7], more[9]]), capture.lookup)
    assert label(accept, conflict) == ["duplicate", "duplicate"]
    assert capture.asked == 1  # rows[7]: from before the restart; more[9] is in memory


def test_memory_keeps_about_a_horizon_and_asks_the_capture_for_what_it_dropped() -> None:
    """Batches of 1,000 readings 1 ms apart for 200 s of event time with a 10 s horizon:
    memory holds about a horizon (chunks dropped whole), and a reading sent again from the
    start is asked of the capture."""
    horizon = 10 * 10**9
    capture = Capture()
    d = Deduper(horizon=horizon)
    for b in range(200):
        k = np.arange(b * 1000, (b + 1) * 1000)
        batch = pa.table(
            {
                "source": pa.array(["a"] * k.size),
                "seq": pa.array(k),
                "time": pa.array(k * 10**6).cast(TIME_TYPE),
                "channel": pa.array(["x"] * k.size),
                "value": pa.array(k * 1.0),
            }
        )
        assert d.check(batch, capture.lookup)[0].all()
        assert len(d) <= 12_000  # 10 s of readings, plus the chunk not yet a horizon old
    capture.held[("a", "seq", 5)] = (5 * 10**6, "x", 5.0)
    again = table([("a", 5, 5 * 10**6, "x", 5.0), ("a", 199_999, 199_999 * 10**6, "x", 0.0)])
    assert label(*d.check(again, capture.lookup)) == ["duplicate", "conflict"]
    assert capture.asked == 1  # only the forgotten one


def test_zero_horizon_turns_dedup_off() -> None:
    d = Deduper(horizon=0)
    accept, _ = d.check(table([("a", 1, 0, "x", 1.0), ("a", 1, 0, "x", 1.0)]))
    assert accept.tolist() == [True, True]


def test_a_batch_of_nothing_new_leaves_an_empty_chunk_that_later_repeats_pass_over() -> None:
    """Found by re-ingesting a Bluesky export: a batch that accepted nothing made a chunk of
    no rows, and the next repeat's look-up in it raised IndexError."""
    capture = Capture()
    d = Deduper()
    rows: list[Row] = [("a", k, k * 10, "x", float(k)) for k in range(10)]
    capture.commit(rows, d.check(table(rows), capture.lookup)[0])
    assert label(*d.check(table(rows), capture.lookup)) == ["duplicate"] * 10
    again = [rows[3], ("a", 4, 40, "x", 9.0)]
    assert label(*d.check(table(again), capture.lookup)) == ["duplicate", "conflict"]
