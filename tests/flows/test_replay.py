"""Replay: live equals replay (one run and many), new definitions and slices against the
oracle, filtered replays in place, pacing, worker and process counts, and interrupted
replays."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from obsflow.connectors.datasets.capture_source import (
    PACE_TICK,
    Boundary,
    CaptureSource,
    ReplaySpec,
)
from obsflow.connectors.datasets.reads import read_capture, read_late, read_view
from obsflow.connectors.datasets.views import read_view_doc, view_base
from obsflow.connectors.storage import commits, layout
from obsflow.connectors.storage.commits import read_log
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main
from obsflow.flows.kernels.viewdef import ViewDef, parse_views
from obsflow.flows.pipeline import jobs
from tests.conftest import ROOT
from tests.delta import capture_commits, table_frame
from tests.flows.oracle import Oracle, assert_rows_match

SIM = "sim://?sources=4&channels=temperature,pressure&rate=20&duration=10m&seed=5"
LIVE_VIEWS = """
[[view]]
name = "m1"
size = "1m"
aggregates = ["count", "sum", "mean", "min", "max", "std", "var", "first", "last", "p50"]
[[view]]
name = "sess"
kind = "session"
gap = "1s"
aggregates = ["count", "mean", "max"]
"""
READING_COLUMNS = ["source", "channel", "time", "seq", "value"]
EXACT = ("source", "channel", "window_start", "window_end", "count", "min", "max", "first")
EXACT += ("last", "p50", "final", "capture", "view_hash")


def view_frame(store: Path, name: str) -> pd.DataFrame:
    t = read_view(Store(str(store)), name)
    t = t.drop_columns([c for c in ("run",) if c in t.column_names])
    return t.to_pandas()


def late_frame(store: Path, name: str) -> pd.DataFrame:
    """A view's late readings in canonical order, without the run that found them late."""
    df = read_late(Store(str(store)), name).to_pandas().drop(columns=["run"])
    return df.sort_values(["source", "channel", "time", "seq"]).reset_index(drop=True)


def commit_runs(store: Path, capture: str) -> list[pd.DataFrame]:
    """The capture as replay must read it: commit by commit (the order runs committed,
    whatever their names), each commit's files of a partition in the order they were written
    (read with deltalake's list of files and pyarrow, not obsflow's readers)."""
    return capture_commits(store, capture, READING_COLUMNS)


def capture_in_commit_order(store: Path, capture: str) -> pd.DataFrame:
    return pd.concat(commit_runs(store, capture), ignore_index=True)


def oracle_of(runs: list[pd.DataFrame], view: ViewDef) -> Oracle:
    oracle = Oracle(view)
    for df in runs:
        oracle.run(df)
    return oracle


