"""The window kernel against an independent oracle (tests/flows/oracle.py)."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obsflow.connectors.schema import TIME_TYPE
from obsflow.flows.viewdef import ViewDef
from obsflow.flows.windows import WindowKernel, running_max
from tests.flows.oracle import expected_rows

MS = 1_000_000
ALL_AGGS = ("count", "sum", "mean", "min", "max", "std", "var", "first", "last", "p50", "p90")


def to_table(df: pd.DataFrame) -> pa.Table:
    return pa.table(
        {
            "source": pa.array(df["source"], pa.string()),
            "seq": pa.array(df["seq"], pa.int64()),
            "time": pa.array(df["time"].to_numpy(), pa.int64()).cast(TIME_TYPE),
            "channel": pa.array(df["channel"], pa.string()),
            "value": pa.array(df["value"].to_numpy(), pa.float64()),
        }
    )


def run_kernel(
    view: ViewDef, df: pd.DataFrame, cuts: list[int]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Feed ``df`` in batches split at ``cuts``; return (rows, late readings)."""
    kernel = WindowKernel(view)
    table = to_table(df)
    bounds = sorted({0, len(df), *[c for c in cuts if 0 < c < len(df)]})
    rows, late = [], []
    for lo, hi in itertools.pairwise(bounds):
        r, lt = kernel.process(table.slice(lo, hi - lo))
        rows.append(r)
        late.append(lt)
    rows.append(kernel.finish())
    got = pa.concat_tables(rows).to_pandas()
    for c in ("window_start", "window_end"):
        got[c] = got[c].astype("int64")
    got = got.sort_values(["source", "channel", "window_start"]).reset_index(drop=True)
    return got, pa.concat_tables(late).to_pandas()


def assert_rows_match(
    got: pd.DataFrame, want: pd.DataFrame, view: ViewDef, values: pd.Series
) -> None:
    assert len(got) == len(want)
    for col in ("source", "channel", "window_start", "window_end"):
        assert got[col].tolist() == want[col].tolist(), col
    # Sums of values of either sign cancel: their error is relative to the values' scale.
    scale = max(1.0, float(np.abs(values).max())) if values.notna().any() else 1.0
    for agg in view.aggregates:
        g, w = got[agg].to_numpy(dtype=float), want[agg].to_numpy(dtype=float)
        assert (np.isnan(g) == np.isnan(w)).all(), agg
        g, w = g[~np.isnan(w)], w[~np.isnan(w)]
        if agg in ("count", "min", "max", "first", "last") or agg.startswith("p"):
            assert (g == w).all(), agg  # quantiles are exact below CAP values per window
        else:
            assert np.allclose(g, w, rtol=1e-9, atol=1e-9 * scale), agg


@st.composite
def views(draw: st.DrawFn) -> ViewDef:
    kind = draw(st.sampled_from(["tumbling", "hopping", "session"]))
    lateness = draw(st.sampled_from([0, 1, 5, 20])) * MS
    aggs = tuple(draw(st.lists(st.sampled_from(ALL_AGGS), min_size=1, unique=True)))
    if kind == "session":
        return ViewDef(
            "v", kind, gap=draw(st.integers(1, 8)) * MS, lateness=lateness, aggregates=aggs
        )
    step = draw(st.integers(1, 6)) * MS
    size = step * (draw(st.integers(1, 4)) if kind == "hopping" else 1)
    return ViewDef(
        "v",
        kind,
        size=size,
        step=step if kind == "hopping" else 0,
        lateness=lateness,
        aggregates=aggs,
    )


values = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False), st.just(float("nan")), st.integers(-5, 5).map(float)
)


@st.composite
def readings(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(1, 60))
    rows = draw(
        st.lists(
            st.tuples(
                st.sampled_from([("a", "x"), ("a", "y"), ("b", "x")]), st.integers(-10, 25), values
            ),
            min_size=n,
            max_size=n,
        )
    )
    df = pd.DataFrame(
        {
            "source": [r[0][0] for r in rows],
            "channel": [r[0][1] for r in rows],
            "time": np.array([r[1] for r in rows], dtype=np.int64) * MS,
            "value": [r[2] for r in rows],
        }
    )
    df["seq"] = df.groupby("source").cumcount()
    return df


