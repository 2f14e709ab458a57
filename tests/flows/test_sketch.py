"""Quantiles: exact while a window is small, bounded error and memory past CAP values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obsflow.flows.kernels.sketch import CAP, EXACT, Sketches


def oracle(values: np.ndarray, rows: np.ndarray, q: float) -> np.ndarray:
    return pd.Series(values).groupby(rows).quantile(q, interpolation="lower").to_numpy()


def build(values: np.ndarray, rows: np.ndarray, n_rows: int, chunk: int) -> Sketches:
    """Add values chunk by chunk, merging into the running windows as the kernel does."""
    s = Sketches.empty(n_rows)
    ident = np.r_[np.arange(n_rows), np.arange(n_rows)]
    for lo in range(0, values.size, chunk):
        fresh = Sketches.of_values(rows[lo : lo + chunk], values[lo : lo + chunk], n_rows)
        s = Sketches.concat(s, fresh).remap(ident, n_rows)
    return s


@given(
    st.lists(st.floats(-1e12, 1e12), min_size=1, max_size=300),
    st.sampled_from([0.0, 0.01, 0.5, 0.9, 0.99, 1.0]),
    st.integers(1, 50),
)
@settings(max_examples=200, deadline=None)
def test_small_windows_are_exact(values: list[float], q: float, chunk: int) -> None:
    v = np.array(values)
    rows = np.arange(v.size) % 3
    s = build(v, rows, 3, chunk)
    present = np.unique(rows)
    assert (s.quantiles(q)[present] == oracle(v, rows, q)).all()
    assert (s.level == EXACT).all()


@pytest.mark.parametrize(("offset", "scale"), [(1013.0, 0.2), (0.0, 1e-6), (-5e6, 3.0)])
def test_large_windows_stay_within_range_over_1024_and_cap_entries(
    offset: float, scale: float
) -> None:
    rng = np.random.default_rng(1)
    n = 120_000
    v = offset + rng.normal(0, scale, n)
    v[::997] += 25 * scale  # spikes widen the range
    rows = rng.integers(0, 4, n)
    s = build(v, rows, 4, 7_000)
    assert np.bincount(s.row).max() <= CAP  # memory per window is bounded
    spread = pd.Series(v).groupby(rows).agg(lambda x: x.max() - x.min()).to_numpy()
    for q in (0.01, 0.5, 0.9, 0.999):
        err = np.abs(s.quantiles(q) - oracle(v, rows, q))
        assert (err <= spread / 1024).all(), q


def test_windows_at_different_levels_merge_into_the_coarser_one() -> None:
    rng = np.random.default_rng(2)
    a = Sketches.of_values(np.zeros(5000, np.int64), rng.normal(0, 1, 5000), 1).compact()
    b = Sketches.of_values(np.zeros(5000, np.int64), rng.normal(0, 100, 5000), 1).compact()
    assert a.level[0] < b.level[0]
    merged = Sketches.concat(a, b).remap(np.array([0, 0]), 1)
    assert merged.level[0] >= b.level[0]
    assert merged.count.sum() == 10_000
    assert np.isnan(Sketches.empty(2).quantiles(0.5)).all()
