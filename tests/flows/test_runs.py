"""Views over data that arrives in many runs, through real ingest runs into a real store.

The oracle (``tests/flows/oracle.py``) models runs: open windows carry over, a window is final
only once its series' watermark passed it, late means late. After every run the view (final
and provisional rows) and the late readings must be the oracle's.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obsflow.connectors.datasets import reads
from obsflow.connectors.datasets.views import list_views
from obsflow.connectors.storage import commits, tables
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main
from obsflow.flows.kernels.viewdef import ViewDef
from obsflow.flows.pipeline import jobs
from tests.delta import table_frame
from tests.flows.oracle import Oracle

S = 10**9
VIEWS = (
    ViewDef("tumble", "tumbling", size=2 * S, lateness=3 * S, aggregates=("count", "mean", "max")),
    ViewDef("hop", "hopping", size=4 * S, step=S, aggregates=("count", "min", "last")),
    ViewDef("sess", "session", gap=2 * S, lateness=S, aggregates=("count", "sum", "first")),
)


def _write(path: Path, df: pd.DataFrame) -> None:
    table = pa.table(
        {
            "source": df["source"].astype(str),
            "channel": df["channel"].astype(str),
            "time": pa.array(df["time"].to_numpy(np.int64), pa.timestamp("ns", tz="UTC")),
            "value": df["value"].astype(float),
        }
    )
    pq.write_table(table, path)


def view_as_oracle(store: Store, view: ViewDef) -> pd.DataFrame:
    """The view's rows in the oracle's form: int ns times, its columns, its order."""
    t = reads.read_view(store, view.name).to_pandas()
    for col in ("window_start", "window_end"):
        t[col] = t[col].astype("int64")
    cols = ["source", "channel", "window_start", "window_end", *view.aggregates, "final"]
    return t[cols].reset_index(drop=True)


def late_as_oracle(store: Store, view: ViewDef) -> list[tuple[str, str, int, float]]:
    t = reads.read_late(store, view.name).to_pandas()
    return sorted(
        zip(t["source"], t["channel"], t["time"].astype("int64"), t["value"], strict=True)
    )


def check_against(store: Store, oracles: list[Oracle]) -> None:
    for oracle in oracles:
        view = oracle.view
        want = oracle.rows()[view_as_oracle(store, view).columns].reset_index(drop=True)
        got = view_as_oracle(store, view)
        pd.testing.assert_frame_equal(got, want, check_dtype=False, obj=view.name)
        late = oracle.late_readings()
        expected = (
            sorted(zip(late["source"], late["channel"], late["time"], late["value"], strict=True))
            if len(late)
            else []
        )
        assert late_as_oracle(store, view) == expected, view.name


@st.composite
def datasets(draw: st.DrawFn) -> tuple[pd.DataFrame, list[int]]:
    """Readings of 1-3 series over up to 40 s, in an arrival order that is mostly by time with
    disorder within and beyond the views' lateness; cut points into 1-6 runs."""
    n = draw(st.integers(5, 60))
    ms = draw(st.lists(st.integers(0, 40_000), min_size=n, max_size=n, unique=True))
    series = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    jitter = draw(st.lists(st.integers(-6_000, 500), min_size=n, max_size=n))
    df = pd.DataFrame(
        {
            "source": [f"s{x}" for x in series],
            "channel": "temp",
            "time": np.array(ms, np.int64) * 10**6,
            "value": np.arange(n, dtype=float) * 0.5 - 3,
        }
    )
    # arrival order: by time plus jitter (late arrivals of up to 6 s)
    df = df.iloc[np.argsort(np.array(ms) + np.array(jitter), kind="stable")]
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=5)))
    return df.reset_index(drop=True), cuts


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=datasets())
def test_views_after_every_run_equal_the_oracle_over_all_data_so_far(
    tmp_path_factory: pytest.TempPathFactory, data: tuple[pd.DataFrame, list[int]]
) -> None:
    df, cuts = data
    root = tmp_path_factory.mktemp("runs")
    store = Store(str(root / "s"))
    oracles = [Oracle(v) for v in VIEWS]
    bounds = [0, *cuts, len(df)]
    seq: dict[str, int] = {}
    for k, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        part = df.iloc[lo:hi].copy()
        # seq as the capture numbers it: per source, in arrival order, across runs
        numbers = []
        for src in part["source"]:
            seq[src] = seq.get(src, 0) + 1
            numbers.append(seq[src])
        part["seq"] = numbers
        path = root / f"run{k}.parquet"
        _write(path, part)
        # ids whose names sort against the commit order ("r9" > "r10" > ...)
        result = jobs.ingest(
            inputs=[str(path)],
            store=store.url,
            capture="c",
            views=VIEWS,
            run_id=f"r{9 - k}" if k < 2 else f"r{100 - k}",
            progress=False,
        )
        assert result.summary["accepted"] == len(part)
        assert result.summary["commit"] == k + 1
        for oracle in oracles:
            oracle.run(part)
        check_against(store, oracles)