@given(view=views(), df=readings(), data=st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_arrival_shuffled_within_the_lateness_gives_the_oracle_rows_and_nothing_late(
    view: ViewDef, df: pd.DataFrame, data: st.DataObject
) -> None:
    # Each reading arrives with a delay below the lateness: the watermark never passes it.
    delays = data.draw(
        st.lists(st.integers(0, max(view.lateness - 1, 0)), min_size=len(df), max_size=len(df))
    )
    df = df.assign(arrival=df["time"] + np.array(delays, dtype=np.int64))
    df = df.sort_values(["arrival", "seq"], kind="stable").reset_index(drop=True)
    cuts = data.draw(st.lists(st.integers(0, len(df)), max_size=5))
    want, late = expected_rows(df, view)
    assert not late.any()
    got, got_late = run_kernel(view, df, cuts)
    assert len(got_late) == 0
    assert_rows_match(got, want, view, df["value"])


@given(view=views(), df=readings(), data=st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_arrival_order_late_output_is_exactly_the_oracles_late_readings(
    view: ViewDef, df: pd.DataFrame, data: st.DataObject
) -> None:
    order = data.draw(st.permutations(range(len(df))))
    df = df.iloc[list(order)].reset_index(drop=True)
    cuts = data.draw(st.lists(st.integers(0, len(df)), max_size=5))
    want, late = expected_rows(df, view)
    got, got_late = run_kernel(view, df, cuts)
    assert sorted(zip(got_late["source"], got_late["seq"], strict=True)) == sorted(
        zip(df.loc[late, "source"], df.loc[late, "seq"], strict=True)
    )
    assert_rows_match(got, want, view, df["value"])


def test_std_of_large_offset_data_is_right_to_1e_minus_6() -> None:
    rng = np.random.default_rng(0)
    n = 100_000
    x = 1e9 + rng.normal(0, 0.001, n)
    df = pd.DataFrame(
        {
            "source": "s",
            "channel": "c",
            "time": np.arange(n) * 1000,
            "seq": np.arange(n),
            "value": x,
        }
    )
    view = ViewDef("v", "tumbling", size=10**9, aggregates=("count", "mean", "std", "var"))
    got, _ = run_kernel(view, df, list(range(0, n, 7919)))
    exact = [Fraction(v) for v in x]
    mean = sum(exact) / n
    var = sum((v - mean) ** 2 for v in exact) / (n - 1)
    assert got["count"].tolist() == [n]
    assert abs(got["std"][0] - float(var) ** 0.5) / float(var) ** 0.5 < 1e-6
    assert abs(got["mean"][0] - float(mean)) <= 1e-12 * float(mean)


def test_windows_with_only_missing_values_exist_with_count_zero() -> None:
    df = pd.DataFrame(
        {
            "source": "s",
            "channel": "c",
            "time": [0, 1, 5 * MS],
            "seq": [0, 1, 2],
            "value": [np.nan, np.nan, 1.0],
        }
    )
    view = ViewDef("v", "tumbling", size=5 * MS, aggregates=("count", "mean", "std", "first"))
    got, _ = run_kernel(view, df, [])
    assert got["count"].tolist() == [0, 1]
    assert got["mean"].isna().tolist() == [True, False]
    assert got["std"].isna().all()  # null when count < 2


def test_series_state_carries_a_view_across_runs() -> None:
    view = ViewDef("v", "tumbling", size=10 * MS, aggregates=("count",))
    first = WindowKernel(view)
    first.process(
        to_table(
            pd.DataFrame(
                {
                    "source": "s",
                    "channel": "c",
                    "time": [MS, 12 * MS],
                    "seq": [0, 1],
                    "value": [1.0, 2.0],
                }
            )
        )
    )
    assert first.finish()["count"].to_pylist() == [1]  # [0,10) was final; [10,20) at the end
    second = WindowKernel(view)
    second.restore_series(first.series_state())
    _, late = second.process(
        to_table(
            pd.DataFrame(
                {
                    "source": "s",
                    "channel": "c",
                    "time": [15 * MS, 25 * MS],
                    "seq": [2, 3],
                    "value": [3.0, 4.0],
                }
            )
        )
    )
    assert late["seq"].to_pylist() == [2]  # its window was emitted by the first run
    assert second.finish()["count"].to_pylist() == [1]


def test_a_session_stays_open_while_an_on_time_reading_could_still_extend_it() -> None:
    # t=0 opens a session [0, 2); t=2 moves the watermark to 2; t=1 is not late (1+2 > 2) and
    # joins both: one session [0, 4). Emitting [0, 2) as soon as the watermark reached 2 would
    # have split it.
    view = ViewDef("v", "session", gap=2 * MS, aggregates=("count",))
    df = pd.DataFrame(
        {
            "source": "s",
            "channel": "c",
            "time": [0, 2 * MS, 1 * MS],
            "seq": [0, 1, 2],
            "value": [1.0, 2.0, 3.0],
        }
    )
    for cuts in ([], [1], [2], [1, 2]):
        got, late = run_kernel(view, df, cuts)
        assert len(late) == 0
        assert got[["window_start", "window_end", "count"]].values.tolist() == [[0, 4 * MS, 3]]


@pytest.mark.parametrize("kind", ["tumbling", "hopping", "session"])
def test_negative_times_align_to_the_epoch(kind: str) -> None:
    view = (
        ViewDef("v", "session", gap=2 * MS)
        if kind == "session"
        else ViewDef("v", kind, size=4 * MS, step=2 * MS if kind == "hopping" else 0)
    )
    df = pd.DataFrame(
        {
            "source": "s",
            "channel": "c",
            "time": [-5 * MS, -1 * MS],
            "seq": [0, 1],
            "value": [1.0, 2.0],
        }
    )
    got, _ = run_kernel(view, df, [])
    want, _ = expected_rows(df, view)
    assert got["window_start"].tolist() == want["window_start"].tolist()


# -- the batch pre-reduction: ties, partly live readings, many series, shared batches ----------


@st.composite
def readings_with_ties(draw: st.DrawFn) -> pd.DataFrame:
    """Few times and seq numbers, so (time, seq) ties between readings of a series are common."""
    n = draw(st.integers(1, 40))
    rows = draw(
        st.lists(
            st.tuples(
                st.sampled_from([("a", "x"), ("b", "x")]),
                st.integers(-3, 8),
                st.integers(0, 3),
                values,
            ),
            min_size=n,
            max_size=n,
        )
    )
    return pd.DataFrame(
        {
            "source": [r[0][0] for r in rows],
            "channel": [r[0][1] for r in rows],
            "time": np.array([r[1] for r in rows], dtype=np.int64) * MS,
            "seq": [r[2] for r in rows],
            "value": [r[3] for r in rows],
        }
    )


@given(view=views(), df=readings_with_ties(), data=st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_time_and_seq_ties_resolve_by_arrival_like_the_oracle(
    view: ViewDef, df: pd.DataFrame, data: st.DataObject
) -> None:
    # first/last: the smallest/largest (time, seq); among equal ones the first/last to arrive.
    order = data.draw(st.permutations(range(len(df))))
    df = df.iloc[list(order)].reset_index(drop=True)
    cuts = data.draw(st.lists(st.integers(0, len(df)), max_size=5))
    want, late = expected_rows(df, view)
    kernel = WindowKernel(view)
    table = to_table(df).append_column("rid", pa.array(np.arange(len(df))))
    bounds = sorted({0, len(df), *[c for c in cuts if 0 < c < len(df)]})
    rows, late_ids = [], []
    for lo, hi in itertools.pairwise(bounds):
        r, lt = kernel.process(table.slice(lo, hi - lo))
        rows.append(r)
        late_ids += lt["rid"].to_pylist()
    rows.append(kernel.finish())
    got = pa.concat_tables(rows).to_pandas()
    for c in ("window_start", "window_end"):
        got[c] = got[c].astype("int64")
    got = got.sort_values(["source", "channel", "window_start"]).reset_index(drop=True)
    assert sorted(late_ids) == np.flatnonzero(late.to_numpy()).tolist()
    assert_rows_match(got, want, view, df["value"])


def test_a_hopping_reading_after_some_of_its_windows_joins_only_the_open_ones() -> None:
    # t=2 moves the watermark to 2: of t=1's windows [-2,2) [-1,3) [0,4) [1,5) the first is
    # final, so t=1 (not late) joins the other three; the t=1 readings of one batch split
    # between the batch's runs (the first, on time) and per-reading partials.
    view = ViewDef(
        "v", "hopping", size=4 * MS, step=MS, aggregates=("count", "first", "last", "p50")
    )
    df = pd.DataFrame(
        {
            "source": "s",
            "channel": "c",
            "time": [1 * MS, 0, 2 * MS, 1 * MS, 3 * MS],
            "seq": [5, 0, 2, 5, 3],
            "value": [10.0, 1.0, 2.0, 11.0, 3.0],
        }
    )
    want, late = expected_rows(df, view)
    assert not late.any()
    for cuts in ([], [1], [2], [3], [1, 3]):
        got, got_late = run_kernel(view, df, cuts)
        assert len(got_late) == 0
        assert_rows_match(got, want, view, df["value"])
    got, _ = run_kernel(view, df, [])
    by_start = got.set_index("window_start")[["count", "first", "last"]]
    assert by_start.loc[-2 * MS].tolist() == [2, 1.0, 10.0]  # without the second t=1
    assert by_start.loc[MS].tolist() == [4, 10.0, 3.0]  # the (time, seq) tie: first to arrive


@pytest.mark.parametrize("kind", ["hopping", "session"])
def test_std_of_large_offset_data_is_right_for_hopping_and_session_windows(kind: str) -> None:
    rng = np.random.default_rng(1)
    n = 20_000
    x = 1e9 + rng.normal(0, 0.001, n)
    df = pd.DataFrame(
        {"source": "s", "channel": "c", "time": np.arange(n) * 1000, "seq": np.arange(n)}
    ).assign(value=x)
    aggs = ("count", "mean", "std")
    view = (
        ViewDef("v", "session", gap=10**9, aggregates=aggs)
        if kind == "session"
        else ViewDef("v", "hopping", size=2 * 10**9, step=10**9, aggregates=aggs)
    )
    got, _ = run_kernel(view, df, list(range(0, n, 1777)))
    exact = [Fraction(v) for v in x]
    mean = sum(exact) / n
    std = float(sum((v - mean) ** 2 for v in exact) / (n - 1)) ** 0.5
    assert got["count"].tolist() == [n] * len(got)  # every window holds every reading
    assert (abs(got["std"] - std) / std < 1e-6).all()
    assert (abs(got["mean"] - float(mean)) <= 1e-12 * float(mean)).all()


def test_batches_with_more_source_channel_combinations_than_the_id_table() -> None:
    rng = np.random.default_rng(2)
    n = 600
    df = pd.DataFrame(
        {
            "source": [f"s{i}" for i in rng.integers(0, 150, n)],
            "channel": [f"c{i}" for i in rng.integers(0, 120, n)],  # 18,000 combinations
            "time": rng.integers(0, 20, n) * MS,
            "value": rng.normal(size=n),
        }
    )
    df["seq"] = df.groupby("source").cumcount()
    view = ViewDef("v", "tumbling", size=5 * MS, lateness=30 * MS, aggregates=ALL_AGGS)
    want, _ = expected_rows(df, view)
    got, late = run_kernel(view, df, [100, 350])
    assert len(late) == 0
    assert_rows_match(got, want, view, df["value"])


def test_views_sharing_batches_give_the_rows_of_separate_runs() -> None:
    # Kernels of several views see the same batch objects (the string encodings are shared).
    rng = np.random.default_rng(3)
    n = 400
    df = pd.DataFrame(
        {
            "source": rng.choice(["a", "b", "c"], n),
            "channel": rng.choice(["x", "y"], n),
            "time": np.sort(rng.integers(0, 200, n)) * MS,
            "seq": np.arange(n),
            "value": rng.normal(size=n),
        }
    )
    views_ = [
        ViewDef("t", "tumbling", size=7 * MS, aggregates=ALL_AGGS),
        ViewDef("h", "hopping", size=6 * MS, step=2 * MS, aggregates=ALL_AGGS),
        ViewDef("s", "session", gap=3 * MS, aggregates=ALL_AGGS),
    ]
    table = to_table(df)
    kernels = [WindowKernel(v) for v in views_]
    rows: list[list[pa.Table]] = [[] for _ in views_]
    for lo in range(0, n, 64):
        batch = table.slice(lo, 64)
        for k, out in zip(kernels, rows, strict=True):
            out.append(k.process(batch)[0])
    for view, k, out in zip(views_, kernels, rows, strict=True):
        got = pa.concat_tables([*out, k.finish()]).to_pandas()
        for c in ("window_start", "window_end"):
            got[c] = got[c].astype("int64")
        got = got.sort_values(["source", "channel", "window_start"]).reset_index(drop=True)
        want, _ = expected_rows(df, view)
        assert_rows_match(got, want, view, df["value"])


def test_out_of_order_times_spanning_most_of_the_int64_range() -> None:
    # The per-series running max of such times cannot use offsets from the minimum.
    big = 4 * 10**18
    df = pd.DataFrame(
        {
            "source": ["a", "b", "a", "b", "a", "b"],
            "channel": "x",
            "time": [-big + 5 * MS, big + 2 * MS, -big, big, -big + 9 * MS, big + 1],
            "seq": [0, 0, 1, 1, 2, 2],
            "value": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        }
    )
    view = ViewDef("v", "tumbling", size=4 * MS, lateness=10 * MS, aggregates=ALL_AGGS)
    want, late = expected_rows(df, view)
    got, got_late = run_kernel(view, df, [])
    assert len(got_late) == late.sum()
    assert_rows_match(got, want, view, df["value"])


def test_running_max_restarts_at_each_segment() -> None:
    rng = np.random.default_rng(4)
    for scale in (10, 2**62):
        values = rng.integers(-scale, scale, 300, dtype=np.int64)
        new = rng.random(300) < 0.1
        new[0] = True
        want, best = [], 0
        for v, s in zip(values.tolist(), new.tolist(), strict=True):
            best = v if s else max(best, v)
            want.append(best)
        assert running_max(values, new).tolist() == want
