"""The window kernel against an independent oracle (tests/flows/oracle.py).

Readings are fed to ``WindowKernel`` in batches, cut into runs (``finalize`` at each run's
end), sometimes closed (``close``) or saved and restored (``state``/``from_state``); the final
rows it emitted plus its ``open_rows()`` must equal the oracle's rows, ``final`` exactly where
the oracle says, and its late readings exactly the oracle's. ``HOLD_WINDOWS`` is made small in
most property tests, so that finality inside a run happens within the few milliseconds drawn.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from obsflow.connectors.formats.schema import TIME_TYPE
from obsflow.connectors.storage.parquet import parquet_bytes
from obsflow.flows.kernels import series as series_ids
from obsflow.flows.kernels import windows
from obsflow.flows.kernels.partials import running_max
from obsflow.flows.kernels.viewdef import ViewDef
from obsflow.flows.kernels.windows import WindowKernel
from tests.flows.oracle import Oracle, assert_rows_match

MS = 1_000_000
ALL_AGGS = ("count", "sum", "mean", "min", "max", "std", "var", "first", "last", "p50", "p90")


def examples(n: int) -> settings:
    # The oracle costs ~20 ms a check (pandas): a few dozen examples each keep the file ~30 s.
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# A plan is a list of steps: ("batch", lo, hi) feeds readings [lo, hi) of the arrival order,
# ("end",) ends a run, ("close", series | None, until | None), ("restore",) saves the kernel's
# state through Parquet and continues from it.
Step = tuple[object, ...]


@contextmanager
def hold_windows(n: int) -> Iterator[None]:
    """The kernel's hold, for kernels made inside (the oracle takes it as an argument)."""
    saved, windows.HOLD_WINDOWS = windows.HOLD_WINDOWS, n
    try:
        yield
    finally:
        windows.HOLD_WINDOWS = saved


def to_table(df: pd.DataFrame) -> pa.Table:
    return pa.table(
        {
            "source": pa.array(df["source"], pa.string()),
            "seq": pa.array(df["seq"], pa.int64()),
            "time": pa.array(df["time"].to_numpy(), pa.int64()).cast(TIME_TYPE),
            "channel": pa.array(df["channel"], pa.string()),
            "value": pa.array(df["value"].to_numpy(), pa.float64()),
            "rid": pa.array(np.arange(len(df)), pa.int64()),  # passes through to late output
        }
    )


def frame(final: list[pa.Table], provisional: pa.Table) -> pd.DataFrame:
    """Rows made final and provisional rows, with ``final``, sorted like the oracle's."""
    rows = pa.concat_tables([*final, provisional])
    flags = np.arange(rows.num_rows) < rows.num_rows - provisional.num_rows
    out = rows.append_column("final", pa.array(flags)).to_pandas()
    for c in ("window_start", "window_end"):
        out[c] = out[c].astype("int64")
    return out.sort_values(["source", "channel", "window_start"]).reset_index(drop=True)


def restored(kernel: WindowKernel) -> WindowKernel:
    tables = {k: pq.read_table(io.BytesIO(parquet_bytes(t))) for k, t in kernel.state().items()}
    return WindowKernel.from_state(kernel.view, tables)


class Driver:
    """A kernel and the oracle fed the same plan, compared on demand."""

    def __init__(self, view: ViewDef, df: pd.DataFrame, hold: int) -> None:
        self.view, self.table = view, to_table(df)
        self.df = df.reset_index(drop=True).assign(rid=np.arange(len(df)))
        with hold_windows(hold):
            self.kernel = WindowKernel(view)
        self.hold = hold
        self.oracle = Oracle(view, hold)
        self.final: list[pa.Table] = []
        self.late: list[int] = []

    def step(self, step: Step) -> None:
        k = self.kernel
        match step:
            case ("batch", int(lo), int(hi)):
                self.feed(lo, hi, self.table.slice(lo, hi - lo))
            case ("end",):
                self.final.append(k.finalize())
                self.oracle.end_run()
            case ("close", series, until):
                mask = None if series is None else np.array([n in series for n in k.names])
                self.final.append(k.close(mask, until))  # type: ignore[arg-type]
                self.oracle.close(series, until)  # type: ignore[arg-type]
            case ("restore",):
                with hold_windows(self.hold):
                    self.kernel = restored(k)

    def feed(self, lo: int, hi: int, batch: pa.Table) -> None:
        rows, late = self.kernel.process(batch)
        self.final.append(rows)
        self.late += late.column("rid").to_pylist()
        self.oracle.feed(self.df.iloc[lo:hi])

    def open_rows(self) -> pa.Table:
        return self.kernel.open_rows()

    def rows(self) -> pd.DataFrame:
        return frame(self.final, self.open_rows())

    def check(self) -> pd.DataFrame:
        want = self.oracle.rows()
        assert_rows_match(self.rows(), want, self.view, self.df["value"])
        assert self.late == self.oracle.late_readings()["rid"].tolist()
        return want

    def play(self, plan: list[Step], *, check_every: bool = False, close: bool = True) -> None:
        """Run ``plan``, checking after every run's end (every step); then close everything:
        every row is final and still the oracle's."""
        for step in plan:
            self.step(step)
            if check_every or step[0] != "batch":
                self.check()
        if close:
            self.step(("close", None, None))
            assert self.check()["final"].all()