def _hourly(hours: int, per_hour: int = 60) -> list[pd.DataFrame]:
    rng = np.random.default_rng(hours)
    t0 = pd.Timestamp("2026-07-01T00:00:00Z").value
    out = []
    for h in range(hours):
        offsets = np.sort(rng.choice(3600, per_hour, replace=False)).astype(np.int64)
        out.append(
            pd.DataFrame(
                {
                    "source": "buoy",
                    "channel": "sst",
                    "time": t0 + (h * 3600 + offsets) * S,
                    "value": rng.normal(14, 0.5, per_hour),
                }
            )
        )
    return out


@pytest.mark.parametrize("hours", [3, 24])
def test_hourly_files_make_one_daily_row_equal_to_pandas(tmp_path: Path, hours: int) -> None:
    daily = ViewDef(
        "daily", "tumbling", size=86_400 * S, aggregates=("count", "mean", "min", "max", "std")
    )
    store = Store(str(tmp_path / "s"))
    frames = _hourly(hours)
    for h, frame in enumerate(frames):
        path = tmp_path / f"hour{h}.parquet"
        _write(path, frame)
        result = jobs.ingest(
            inputs=[str(path)], store=store.url, capture="c", views=(daily,), progress=False
        )
        assert result.summary["late"] == {}, h
    every = pd.concat(frames)
    (row,) = reads.read_view(store, "daily").to_pylist()
    assert row["count"] == len(every) == 60 * hours
    assert row["mean"] == pytest.approx(every["value"].mean(), rel=1e-12)
    assert row["min"] == every["value"].min()
    assert row["max"] == every["value"].max()
    assert row["std"] == pytest.approx(every["value"].std(ddof=1), rel=1e-9)
    assert row["final"] is False  # the day is not over: the row is provisional
    assert reads.read_late(store, "daily").num_rows == 0