def as_ns(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for c in ("window_start", "window_end"):
        frame[c] = frame[c].astype("int64")
    return frame.sort_values(["source", "channel", "window_start"]).reset_index(drop=True)


def assert_late_match(got: pd.DataFrame, oracle: Oracle) -> None:
    want = oracle.late_readings()
    assert len(got) == len(want)
    if len(want):
        want = want.sort_values(["source", "channel", "time", "seq"]).reset_index(drop=True)
        for col in ("source", "channel", "seq", "value"):
            assert got[col].tolist() == want[col].tolist(), col
        assert got["time"].astype("int64").tolist() == want["time"].tolist()


def assert_same_views(new: pd.DataFrame, old: pd.DataFrame, name: str) -> None:
    assert len(new) == len(old) > 0
    assert list(new.columns) == list(old.columns)
    for col in old.columns:
        if col in EXACT:
            assert new[col].tolist() == old[col].tolist(), (name, col)
        else:
            np.testing.assert_allclose(new[col], old[col], rtol=1e-12, err_msg=name + col)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with a capture of SIM, plus its views as built live during ingest.

    The input arrives out of order (late readings included) so lateness matters.
    """
    root = tmp_path_factory.mktemp("live")
    sim = root / "sim.parquet"
    assert (
        main(
            [
                "simulate",
                str(sim),
                "--sources",
                "4",
                "--rate",
                "20",
                "--duration",
                "10m",
                "--seed",
                "5",
            ]
        )
        == 0
    )
    df = pd.read_parquet(sim)
    rng = np.random.default_rng(0)
    jitter = rng.integers(0, 3_000_000_000, len(df))  # up to 3 s of arrival disorder
    df = df.iloc[np.argsort(df["time"].astype("int64").to_numpy() + jitter, kind="stable")]
    shuffled = root / "shuffled.parquet"
    df.to_parquet(shuffled)
    views = root / "live.toml"
    views.write_text(LIVE_VIEWS)
    assert (
        main(
            [
                "ingest",
                str(shuffled),
                "--store",
                str(root / "store"),
                "--capture",
                "c",
                "--views",
                str(views),
                "-q",
            ]
        )
        == 0
    )
    return root


def own_copy(live: Path, tmp_path: Path) -> Path:
    """The module's live store, copied: a test replays into its copy, whatever order the
    tests run in (xdist), and leaves the others' store as the live ingest left it."""
    store = tmp_path / "store"
    shutil.copytree(live / "store", store)
    return store


def test_live_views_equal_replayed_views(live: Path, tmp_path: Path) -> None:
    store = own_copy(live, tmp_path)
    before = {v: as_ns(view_frame(store, v)) for v in ("m1", "sess")}
    assert all(not f["final"].all() for f in before.values())  # the last windows are open
    summary = tmp_path / "s.json"
    assert (
        main(
            [
                "replay",
                "--store",
                str(store),
                "--capture",
                "c",
                "--views",
                str(live / "live.toml"),
                "--summary",
                str(summary),
                "-q",
            ]
        )
        == 0
    )
    s = json.loads(summary.read_text())
    assert s["input"] == s["accepted"] == len(capture_in_commit_order(store, "c"))
    for name, old in before.items():
        assert_same_views(as_ns(view_frame(store, name)), old, name)


@pytest.mark.parametrize(
    "toml",
    [
        '[[view]]\nname = "m1"\nsize = "10s"\naggregates = ["count", "mean", "min", "max", "std"]',
        '[[view]]\nname = "m1"\nsize = "1m"\nlateness = "5s"\n'
        'aggregates = ["count", "sum", "first", "last", "p90"]',
        '[[view]]\nname = "hop"\nkind = "hopping"\nsize = "30s"\nstep = "10s"\nlateness = "1s"',
    ],
)
def test_replay_with_new_definitions_equals_the_oracle(
    live: Path, tmp_path: Path, toml: str
) -> None:
    store = own_copy(live, tmp_path)
    views = tmp_path / "v.toml"
    views.write_text(toml)
    summary = tmp_path / "s.json"
    assert (
        main(
            [
                "replay",
                "--store",
                str(store),
                "--capture",
                "c",
                "--views",
                str(views),
                "--summary",
                str(summary),
                "-q",
            ]
        )
        == 0
    )
    (view,) = parse_views(toml)
    runs = commit_runs(store, "c")
    oracle = oracle_of(runs, view)
    got = as_ns(view_frame(store, view.name))
    assert_rows_match(got, oracle.rows(), view, pd.concat(runs)["value"])
    late = oracle.late_readings()
    assert json.loads(summary.read_text())["late"].get(view.name, 0) == len(late)
    assert_late_match(late_frame(store, view.name), oracle)
    # One run: disorder inside it never makes a reading late (windows wait for the hold).
    assert len(late) == 0


def test_replay_restricted_by_time_and_source_equals_the_restricted_oracle(
    live: Path, tmp_path: Path
) -> None:
    store = own_copy(live, tmp_path)
    views = tmp_path / "v.toml"
    views.write_text(
        '[[view]]\nname = "r"\nsize = "30s"\nlateness = "3s"\naggregates = ["count", "mean", "max"]'
    )
    # A slice builds a new view with --as (without it, a filtered replay recomputes the rows
    # of an existing view in place).
    assert (
        main(
            [
                "replay",
                "--store",
                str(store),
                "--capture",
                "c",
                "--views",
                str(views),
                "--from",
                "2026-01-01T00:02:00Z",
                "--until",
                "2026-01-01T00:05:10",
                "--source",
                "sim-001",
                "--source",
                "sim-003",
                "--as",
                "r",
                "-q",
            ]
        )
        == 0
    )
    (view,) = parse_views(views.read_text())
    lo = pd.Timestamp("2026-01-01T00:02:00Z").value
    hi = pd.Timestamp("2026-01-01T00:05:10Z").value
    runs = [
        df[(df["time"] >= lo) & (df["time"] < hi) & df["source"].isin(["sim-001", "sim-003"])]
        for df in commit_runs(store, "c")
    ]
    got = as_ns(view_frame(store, "r"))
    assert set(got["source"]) == {"sim-001", "sim-003"}
    assert_rows_match(got, oracle_of(runs, view).rows(), view, pd.concat(runs)["value"])


@pytest.mark.integration
def test_one_worker_two_workers_and_two_processes_give_identical_rows(
    live: Path, tmp_path: Path
) -> None:
    store = own_copy(live, tmp_path)
    views = tmp_path / "v.toml"
    views.write_text(
        '[[view]]\nname = "w"\nsize = "20s"\nlateness = "1s"\n'
        'aggregates = ["count", "mean", "std", "p50", "first"]\n'
        '[[view]]\nname = "ws"\nkind = "session"\ngap = "400ms"\n'
    )
    results = []
    for extra in (["--workers", "1"], ["--workers", "2"], ["--processes", "2"]):
        assert (
            main(
                [
                    "replay",
                    "--store",
                    str(store),
                    "--capture",
                    "c",
                    "--views",
                    str(views),
                    "-q",
                    *extra,
                ]
            )
            == 0
        )
        results.append(
            {
                v: as_ns(view_frame(store, v)).drop(columns=["run"], errors="ignore")
                for v in ("w", "ws")
            }
        )
    for name in ("w", "ws"):
        assert len(results[0][name]) > 0
        pd.testing.assert_frame_equal(results[0][name], results[1][name])
        pd.testing.assert_frame_equal(results[0][name], results[2][name])


def _sim_capture(store: Path, seconds: int) -> None:
    jobs.ingest(
        inputs=(f"sim://?sources=2&rate=50&duration={seconds}s&seed=1",),
        store=str(store),
        capture="paced",
        progress=False,
        views=(ViewDef("p", "tumbling", size=10**9, aggregates=("count",)),),
    )


class PaceClock:
    """A replay's wall clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.mark.parametrize(("speed", "seconds"), [(1, 8), (10, 20)])
def test_paced_replay_releases_each_slice_at_its_event_time_divided_by_speed(
    tmp_path: Path, speed: int, seconds: int
) -> None:
    """Pacing on an injected clock: a partition releases nothing before its next slice is due,
    asks to be woken exactly when it is (the start plus the slice's first reading's event-time
    offset from the capture's first reading, divided by the speed), and the whole capture
    comes out, the last slice (seconds - one tick) / speed after the start."""
    _sim_capture(tmp_path, seconds)  # readings from t=0 to t=seconds - 0.02 s
    store = Store(str(tmp_path))
    capture = read_capture(store, "paced")
    origin = pc.min(capture.column("time").cast(pa.int64())).as_py()
    clock = PaceClock()
    start = clock.now
    source = CaptureSource(store, ReplaySpec("paced", speed=float(speed)), clock=clock)
    parts = [source.build_part("read_capture", p, None) for p in source.list_parts()]
    assert len(parts) > 1
    released, offsets = 0, []
    for part in parts:  # independent of each other: each one from the start
        clock.now = start
        while True:
            try:
                batch = part.next_batch()
            except StopIteration:
                break
            if not batch:
                wake = part.next_awake()
                assert wake is not None
                assert wake > clock.now, (wake, clock.now)  # nothing released before its time
                clock.now = wake  # what Bytewax does: sleep until then
                continue
            for _, data in batch:
                if isinstance(data, Boundary):
                    continue
                first = pc.min(data.column("time").cast(pa.int64())).as_py()
                due = start + timedelta(seconds=(first - origin) / 1e9 / speed)
                assert clock.now == due, (clock.now - start, first - origin)
                offsets.append((clock.now - start).total_seconds())
                released += data.num_rows
    assert released == capture.num_rows
    assert min(offsets) == 0.0  # the capture's first reading: at once
    tick = PACE_TICK + 0.02 / speed  # a slice spans PACE_TICK of wall time
    assert seconds / speed - tick <= max(offsets) < seconds / speed, max(offsets)


@pytest.mark.integration
def test_a_killed_replay_leaves_the_previous_views_intact(tmp_path: Path) -> None:
    _sim_capture(tmp_path, 30)
    before = view_frame(tmp_path, "p")
    views = tmp_path / "v.toml"
    views.write_text('[[view]]\nname = "p"\nsize = "5s"\naggregates = ["count", "mean"]')
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "obsflow.flows.cli.main",
            "replay",
            "--store",
            str(tmp_path),
            "--capture",
            "paced",
            "--views",
            str(views),
            "--speed",
            "3",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    # A paced replay of 30 s at 3x takes 10 s; its windows stay open (and unwritten) until it
    # ends. Kill it once its progress line says it has read readings: it is mid-run.
    assert proc.stderr is not None
    progress = ""
    while not re.match(r"\[replay\] [1-9][\d,]* input", progress):
        progress = proc.stderr.readline()
        assert progress, "the replay ended before it reported progress"
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    store = Store(str(tmp_path))
    assert not commits.pending(store, "paced")  # it was interrupted before its commit
    pd.testing.assert_frame_equal(view_frame(tmp_path, "p"), before)
    assert read_view_doc(store, "p")["definition"]["size"] == 10**9  # still the old definition
    # The next replay completes normally.
    assert (
        main(
            ["replay", "--store", str(tmp_path), "--capture", "paced", "--views", str(views), "-q"]
        )
        == 0
    )
    captured = table_frame(tmp_path / "captures" / "paced")
    assert view_frame(tmp_path, "p")["count"].sum() == len(captured)
    assert read_view_doc(store, "p")["definition"]["size"] == 5 * 10**9


# -- a capture written in six runs (issue 11) ---------------------------------------------------

T0 = pd.Timestamp("2026-01-01T00:00:00Z").value
S = 10**9
# Commit order. Two ids as `new_run_id` makes them in one second, whose random part sorts
# against the order they ran; then ids that sort backwards too: "z" before "a", "r9" before
# "r10". Replay must follow the commits, never the object names.
RUN_IDS = ("20260101T000000Z-ffffff", "20260101T000000Z-000000", "z", "a", "r9", "r10")
SIX_VIEWS = """
[[view]]
name = "t10"
size = "10s"
aggregates = ["count", "sum", "mean", "min", "max", "std", "first", "last", "p50"]
[[view]]
name = "hop"
kind = "hopping"
size = "30s"
step = "10s"
lateness = "2s"
aggregates = ["count", "mean", "max"]
[[view]]
name = "sess"
kind = "session"
gap = "400ms"
aggregates = ["count", "sum", "min"]
"""
SIX_VIEW_NAMES = ("t10", "hop", "sess")


def six_run_inputs(seed: int = 11) -> list[pd.DataFrame]:
    """Readings of six runs: run i covers [20i, 20i + 20) s with up to 3 s of disorder, and
    some readings of its last 8 s only arrive at the start of run i + 1 (late for windows its
    end made final). Source x gets one reading at 25 s in run 5 and one at 5 s in run 6."""
    rng = np.random.default_rng(seed)
    runs: list[pd.DataFrame] = []
    carried = pd.DataFrame()
    for i in range(6):
        parts = []
        for src in ("a1", "a2", "a3"):
            for ch in ("temp", "pres"):
                n = 150
                t = T0 + (20 * i * S) + rng.integers(0, 20 * S, n)
                parts.append(
                    pd.DataFrame(
                        {"source": src, "channel": ch, "time": t, "value": rng.normal(10, 3, n)}
                    )
                )
        df = pd.concat(parts, ignore_index=True)
        jitter = rng.integers(0, 3 * S, len(df))
        df = df.iloc[np.argsort(df["time"].to_numpy() + jitter, kind="stable")]
        if i < 5:
            tail = (df["time"] >= T0 + (20 * i + 12) * S) & (rng.random(len(df)) < 0.15)
            moved, df = df[tail], df[~tail]
        else:
            moved = pd.DataFrame()
        df = pd.concat([carried, df], ignore_index=True)
        carried = moved
        if RUN_IDS[i] in ("r9", "r10"):
            t = T0 + (25 if RUN_IDS[i] == "r9" else 5) * S
            x = pd.DataFrame({"source": ["x"], "channel": ["temp"], "time": [t], "value": [1.0]})
            df = pd.concat([df, x], ignore_index=True)
        runs.append(df.reset_index(drop=True))
    return runs


@pytest.fixture(scope="module")
def six_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with capture c written by six ingest runs (RUN_IDS, in that order) and the
    views SIX_VIEWS built by them. Tests change copies of it (``copy_store``)."""
    root = tmp_path_factory.mktemp("six")
    (root / "views.toml").write_text(SIX_VIEWS)
    views = parse_views(SIX_VIEWS)
    for run, df in zip(RUN_IDS, six_run_inputs(), strict=True):
        path = root / f"{run}.parquet"
        df.to_parquet(path)
        result = jobs.ingest(
            inputs=(str(path),),
            store=str(root / "store"),
            capture="c",
            run_id=run,
            views=views,
            progress=False,
        )
        assert result.run == run
        assert result.summary["accepted"] == len(df)
    return root


def copy_store(six: Path, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(six / "store", store)
    return store


def everything(store: Path) -> dict[str, pd.DataFrame]:
    """Every view's rows (final and provisional) and late readings, without run ids."""
    out = {}
    for name in SIX_VIEW_NAMES:
        out[name] = as_ns(view_frame(store, name))
        out[f"late-{name}"] = late_frame(store, name)
    return out


def state_bytes(store: Path, view: str) -> dict[str, bytes]:
    """A view's current window state (open windows, watermarks, frontiers), file by file."""
    s = Store(str(store))
    out = {}
    for part, run in view_base(s, view).state.items():
        for table in ("series", "open", "sketch"):
            rel = layout.view_state(view, run, part, table)
            if s.exists(rel):
                out[rel] = s.read_bytes(rel)
    return out


def assert_unchanged(store: Path, before: dict[str, pd.DataFrame]) -> None:
    after = everything(store)
    for name in SIX_VIEW_NAMES:
        assert_same_views(after[name], before[name], name)
        pd.testing.assert_frame_equal(after[f"late-{name}"], before[f"late-{name}"], obj=name)


def test_six_runs_are_committed_in_run_order_not_name_order(six_runs: Path) -> None:
    log = read_log(Store(str(six_runs / "store")), "c")
    assert [c.run for c in log] == list(RUN_IDS)
    assert sorted(RUN_IDS) != list(RUN_IDS)
    # what ingest built is what the oracle says for these six runs: rows (final and
    # provisional) and late readings
    runs = commit_runs(six_runs / "store", "c")
    assert len(runs) == 6
    values = pd.concat(runs)["value"]
    lates = 0
    for view in parse_views(SIX_VIEWS):
        oracle = oracle_of(runs, view)
        got = as_ns(view_frame(six_runs / "store", view.name))
        assert_rows_match(got, oracle.rows(), view, values)
        assert got["final"].any()
        assert not got["final"].all()
        assert_late_match(late_frame(six_runs / "store", view.name), oracle)
        lates += len(oracle.late_readings())
    assert lates > 0  # the readings carried into the next run made some late


def test_replay_of_six_runs_equals_what_ingest_built(six_runs: Path, tmp_path: Path) -> None:
    store = copy_store(six_runs, tmp_path)
    before = everything(store)
    # r9 captured x at 25 s; its end made [0, 10) final, so x at 5 s in r10 is late: one row
    # (still open) and one late reading. Replaying r10's object first would make two rows.
    x_rows = before["t10"][before["t10"]["source"] == "x"]
    assert x_rows[["window_start", "count", "final"]].values.tolist() == [[T0 + 20 * S, 1, False]]
    x_late = read_late(Store(str(store)), "t10", sources=["x"]).to_pandas()
    assert x_late["time"].astype("int64").tolist() == [T0 + 5 * S]
    assert x_late["run"].tolist() == ["r10"]
    summary = tmp_path / "s.json"
    assert (
        main(["replay", "--store", str(store), "--capture", "c", "--summary", str(summary), "-q"])
        == 0
    )
    s = json.loads(summary.read_text())
    assert sorted(s["views_replayed"]) == sorted(SIX_VIEW_NAMES)  # every view of the capture
    assert s["late"] == {k: n for k in SIX_VIEW_NAMES if (n := len(before[f"late-{k}"])) > 0}
    assert_unchanged(store, before)
    for v in SIX_VIEW_NAMES:  # every row was rebuilt by the replay
        assert set(read_view(Store(str(store)), v).column("run").to_pylist()) == {s["run"]}
    after = as_ns(view_frame(store, "t10"))
    assert len(after[after["source"] == "x"]) == 1
    assert len(read_late(Store(str(store)), "t10", sources=["x"])) == 1


FILTERS = {
    "sources": (["a2", "x"], None, None),
    "time range": ([], "2026-01-01T00:00:33Z", "2026-01-01T00:01:27Z"),  # cuts windows
    "both": (["a1", "x"], "2026-01-01T00:00:15Z", "2026-01-01T00:01:05Z"),
}


def assert_rewrote_the_slice(
    store: Path, view: str, run: str, sources: list[str], start: str | None, until: str | None
) -> None:
    """The rows of windows in the slice come from replay ``run``; no other row does."""
    rows = read_view(Store(str(store)), view).to_pandas()
    inside = rows["source"].isin(sources) if sources else pd.Series(True, index=rows.index)
    if start is not None:
        inside &= rows["window_end"] > pd.Timestamp(start)
    if until is not None:
        inside &= rows["window_start"] < pd.Timestamp(until)
    assert inside.any()
    assert not inside.all()
    assert (rows.loc[inside, "run"] == run).all(), view
    assert (rows.loc[~inside, "run"] != run).all(), view


def filter_args(sources: list[str], start: str | None, until: str | None) -> list[str]:
    args = [a for s in sources for a in ("--source", s)]
    args += ["--from", start] if start else []
    args += ["--until", until] if until else []
    return args


@pytest.mark.parametrize("which", list(FILTERS))
def test_filtered_replays_leave_the_views_as_they_were(
    six_runs: Path, tmp_path: Path, which: str
) -> None:
    store = copy_store(six_runs, tmp_path)
    before = everything(store)
    state = {v: state_bytes(store, v) for v in SIX_VIEW_NAMES}
    assert all(state.values())
    args = filter_args(*FILTERS[which])
    summary = tmp_path / "s.json"
    replay = ["replay", "--store", str(store), "--capture", "c", "--summary", str(summary)]
    assert main([*replay, *args, "-q"]) == 0
    assert_unchanged(store, before)
    run = json.loads(summary.read_text())["run"]
    for v in SIX_VIEW_NAMES:  # not a replay that did nothing: it rewrote the slice's rows
        assert_rewrote_the_slice(store, v, run, *FILTERS[which])
    # The window state is kept as it was, so a later ingest continues the views exactly.
    assert {v: state_bytes(store, v) for v in SIX_VIEW_NAMES} == state


@pytest.mark.parametrize("which", list(FILTERS))
def test_a_slice_as_a_new_view_equals_the_oracle_of_the_slice(
    six_runs: Path, tmp_path: Path, which: str
) -> None:
    store = copy_store(six_runs, tmp_path)
    before = everything(store)
    sources, start, until = FILTERS[which]
    lo = T0 if start is None else pd.Timestamp(start).value
    hi = T0 + 10**15 if until is None else pd.Timestamp(until).value
    runs = [
        df[(df["time"] >= lo) & (df["time"] < hi) & (df["source"].isin(sources) | (not sources))]
        for df in commit_runs(store, "c")
    ]
    values = pd.concat(runs)["value"]
    blocks = ["[[view]]" + b for b in SIX_VIEWS.split("[[view]]")[1:]]  # one TOML per view
    for view, block in zip(parse_views(SIX_VIEWS), blocks, strict=True):
        views = tmp_path / f"{view.name}.toml"
        views.write_text(block)
        assert parse_views(block) == (view,)
        name = f"slice_{view.name}"
        args = ["--views", str(views), *filter_args(sources, start, until), "--as", name]
        assert main(["replay", "--store", str(store), "--capture", "c", *args, "-q"]) == 0
        oracle = oracle_of(runs, view)
        got = as_ns(view_frame(store, name))
        assert len(got) > 0
        if sources:
            assert set(got["source"]) <= set(sources)
        assert_rows_match(got, oracle.rows(), view, values)
        assert_late_match(late_frame(store, name), oracle)
    assert_unchanged(store, before)  # the views themselves are untouched


def test_a_filtered_replay_after_the_demo_changes_no_view(tmp_path: Path) -> None:
    """The bug report: after ``obsflow demo``, this replay changed both demo views."""
    store = str(tmp_path / "store")
    assert main(["demo", "--store", store]) == 0
    names = ("demo_10s", "demo_1m")
    before = {v: as_ns(view_frame(Path(store), v)) for v in names}
    late = {v: late_frame(Path(store), v) for v in names}
    assert all(len(f) > 0 for f in before.values())
    summary = tmp_path / "s.json"
    replay = ["replay", "--store", store, "--capture", "demo", "--summary", str(summary)]
    assert main([*replay, "--from", "2026-01-01T00:00:30Z", "--source", "sim-000"]) == 0
    run = json.loads(summary.read_text())["run"]
    for v in names:
        assert_same_views(as_ns(view_frame(Path(store), v)), before[v], v)
        pd.testing.assert_frame_equal(late_frame(Path(store), v), late[v])
        assert_rewrote_the_slice(Path(store), v, run, ["sim-000"], "2026-01-01T00:00:30Z", None)
