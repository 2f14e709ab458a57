"""Derived features against numpy applied to each payload on its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import obsflow.flows.kernels.features as features
from obsflow.connectors.errors import ConfigError, SchemaError
from obsflow.flows.kernels.features import (
    DEFAULT_FEATURES,
    FEATURE_SCHEMA,
    FEATURES,
    derive_features,
    feature_channels,
    feature_matrix,
)

RNG = np.random.default_rng(11)
SHAPES = st.sampled_from([(3,), (2, 2), (0,)])
NAN = st.just(np.nan)

ORACLE: dict[str, Callable[[np.ndarray], float]] = {
    "mean": lambda x: float(np.nanmean(x)),
    "min": lambda x: float(np.nanmin(x)),
    "max": lambda x: float(np.nanmax(x)),
    "sum": lambda x: float(np.nansum(x)),
    "std": lambda x: float(np.nanstd(x)),
    "var": lambda x: float(np.nanvar(x)),
    "rms": lambda x: float(np.sqrt(np.nanmean(x * x))),
    "count": lambda x: float(np.count_nonzero(~np.isnan(x))),
}


def oracle(a: np.ndarray, which: tuple[str, ...]) -> list[float]:
    x = (np.abs(a) if np.iscomplexobj(a) else a).astype(np.float64).reshape(-1)
    if x.size == 0 or np.isnan(x).all():
        empty = {"sum": 0.0, "count": 0.0}
        return [empty.get(w, np.nan) for w in which]
    return [ORACLE[w](x) for w in which]


def check(payloads: list[np.ndarray], which: tuple[str, ...] = FEATURES) -> None:
    got = feature_matrix(payloads, which)
    want = np.array([oracle(a, which) for a in payloads]).reshape(len(payloads), len(which))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_features_equal_numpy_for_mixed_shapes_and_dtypes() -> None:
    payloads = [
        RNG.poisson(100, (64, 32)).astype(np.uint16),
        RNG.poisson(5, (64, 32)).astype(np.uint16),  # stacked with the one above
        RNG.normal(1013.25, 5, 1000).astype(np.float32),
        RNG.normal(0, 1, (10, 10)),
        np.arange(-50, 50, dtype=np.int8),
        RNG.random(20) > 0.5,
        np.array([3 + 4j, -1j, 2]),
        np.array(7.5),
        RNG.poisson(100, (64, 32)).astype(np.uint16),
    ]
    check(payloads)


def test_missing_values_are_skipped_and_empty_payloads_are_missing() -> None:
    with_nan = RNG.normal(size=(4, 5))
    with_nan[1, 2] = np.nan
    all_nan = np.full((4, 5), np.nan)
    payloads = [with_nan, all_nan, RNG.normal(size=(4, 5)), np.zeros(0), np.zeros((0, 3))]
    check(payloads)
    m = feature_matrix([all_nan, np.zeros(0)], ("sum", "count", "mean", "max"))
    np.testing.assert_array_equal(m, [[0, 0, np.nan, np.nan]] * 2)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.one_of(
            hnp.arrays(np.uint16, SHAPES),
            hnp.arrays(np.int32, SHAPES, elements=st.integers(-(10**6), 10**6)),
            hnp.arrays(np.float32, SHAPES, elements=st.floats(-1e6, 1e6, width=32) | NAN),
            hnp.arrays(np.float64, SHAPES, elements=st.floats(-1e6, 1e6) | NAN),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_stacked_reduction_matches_one_payload_at_a_time(payloads: list[np.ndarray]) -> None:
    check(payloads)


def test_large_groups_are_reduced_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    payloads = [RNG.normal(size=(16, 16)) for _ in range(10)]
    whole = feature_matrix(payloads)
    monkeypatch.setattr(features, "STACK_BYTES", 3 * 16 * 16 * 8)  # three payloads per slice
    np.testing.assert_array_equal(feature_matrix(payloads), whole)


def test_derive_features_gives_one_reading_per_payload_and_feature() -> None:
    a, b = RNG.normal(size=100), RNG.poisson(3, 50).astype(np.uint16)
    table = derive_features([a, b], ["cam.frame", "spec"])
    assert table.schema == FEATURE_SCHEMA
    assert table.column("row").to_pylist() == [0] * 5 + [1] * 5
    assert table.column("channel").to_pylist() == [
        f"{c}.{f}" for c in ("cam.frame", "spec") for f in DEFAULT_FEATURES
    ]
    want = oracle(a, DEFAULT_FEATURES) + oracle(b, DEFAULT_FEATURES)
    np.testing.assert_allclose(table.column("value").to_numpy(), want, rtol=1e-12)
    one = derive_features([a, b], "wave", which=("max",))
    assert one.column("channel").to_pylist() == ["wave.max", "wave.max"]
    assert derive_features([], "wave").num_rows == 0
    # Readings of the payloads line up with their features by `row`.
    readings = pa.table({"source": ["s1", "s2"], "time": [10, 20]})
    assert readings.take(table.column("row")).column("source").to_pylist()[4:6] == ["s1", "s2"]


@pytest.mark.parametrize(
    ("channel", "which", "error"),
    [
        ("cam/frame", DEFAULT_FEATURES, SchemaError),
        ("x" * 125, DEFAULT_FEATURES, SchemaError),  # "<channel>.mean" is 130 characters
        ("cam", ("mean", "median"), ConfigError),
        ("cam", ("mean", "mean"), ConfigError),
        ("cam", (), ConfigError),
    ],
)
def test_feature_channels_are_valid_ids(channel: str, which: Any, error: type) -> None:
    with pytest.raises(error):
        feature_channels(channel, which)
    with pytest.raises(error):
        derive_features([np.zeros(3)], channel, which)


def test_one_channel_per_payload() -> None:
    with pytest.raises(ValueError, match="2 channels for 1 payloads"):
        derive_features([np.zeros(3)], ["a", "b"])
    assert feature_channels("x" * 123, ("mean",)) == ["x" * 123 + ".mean"]