def test_a_reader_during_20_runs_never_sees_a_window_twice_or_loses_one(tmp_path: Path) -> None:
    view = ViewDef("w", "tumbling", size=5 * S, aggregates=("count", "mean"))
    store = Store(str(tmp_path / "s"))
    folder = tmp_path / "s" / "views" / "w"
    stop = threading.Event()
    problems: list[str] = []
    reads_done = [0]

    def reader() -> None:
        try:
            read_loop()
        except Exception as exc:  # a failing read is a failure too, not a thread warning
            problems.append(repr(exc))

    def read_loop() -> None:
        seen: set[tuple[str, int]] = set()
        final: dict[tuple[str, int], int] = {}
        while not stop.is_set():
            if not tables.exists(store, "views/w"):
                continue  # (its first commit is not in yet)
            # obsflow's reader, and Polars reading the table as any tool would
            frames = [reads.read_view(store, "w").to_pandas(), table_frame(folder)]
            for frame in frames:
                keys = list(
                    zip(frame["source"], frame["window_start"].astype("int64"), strict=True)
                )
                if len(keys) != len(set(keys)):
                    problems.append(f"duplicate windows after {reads_done[0]} reads")
                lost = seen - set(keys)
                if lost:
                    problems.append(f"lost {sorted(lost)[:3]} after {reads_done[0]} reads")
                seen |= set(keys)
                for key, count, is_final in zip(keys, frame["count"], frame["final"], strict=True):
                    if key in final and final[key] != count:
                        problems.append(f"final window {key} changed")
                    if is_final:
                        final[key] = count
                reads_done[0] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        rng = np.random.default_rng(20)
        t0 = pd.Timestamp("2026-07-01T00:00:00Z").value
        for k in range(20):
            # each run continues the last one's windows (and the run's end cuts one)
            t = t0 + (k * 12 + np.sort(rng.uniform(0, 12, 40))) * S
            frame = pd.DataFrame(
                {
                    "source": rng.choice(["a", "b", "c"], 40),
                    "channel": "x",
                    "time": t.astype(np.int64),
                    "value": rng.normal(size=40),
                }
            )
            path = tmp_path / f"run{k}.parquet"
            _write(path, frame)
            jobs.ingest(
                inputs=[str(path)], store=store.url, capture="c", views=(view,), progress=False
            )
    finally:
        stop.set()
        thread.join()
    assert not problems, problems[:5]
    assert reads_done[0] >= 20  # the reader really read while the runs went on
    rows = reads.read_view(store, "w").to_pandas()
    assert rows["count"].sum() == 20 * 40


def test_later_ingests_keep_every_view_of_the_capture_current(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ingest without --views, or with only some of them, still builds every view the
    capture has; a view new to a capture that holds readings is refused until a replay built
    it over them, and then later ingests continue it."""
    url = str(tmp_path / "s")
    daily = tmp_path / "daily.toml"
    daily.write_text('[[view]]\nname = "daily"\nkind = "tumbling"\nsize = "1d"\n')
    both = tmp_path / "both.toml"
    both.write_text(
        daily.read_text() + '[[view]]\nname = "hourly"\nkind = "tumbling"\nsize = "1h"\n'
    )
    frames = _hourly(4)
    paths = []
    for h, frame in enumerate(frames):
        paths.append(tmp_path / f"hour{h}.parquet")
        _write(paths[-1], frame)

    def ingest(path: Path, *views: str) -> int:
        return main(["ingest", str(path), "--store", url, "--capture", "c", "-q", *views])

    assert ingest(paths[0], "--views", str(daily)) == 0
    assert ingest(paths[1]) == 0  # no --views: the capture's views, not a new "c_1m"
    store = Store(url)
    assert [d["name"] for d in list_views(store)] == ["daily"]
    assert reads.read_view(store, "daily")["count"].to_pylist() == [120]

    capsys.readouterr()
    log = commits.read_log(store, "c")
    assert ingest(paths[2], "--views", str(both)) == 2
    err = capsys.readouterr().err
    assert "view 'hourly' is new, and capture 'c' already holds 120 readings" in err
    assert "obsflow replay --capture c --views FILE" in err
    assert commits.read_log(store, "c") == log  # nothing began, nothing committed
    assert store.listdir("_obsflow/staging") == []

    assert main(["replay", "--store", url, "--capture", "c", "--views", str(both), "-q"]) == 0
    assert ingest(paths[2]) == 0  # both views continue
    assert ingest(paths[3], "--views", str(daily)) == 0  # hourly is built all the same
    every = pd.concat(frames)
    hours = every.groupby(pd.to_datetime(every["time"], utc=True).dt.floor("1h"))["value"]
    hourly = reads.read_view(store, "hourly").to_pandas()
    assert hourly["count"].tolist() == hours.count().tolist() == [60] * 4
    assert hourly["mean"].to_numpy() == pytest.approx(hours.mean().to_numpy(), rel=1e-12)
    assert reads.read_view(store, "daily")["count"].to_pylist() == [240]
    assert reads.read_late(store, "hourly").num_rows == 0
