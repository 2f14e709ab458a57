"""Duplicate and conflict detection against a plain-Python oracle."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from obsflow.connectors.algorithms.dedup import Deduper
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


@given(rows_st)
@settings(max_examples=100, deadline=None)
def test_state_survives_a_save_and_load(rows: list[Row]) -> None:
    half = len(rows) // 2
    first = Deduper()
    first.check(table(rows[:half]))
    second = Deduper.from_table(first.to_table(), first.horizon)
    accept, conflict = second.check(table(rows[half:]))
    got = [
        "accept" if a else "conflict" if c else "duplicate"
        for a, c in zip(accept, conflict, strict=True)
    ]
    assert got == oracle(rows)[half:]


def test_identities_older_than_the_horizon_are_forgotten() -> None:
    d = Deduper(horizon=100)
    assert d.check(table([("a", None, 0, "x", 1.0)]))[0].tolist() == [True]
    d.check(table([("a", None, 500, "x", 1.0)]))  # the series moves 500 ns on
    assert len(d) == 1  # the reading at t=0 fell out of the horizon
    assert d.check(table([("a", None, 0, "x", 1.0)]))[0].tolist() == [True]


def test_zero_horizon_turns_dedup_off() -> None:
    d = Deduper(horizon=0)
    accept, _ = d.check(table([("a", 1, 0, "x", 1.0), ("a", 1, 0, "x", 1.0)]))
    assert accept.tolist() == [True, True]