def batches(lo: int, hi: int, cuts: list[int]) -> list[Step]:
    bounds = sorted({lo, hi, *[c for c in cuts if lo < c < hi]})
    return [("batch", a, b) for a, b in itertools.pairwise(bounds)]


def plan_of(n: int, runs: Sequence[int] = (), cuts: Sequence[int] = ()) -> list[Step]:
    """Readings 0..n cut into runs at ``runs`` and into batches at ``cuts`` too."""
    plan: list[Step] = []
    for lo, hi in itertools.pairwise(sorted({0, n, *[r for r in runs if 0 < r < n]})):
        plan += [*batches(lo, hi, list(cuts)), ("end",)]
    return plan


@st.composite
def plans(draw: st.DrawFn, n: int, *, closes: bool = False, restores: bool = False) -> list[Step]:
    """1-6 runs cut at random points, each cut into batches; maybe closes and restores."""
    runs = draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=5))
    plan: list[Step] = []
    for step in plan_of(n, runs, draw(st.lists(st.integers(0, n), max_size=6))):
        plan.append(step)
        if restores and draw(st.integers(0, 3)) == 0:
            plan.append(("restore",))
        if closes and step[0] == "end" and draw(st.integers(0, 3)) == 0:
            series = draw(st.none() | st.sets(st.sampled_from(SERIES), min_size=1))
            plan.append(("close", series, draw(st.none() | st.integers(-12, 30).map(MS.__mul__))))
    return plan


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


SERIES = [("a", "x"), ("a", "y"), ("b", "x")]
holds = st.sampled_from([0, 1, 3, windows.HOLD_WINDOWS])
values = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False), st.just(float("nan")), st.integers(-5, 5).map(float)
)


@st.composite
def readings(draw: st.DrawFn, ties: bool = False) -> pd.DataFrame:
    """Readings in time order. With ``ties``: few times and seq numbers, so (time, seq) ties
    between readings of a series are common."""
    n = draw(st.integers(1, 40 if ties else 60))
    series = st.sampled_from(SERIES[::2] if ties else SERIES)
    seq = st.integers(0, 3) if ties else st.just(0)
    times = st.integers(-3, 8) if ties else st.integers(-10, 25)
    rows = draw(st.lists(st.tuples(series, times, seq, values), min_size=n, max_size=n))
    df = pd.DataFrame(
        {
            "source": [r[0][0] for r in rows],
            "channel": [r[0][1] for r in rows],
            "time": np.array([r[1] for r in rows], dtype=np.int64) * MS,
            "seq": [r[2] for r in rows],
            "value": [r[3] for r in rows],
        }
    )
    if not ties:
        df["seq"] = df.groupby("source").cumcount()
    return df


def shuffled(df: pd.DataFrame, data: st.DataObject, max_delay: int | None) -> pd.DataFrame:
    """``df`` in an arrival order: each reading delayed by up to ``max_delay``, or any order."""
    if max_delay is None:
        return df.iloc[list(data.draw(st.permutations(range(len(df)))))].reset_index(drop=True)
    delays = data.draw(st.lists(st.integers(0, max_delay), min_size=len(df), max_size=len(df)))
    df = df.assign(arrival=df["time"] + np.array(delays, dtype=np.int64))
    return df.sort_values(["arrival", "seq"], kind="stable").reset_index(drop=True)


# -- properties ----------------------------------------------------------------------------------


