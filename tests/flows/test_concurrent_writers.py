"""Writers that race or stall on one capture (issue 28, must-show 1 and 3).

There is no lock: each run commits as the capture's next number, one conditional put on the
capture table's log, and a run whose base is no longer the capture's last commit commits
nothing and is run again from the new base (its inputs read again: readings the other run
captured are duplicates). Tried against a writer stopped (SIGSTOP) while another ingests the
same capture, with disjoint and with overlapping inputs, and two writers started together, 20
times — on a local store and on S3 (moto). Afterwards the capture holds every reading of both
inputs exactly once, and the views equal pandas over the capture.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from obsflow.connectors.storage import commits, tables
from obsflow.connectors.storage.store import Store
from obsflow.flows.kernels.viewdef import parse_views
from tests.conftest import ROOT
from tests.delta import polars_frame
from tests.flows.oracle import Oracle, assert_rows_match

pytestmark = pytest.mark.integration  # servers, brokers, child processes (tests/conftest.py)

VIEWS = """
[[view]]
name = "m1"
size = "1m"
aggregates = ["count", "mean", "min", "max"]
"""
T0 = pd.Timestamp("2026-05-01T00:00:00Z").value
S = 10**9


def readings(sources: list[str], n: int, seed: int, start: int = T0) -> pa.Table:
    """``n`` readings per source, 0.1 s apart, in time order."""
    rng = np.random.default_rng(seed)
    t = start + np.arange(n, dtype=np.int64) * (S // 10)
    return pa.table(
        {
            "source": np.repeat(sources, n),
            "channel": np.repeat("x", n * len(sources)),
            "time": np.tile(t, len(sources)),
            "value": rng.normal(size=n * len(sources)),
        }
    )


def obsflow(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "obsflow.flows.cli.main", *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )


def ingest_args(path: Path, store: str, views: Path) -> list[str]:
    return ["ingest", str(path), "--store", store, "--capture", "c", "--views", str(views), "-q"]


def files_written(store: str) -> int:
    """Capture files in the store, committed or not (what a writer has put there so far)."""
    s = Store(store)
    return sum(
        1
        for rel in s.walk_files("captures/c")
        if rel.endswith(".parquet") and "_delta_log" not in rel
    )


def expected_capture(*inputs: pa.Table) -> pd.DataFrame:
    """Every distinct reading of the inputs (identity: source, channel, time), once."""
    frame = pd.concat([t.to_pandas() for t in inputs], ignore_index=True)
    frame = frame.drop_duplicates(["source", "channel", "time"])
    return frame.sort_values(["source", "time"]).reset_index(drop=True)


def assert_capture_and_views(store: str, want: pd.DataFrame) -> None:
    """The capture holds ``want`` exactly once (read by Polars, as any tool would) and the
    view equals pandas over the capture, run by run in commit order."""
    got = polars_frame(store, "captures/c")
    got = got.sort_values(["source", "time"]).reset_index(drop=True)
    assert not got.duplicated(["source", "channel", "time"]).any()
    assert len(got) == len(want)
    assert got["time"].astype("int64").tolist() == want["time"].tolist()
    assert got["value"].tolist() == want["value"].tolist()
    (view,) = parse_views(VIEWS)
    oracle = Oracle(view)
    for _, run in got.groupby("commit", sort=True):  # (inputs are in time order per source)
        run = run.sort_values(["source", "time"])
        oracle.run(
            run.assign(time=run["time"].astype("int64"))[
                ["source", "channel", "time", "seq", "value"]
            ]
        )
    rows = polars_frame(store, "views/m1")
    rows = rows.assign(
        window_start=rows["window_start"].astype("int64"),
        window_end=rows["window_end"].astype("int64"),
    ).sort_values(["source", "channel", "window_start"], ignore_index=True)
    assert_rows_match(rows, oracle.rows(), view, got["value"])


@pytest.mark.parametrize(
    ("where", "overlap"),
    [
        ("local", True),
        ("s3", False),
        # (the other two pairs add a minute of a loaded CI machine each: the slow tier)
        pytest.param("local", False, marks=pytest.mark.slow),
        pytest.param("s3", True, marks=pytest.mark.slow),
    ],
    ids=["local-overlapping", "s3-disjoint", "local-disjoint", "s3-overlapping"],
)
def test_a_writer_stopped_while_another_commits_commits_nothing_stale(
    tmp_path: Path, request: pytest.FixtureRequest, where: str, overlap: bool
) -> None:
    """Writer A is stopped (SIGSTOP) once it has written 4 capture files; writer B ingests
    its own file into the same capture and commits; A is continued. A's commit finds the
    capture changed, commits nothing, and A runs again from B's commit: it exits 0 having
    captured all of its readings and none of B's twice. Its command run once more adds
    nothing."""
    base_url = str(tmp_path / "store")
    if where == "s3":
        base_url = f"s3://{request.getfixturevalue('s3_env')}/store"
    views = tmp_path / "views.toml"
    views.write_text(VIEWS)
    a = readings([f"a{i}" for i in range(12)], 100_000, seed=1)
    b = readings([f"b{i}" for i in range(2)], 50_000, seed=2, start=T0 + 600 * S)
    if overlap:  # B holds a third of A's readings too (with the same values)
        b = pa.concat_tables([b, a.slice(0, a.num_rows // 3)])
    pq.write_table(a, tmp_path / "a.parquet")
    pq.write_table(b, tmp_path / "b.parquet")

    for attempt in range(3):  # (a busy machine may let A finish before the stop: again)
        store_url = f"{base_url}{attempt}"
        writer_a = obsflow(*ingest_args(tmp_path / "a.parquet", store_url, views))
        deadline = time.monotonic() + 120
        while files_written(store_url) < 4:  # A is well into its run
            assert writer_a.poll() is None, writer_a.stderr.read() if writer_a.stderr else ""
            assert time.monotonic() < deadline, "A wrote nothing"
            time.sleep(0.02)
        os.kill(writer_a.pid, signal.SIGSTOP)
        if commits.head(Store(store_url), "c") == 0:
            break  # stopped before its commit, as it should be
        os.kill(writer_a.pid, signal.SIGCONT)
        writer_a.communicate(timeout=300)
    else:
        pytest.fail("A committed before it could be stopped, three times")
    try:
        writer_b = obsflow(*ingest_args(tmp_path / "b.parquet", store_url, views))
        _, err_b = writer_b.communicate(timeout=300)
        assert writer_b.returncode == 0, err_b
        assert commits.head(Store(store_url), "c") == 1  # B committed #1 while A was stopped
    finally:
        os.kill(writer_a.pid, signal.SIGCONT)
    _, err_a = writer_a.communicate(timeout=300)
    assert writer_a.returncode == 0, err_a
    assert "changed while run" in err_a  # it found out at its commit...
    assert "ran it again" in err_a  # ...and ran again from the new base
    log = commits.read_log(Store(store_url), "c")
    assert [c.n for c in log] == [1, 2]  # B's commit, then A's: no commit lost or doubled
    assert_capture_and_views(store_url, expected_capture(a, b))

    again = obsflow(*ingest_args(tmp_path / "a.parquet", store_url, views))
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert commits.head(Store(store_url), "c") == 2  # already captured: skipped
    assert_capture_and_views(store_url, expected_capture(a, b))


@pytest.mark.parametrize(
    ("where", "trials"),
    [
        ("local", 10),
        ("s3", 4),
        # 20 trials each take minutes (an ingest on moto ~2 s): the slow tier runs them
        pytest.param("local", 20, marks=pytest.mark.slow),
        pytest.param("s3", 20, marks=pytest.mark.slow),
    ],
)
def test_two_writers_started_together_capture_everything_once(
    tmp_path: Path, request: pytest.FixtureRequest, where: str, trials: int
) -> None:
    """Two ingests of different files into one capture, started together, 20 times over:
    every trial commits both (the loser runs again from the winner's commit), no commit is
    lost, and every reading is captured once."""
    store_url = str(tmp_path / "store")
    if where == "s3":
        store_url = f"s3://{request.getfixturevalue('s3_env')}/store"
    views = tmp_path / "views.toml"
    views.write_text(VIEWS)
    inputs = []
    for trial in range(trials):
        for side in ("x", "y"):
            t = readings([f"{side}{trial}"], 200, seed=trial, start=T0 + trial * 60 * S)
            path = tmp_path / f"{side}{trial}.parquet"
            pq.write_table(t, path)
            inputs.append(t)
    lost_races = 0
    for trial in range(trials):
        procs = [
            obsflow(*ingest_args(tmp_path / f"{side}{trial}.parquet", store_url, views))
            for side in ("x", "y")
        ]
        errs = [p.communicate(timeout=300)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errs
        lost_races += sum("ran it again" in e for e in errs)
        assert commits.head(Store(store_url), "c") == 2 * (trial + 1)
    log = commits.read_log(Store(store_url), "c")
    assert [c.n for c in log] == list(range(1, 2 * trials + 1))
    assert len({c.run for c in log}) == 2 * trials
    assert lost_races > 0  # the writers really raced (each start takes a second or two)
    assert_capture_and_views(store_url, expected_capture(*inputs))
    history = tables.history(Store(store_url), "captures/c")
    assert sum("commit" in (e.get("obsflow") or {}) for e in history) == 2 * trials