@given(view=views(), df=readings(), hold=holds, data=st.data())
@examples(30)
def test_arrival_shuffled_within_the_lateness_gives_the_oracle_rows_and_nothing_late(
    view: ViewDef, df: pd.DataFrame, hold: int, data: st.DataObject
) -> None:
    # Each reading arrives with a delay below the lateness: no frontier or watermark passes it,
    # however the readings are cut into runs and batches.
    df = shuffled(df, data, max(view.lateness - 1, 0))
    driver = Driver(view, df, hold)
    driver.play(data.draw(plans(len(df))))
    assert driver.late == []
    fan = view.size // view.step if view.kind == "hopping" else 1
    assert sum(map(len, driver.oracle.members)) == len(df) * fan  # every reading in every window


@given(view=views(), df=readings(), hold=holds, data=st.data())
@examples(30)
def test_any_arrival_order_late_output_is_exactly_the_oracles_late_readings(
    view: ViewDef, df: pd.DataFrame, hold: int, data: st.DataObject
) -> None:
    df = shuffled(df, data, None)
    Driver(view, df, hold).play(data.draw(plans(len(df))))


@given(view=views(), df=readings(), hold=holds, data=st.data())
@examples(35)
def test_after_every_batch_run_and_close_final_and_open_rows_are_the_oracles(
    view: ViewDef, df: pd.DataFrame, hold: int, data: st.DataObject
) -> None:
    # Disorder within the lateness, beyond it, or any order; 1-6 runs; closes of some series
    # up to some time (or completely) between runs.
    delay = data.draw(st.sampled_from([0, view.lateness, 3 * view.lateness + 4 * MS, None]))
    df = shuffled(df, data, delay)
    Driver(view, df, hold).play(data.draw(plans(len(df), closes=True)), check_every=True)


@given(view=views(), df=readings(), hold=holds, data=st.data())
@examples(30)
def test_a_kernel_restored_from_its_state_continues_exactly_like_one_never_stopped(
    view: ViewDef, df: pd.DataFrame, hold: int, data: st.DataObject
) -> None:
    df = shuffled(df, data, data.draw(st.sampled_from([view.lateness, None])))
    plan = data.draw(plans(len(df), closes=True, restores=True))
    kept, saved = Driver(view, df, hold), Driver(view, df, hold)
    for step in plan:
        saved.step(step)
        if step[0] == "restore":
            continue
        kept.step(step)
        pairs = [(kept.final[-1], saved.final[-1]), (kept.open_rows(), saved.open_rows())]
        for a, b in pairs:  # the same tables, to the bit
            pd.testing.assert_frame_equal(a.to_pandas(), b.to_pandas(), check_exact=True)
        assert kept.late == saved.late
    saved.check()  # and both are right


@given(view=views(), df=readings(ties=True), hold=holds, data=st.data())
@examples(30)
def test_time_and_seq_ties_resolve_by_arrival_like_the_oracle(
    view: ViewDef, df: pd.DataFrame, hold: int, data: st.DataObject
) -> None:
    # first/last: the smallest/largest (time, seq); among equal ones the first/last to arrive.
    df = shuffled(df, data, None)
    Driver(view, df, hold).play(data.draw(plans(len(df))))


# -- examples ------------------------------------------------------------------------------------


def readings_of(
    times: list[int], values_: list[float] | None = None, **cols: object
) -> pd.DataFrame:
    n = len(times)
    df = pd.DataFrame({"source": "s", "channel": "c", "time": times, "seq": np.arange(n)})
    return df.assign(value=values_ if values_ is not None else np.arange(n, dtype=float), **cols)


def play(
    view: ViewDef, df: pd.DataFrame, runs: Sequence[int] = (), cuts: Sequence[int] = ()
) -> Driver:
    """The kernel through the plan (checked against the oracle), then closed."""
    driver = Driver(view, df, windows.HOLD_WINDOWS)
    driver.play(plan_of(len(df), runs, cuts))
    return driver


def test_the_hold_keeps_windows_open_inside_a_run_and_the_run_end_finalizes() -> None:
    view = ViewDef("v", "tumbling", size=MS, aggregates=("count",))
    kernel = WindowKernel(view)
    top = (windows.HOLD_WINDOWS + 6) * MS
    df = readings_of([0, top, MS // 2, 5 * MS + 1, 6 * MS, top - 30 * MS])
    table = to_table(df)
    rows, late = kernel.process(table.slice(0, 2))
    # the watermark is `top`, the hold 1024 windows: [0, 1) ms is final, [top, top+1) open
    assert rows["window_start"].cast(pa.int64()).to_pylist() == [0]
    assert late.num_rows == 0
    rows, late = kernel.process(table.slice(2, 3))
    assert late.column("rid").to_pylist() == [2, 3]  # their windows ended at or before 6 ms
    assert kernel.open_rows()["window_start"].cast(pa.int64()).to_pylist() == [6 * MS, top]
    assert kernel.finalize()["window_start"].cast(pa.int64()).to_pylist() == [6 * MS]
    assert kernel.open_rows()["count"].to_pylist() == [1]  # [top, top+1) stays provisional
    _, late = kernel.process(table.slice(5, 1))
    assert late.column("rid").to_pylist() == [5]  # the frontier is `top`: no hold any more
    play(view, df, runs=[2, 5], cuts=[1, 3, 4])
    play(view, df)


def test_the_open_window_of_a_run_is_continued_by_the_next_run() -> None:
    # Changed by design (issue 11): the end of a run is not the end of the data. [10, 20) stays
    # open after the first run and the second run's t=15 joins it instead of being late.
    view = ViewDef("v", "tumbling", size=10 * MS, aggregates=("count",))
    df = readings_of([MS, 12 * MS, 15 * MS, 25 * MS])
    first = WindowKernel(view)
    first.process(to_table(df.iloc[:2]))
    assert first.finalize()["count"].to_pylist() == [1]  # [0, 10) final; [10, 20) open
    assert first.open_rows()["count"].to_pylist() == [1]
    second = WindowKernel.from_state(view, first.state())
    _, late = second.process(to_table(df.iloc[2:]))
    assert late.num_rows == 0
    assert second.finalize()["count"].to_pylist() == [2]  # [10, 20) with both
    assert second.open_rows()["count"].to_pylist() == [1]
    assert second.close()["count"].to_pylist() == [1]
    assert WindowKernel.from_state(view, {}).open_rows().num_rows == 0
    play(view, df, runs=[2])


def test_std_of_large_offset_data_is_right_to_1e_minus_6() -> None:
    rng = np.random.default_rng(0)
    n = 100_000
    x = 1e9 + rng.normal(0, 0.001, n)
    view = ViewDef("v", "tumbling", size=10**9, aggregates=("count", "mean", "std", "var"))
    kernel = WindowKernel(view)
    table = to_table(readings_of(list(np.arange(n) * 1000), list(x)))
    for lo in range(0, n, 7919):
        assert kernel.process(table.slice(lo, 7919))[0].num_rows == 0
    assert kernel.finalize().num_rows == 0  # still open: the watermark is in the window
    got = kernel.close().to_pandas()
    exact = [Fraction(v) for v in x]
    mean = sum(exact) / n
    var = sum((v - mean) ** 2 for v in exact) / (n - 1)
    assert got["count"].tolist() == [n]
    assert abs(got["std"][0] - float(var) ** 0.5) / float(var) ** 0.5 < 1e-6
    assert abs(got["mean"][0] - float(mean)) <= 1e-12 * float(mean)


@pytest.mark.parametrize("kind", ["hopping", "session"])
def test_std_of_large_offset_data_is_right_for_hopping_and_session_windows(kind: str) -> None:
    rng = np.random.default_rng(1)
    n = 20_000
    x = 1e9 + rng.normal(0, 0.001, n)
    aggs = ("count", "mean", "std")
    view = (
        ViewDef("v", "session", gap=10**9, aggregates=aggs)
        if kind == "session"
        else ViewDef("v", "hopping", size=2 * 10**9, step=10**9, aggregates=aggs)
    )
    df = readings_of(list(np.arange(n) * 1000), list(x))
    got = play(view, df, cuts=list(range(0, n, 1777))).rows()
    exact = [Fraction(v) for v in x]
    mean = sum(exact) / n
    std = float(sum((v - mean) ** 2 for v in exact) / (n - 1)) ** 0.5
    assert got["count"].tolist() == [n] * len(got)  # every window holds every reading
    assert (abs(got["std"] - std) / std < 1e-6).all()
    assert (abs(got["mean"] - float(mean)) <= 1e-12 * float(mean)).all()


def test_windows_with_only_missing_values_exist_with_count_zero() -> None:
    view = ViewDef("v", "tumbling", size=5 * MS, aggregates=("count", "mean", "std", "first"))
    got = play(view, readings_of([0, 1, 5 * MS], [np.nan, np.nan, 1.0])).rows()
    assert got["count"].tolist() == [0, 1]
    assert got["mean"].isna().tolist() == [True, False]
    assert got["std"].isna().all()  # null when count < 2


@pytest.mark.parametrize("runs", [[], [1], [2], [1, 2]])
@pytest.mark.parametrize("cuts", [[], [1], [2], [1, 2]])
def test_a_session_stays_open_while_an_on_time_reading_could_still_extend_it(
    runs: list[int], cuts: list[int]
) -> None:
    # t=0 opens a session [0, 2); t=2 moves the watermark to 2; t=1 is not late (1+2 > 2) and
    # joins both: one session [0, 4). Making [0, 2) final as soon as the watermark reached 2
    # would have split it.
    view = ViewDef("v", "session", gap=2 * MS, aggregates=("count",))
    driver = Driver(view, readings_of([0, 2 * MS, 1 * MS]), hold=0)  # no hold inside a run
    driver.play(plan_of(3, runs, cuts))
    assert driver.late == []
    got = driver.rows()
    assert got[["window_start", "window_end", "count"]].values.tolist() == [[0, 4 * MS, 3]]


@pytest.mark.parametrize("kind", ["tumbling", "hopping", "session"])
def test_negative_times_align_to_the_epoch(kind: str) -> None:
    view = (
        ViewDef("v", "session", gap=2 * MS)
        if kind == "session"
        else ViewDef("v", kind, size=4 * MS, step=2 * MS if kind == "hopping" else 0)
    )
    got = play(view, readings_of([-5 * MS, -1 * MS])).rows()
    want = {"tumbling": [-8, -4], "hopping": [-8, -6, -4, -2], "session": [-5, -1]}[kind]
    assert got["window_start"].tolist() == [s * MS for s in want]


@pytest.mark.parametrize("hold", [0, windows.HOLD_WINDOWS])
def test_a_hopping_reading_after_some_of_its_windows_joins_only_the_open_ones(hold: int) -> None:
    # t=2 moves the watermark to 2: of t=1's windows [-2,2) [-1,3) [0,4) [1,5) the first is
    # final (without a hold, or after a run's end), so t=1 (not late) joins the other three;
    # the t=1 readings of one batch split between the batch's runs (the first, on time) and
    # per-reading partials.
    view = ViewDef(
        "v", "hopping", size=4 * MS, step=MS, aggregates=("count", "first", "last", "p50")
    )
    df = readings_of(
        [1 * MS, 0, 2 * MS, 1 * MS, 3 * MS], [10.0, 1.0, 2.0, 11.0, 3.0], seq=[5, 0, 2, 5, 3]
    )
    for cuts in ([], [1], [2], [3], [1, 3]):
        driver = Driver(view, df, hold)
        driver.play(plan_of(len(df), [] if hold == 0 else [3], cuts))
        assert driver.late == []
        by_start = driver.rows().set_index("window_start")[["count", "first", "last"]]
        assert by_start.loc[-2 * MS].tolist() == [2, 1.0, 10.0]  # without the second t=1
        assert by_start.loc[MS].tolist() == [4, 10.0, 3.0]  # (time, seq) tie: first to arrive


@pytest.mark.parametrize("table_max", [series_ids.PAIR_TABLE_MAX, 1000])
def test_batches_with_more_source_channel_combinations_than_the_id_table(
    table_max: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(series_ids, "PAIR_TABLE_MAX", table_max)  # (1000: pairs looked up)
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
    assert play(view, df, runs=[350], cuts=[100, 500]).late == []


def test_views_sharing_batches_give_the_rows_of_separate_kernels() -> None:
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
    drivers = [
        Driver(v, df, windows.HOLD_WINDOWS)
        for v in (
            ViewDef("t", "tumbling", size=7 * MS, aggregates=ALL_AGGS),
            ViewDef("h", "hopping", size=6 * MS, step=2 * MS, aggregates=ALL_AGGS),
            ViewDef("s", "session", gap=3 * MS, aggregates=ALL_AGGS),
        )
    ]
    for step in plan_of(n, [200], range(0, n, 64)):
        match step:
            case ("batch", int(lo), int(hi)):  # one batch object for every kernel
                batch = drivers[0].table.slice(lo, hi - lo)
                for d in drivers:
                    d.feed(lo, hi, batch)
            case _:
                for d in drivers:
                    d.step(step)
    for d in drivers:
        d.step(("close", None, None))
        assert d.check()["final"].all()


@pytest.mark.parametrize("runs", [[], [1, 2, 3, 4, 5]])
def test_out_of_order_times_spanning_most_of_the_int64_range(runs: list[int]) -> None:
    # The per-series running max of such times cannot use offsets from the minimum; times
    # before 1897 are below what the kernel once used for "nothing seen yet".
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
    assert play(view, df, runs=runs).late == []


@pytest.mark.parametrize("kind", ["tumbling", "hopping", "session"])
def test_old_readings_and_long_windows_are_not_late(kind: str) -> None:
    # 1850 is before I64_MIN // 4 ns; a hold of 1024 windows of 120 days exceeds int64.
    day = 86_400 * 10**9
    view = {
        "tumbling": ViewDef("v", "tumbling", size=120 * day, aggregates=("count", "mean")),
        "hopping": ViewDef("v", "hopping", size=240 * day, step=120 * day),
        "session": ViewDef("v", "session", gap=120 * day, lateness=day),
    }[kind]
    t0 = pd.Timestamp("1850-01-01").value
    t1 = pd.Timestamp("2024-01-01").value
    times = [t0 + day, t0, t1, t1 + 2 * day, t1 + day, t0 + 3 * day]
    driver = play(view, readings_of(times), runs=[3, 4])
    assert driver.late == [5]  # the 1850 reading after the 2024 run ended
    driver = play(view, readings_of(times[:5]), cuts=[1, 3])
    assert driver.late == []


def test_running_max_restarts_at_each_segment() -> None:
    rng = np.random.default_rng(4)
    for scale in (10, 2**62):
        values_ = rng.integers(-scale, scale, 300, dtype=np.int64)
        new = rng.random(300) < 0.1
        new[0] = True
        want, best = [], 0
        for v, s in zip(values_.tolist(), new.tolist(), strict=True):
            best = v if s else max(best, v)
            want.append(best)
        assert running_max(values_, new).tolist() == want


# -- many series ---------------------------------------------------------------------------------

MANY_SOURCES = 50_000  # x 2 channels: 100,000 series


@st.composite
def many_series(draw: st.DrawFn) -> pd.DataFrame:
    """100,000 series, 1-3 readings each over a few 1 ms windows, in time order but for some
    that arrive late (beyond any lateness drawn), interleaved as instruments would send them."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    per = rng.integers(1, 4, 2 * MANY_SOURCES)
    sid = np.repeat(np.arange(2 * MANY_SOURCES), per)
    t = rng.integers(0, 6 * MS, sid.size)
    df = pd.DataFrame(
        {
            "source": np.char.add("s", (sid // 2).astype(str)),
            "channel": np.where(sid % 2 == 0, "x", "y"),
            "time": t,
            "value": rng.normal(0, 1, sid.size).round(2),  # (ties: quantiles see equal values)
        }
    )
    df.loc[rng.random(sid.size) < 0.01, "value"] = np.nan
    arrival = t + np.where(rng.random(sid.size) < 0.02, 3 * MS, 0)  # some readings come late
    df = df.iloc[np.argsort(arrival, kind="stable")].reset_index(drop=True)
    df["seq"] = df.groupby("source").cumcount()
    return df


@given(df=many_series(), data=st.data())
@settings(  # (few examples, each a whole data set: shrinking a seed is of no use)
    examples(3), phases=[Phase.explicit, Phase.reuse, Phase.generate]
)
def test_a_hundred_thousand_series_give_the_oracle_rows_and_late_readings(
    df: pd.DataFrame, data: st.DataObject
) -> None:
    # Many series, so every batch holds most of them: new series numbered in bulk, windows
    # shelved (past the watermark) for most series at once, readings coming back to shelved
    # windows of a few, the hold (0, 2 or the default) making shelved windows final in a run.
    view = ViewDef(
        "v",
        "tumbling",
        size=MS,
        lateness=data.draw(st.sampled_from([0, MS])),
        aggregates=("count", "mean", "std", "min", "first", "last", "p50", "p90"),
    )
    n = len(df)
    runs = data.draw(st.lists(st.integers(1, n - 1), max_size=2))
    cuts = data.draw(st.lists(st.integers(1, n - 1), min_size=2, max_size=5))
    plan = plan_of(n, runs, cuts)
    if data.draw(st.booleans()):
        plan.insert(data.draw(st.integers(1, len(plan) - 1)), ("restore",))
    driver = Driver(view, df, data.draw(st.sampled_from([0, 2, windows.HOLD_WINDOWS])))
    driver.play(plan, close=False)  # (checked at each run's end; the oracle's close is slow)
