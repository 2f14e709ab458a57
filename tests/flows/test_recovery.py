"""Exactly-once after kill -9: interrupted ingests resume and leave each row once, also in the
middle of a sequence of runs whose views carry open windows from one run to the next."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from obsflow.connectors.datasets.reads import read_late
from obsflow.connectors.sources.simulator import SimSpec, generate
from obsflow.connectors.storage import layout
from obsflow.connectors.storage.commits import read_log
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main
from obsflow.flows.pipeline.runner import RECOVERY_FORMAT
from tests.conftest import CRASH_VIEWS, ROOT, sorted_frame
from tests.delta import table_frame

pytestmark = pytest.mark.integration  # servers, brokers, child processes (tests/conftest.py)

SIM = "sim://?sources=6&channels=temperature,pressure&rate=1000&duration=120s&seed=9"
VIEWS = CRASH_VIEWS


def ingest_cmd(
    store: Path,
    views: Path,
    recovery: Path | None,
    source: str = SIM,
    summary: Path | None = None,
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "obsflow.flows.cli.main",
        "ingest",
        source,
        "--store",
        str(store),
        "--capture",
        "c",
        "--views",
        str(views),
        "--batch-rows",
        "20000",
        "-q",
        "--summary",
        str(summary or store.parent / f"{store.name}-summary.json"),
    ]
    if recovery is not None:
        cmd += ["--recovery", str(recovery), "--snapshot-interval", "0.2"]
    return cmd


def outputs(store: Path) -> dict[str, pd.DataFrame]:
    """Capture, views (final and provisional rows) and late readings in canonical order,
    without the runs that wrote them."""
    capture = table_frame(store / "captures" / "c").drop(columns=["commit"])
    out = {"capture": sorted_frame(capture)}
    for view in ("s10", "sess"):
        df = table_frame(store / "views" / view).drop(columns=["run"])
        out[view] = df.sort_values(["source", "channel", "window_start"]).reset_index(drop=True)
        late = read_late(Store(str(store)), view).to_pandas().drop(columns=["run"])
        out[f"late-{view}"] = sorted_frame(late)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, pd.DataFrame], float]:
    """An uninterrupted run, and how long it took."""
    root = tmp_path_factory.mktemp("ref")
    views = root / "views.toml"
    views.write_text(VIEWS)
    started = time.monotonic()
    subprocess.run(ingest_cmd(root / "store", views, None), cwd=ROOT, check=True, timeout=300)
    return outputs(root / "store"), time.monotonic() - started


def kill_and_resume(tmp: Path, seed: int, duration: float) -> tuple[Path, int]:
    """Start, SIGKILL at random points (up to 3 times), then resume until the run completes."""
    views = tmp / "views.toml"
    views.write_text(VIEWS)
    store, recovery = tmp / "store", tmp / "recovery"
    rng = random.Random(seed)
    kills = 0
    for attempt in range(3):
        proc = subprocess.Popen(
            ingest_cmd(store, views, recovery),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        # The first kill lands well inside the run (once it has written something: how long
        # the interpreter takes to start varies with the machine's load); later ones may find
        # it finished.
        if attempt == 0:
            wait_until_staged(proc, store, recovery)
            time.sleep(rng.uniform(0, duration * 0.3))
        else:
            time.sleep(rng.uniform(0.3, duration * 0.9))
        if proc.poll() is not None:  # finished before the kill
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    subprocess.run(ingest_cmd(store, views, recovery), cwd=ROOT, check=True, timeout=300)
    return store, kills


def written_files(store: Path, run: str) -> list[Path]:
    """The capture files ``run`` has written (committed or not)."""
    return list((store / layout.capture_dir("c")).glob(f"part-*/{run}-*.parquet"))


def wait_until_staged(proc: subprocess.Popen[bytes], store: Path, recovery: Path) -> str:
    """Poll until the run started in ``proc`` with ``recovery`` has written capture files and
    taken a recovery snapshot; its run id."""
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "the run ended before it wrote anything"
        assert time.monotonic() < deadline, "the run wrote nothing in 120 s"
        run_doc = recovery / "obsflow-run.json"
        if run_doc.exists():
            run = json.loads(run_doc.read_text())["run"]
            if written_files(store, run) and snapshotted(recovery):
                return str(run)
        time.sleep(0.02)


def snapshotted(recovery: Path) -> bool:
    """Whether Bytewax has committed a snapshot epoch in the recovery directory."""
    for db in recovery.glob("*.sqlite3"):
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
            ) as con:
                if con.execute("select count(*) from commits").fetchone()[0]:
                    return True
        except sqlite3.Error:  # being created or written
            continue
    return False


def check_against(store: Path, reference: dict[str, pd.DataFrame]) -> None:
    got = outputs(store)
    for name, want in reference.items():
        pd.testing.assert_frame_equal(got[name], want, obj=name)
    summary = json.loads((store.parent / f"{store.name}-summary.json").read_text())
    assert summary["input"] == summary["accepted"] + summary["rejected"] + summary["duplicates"]
    assert summary["accepted"] == len(reference["capture"])
    # rows: windows made final; provisional: windows still open when the run ended
    assert summary["views"] == {
        v: {
            "rows": int(reference[v]["final"].sum()),
            "provisional": int((~reference[v]["final"]).sum()),
        }
        for v in ("s10", "sess")
    }


@pytest.mark.parametrize("seed", range(1))  # more seeds: the slow soak below
def test_kill_9_and_resume_gives_the_uninterrupted_outputs(
    tmp_path: Path, reference: tuple[dict[str, pd.DataFrame], float], seed: int
) -> None:
    want, duration = reference
    store, kills = kill_and_resume(tmp_path, seed, duration)
    assert kills >= 1
    check_against(store, want)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 30))
def test_kill_9_and_resume_many_times(
    tmp_path: Path, reference: tuple[dict[str, pd.DataFrame], float], seed: int
) -> None:
    want, duration = reference
    store, kills = kill_and_resume(tmp_path, seed, duration)
    assert kills >= 1
    check_against(store, want)


# -- a kill in the middle of a sequence of runs ------------------------------------------------

RUNS = 5
SEQ_SIM = "sim://?sources=6&channels=temperature,pressure&rate=1000&duration=100s&seed=4"


def run_inputs(tmp: Path) -> list[Path]:
    """Five runs of 20 s of SEQ_SIM each, in time order, except that a tenth of the readings
    of each run's seconds 8 to 18 only arrive at the start of the next run: late for the
    windows its end made final (s10's window of seconds 0-10), on time for the others."""
    df = generate(SimSpec.from_url(SEQ_SIM)).to_pandas()
    t = df["time"].astype("int64")
    t0 = int(t.min())
    rng = np.random.default_rng(3)
    run_of = ((t - t0) // (20 * 10**9)).clip(upper=RUNS - 1).to_numpy()
    offset = ((t - t0) % (20 * 10**9)).to_numpy()
    carried = (offset >= 8 * 10**9) & (offset < 18 * 10**9) & (run_of < RUNS - 1)
    carried &= rng.random(len(df)) < 0.1
    paths, carry = [], df.iloc[0:0]
    for i in range(RUNS):
        mine = df[(run_of == i) & ~carried]
        path = tmp / f"run{i + 1}.parquet"
        pd.concat([carry, mine]).to_parquet(path)
        carry = df[(run_of == i) & carried]
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def sequence(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The inputs of the five runs, and a store they were ingested into without a crash."""
    root = tmp_path_factory.mktemp("seq")
    views = root / "views.toml"
    views.write_text(VIEWS)
    inputs = run_inputs(root)
    for i, path in enumerate(inputs, 1):
        summary = root / f"run{i}.json"
        assert main(ingest_cmd(root / "store", views, None, str(path), summary)[3:]) == 0
    return root, inputs


def test_kill_9_in_the_middle_of_run_3_of_5_and_resume(
    tmp_path: Path, sequence: tuple[Path, list[Path]]
) -> None:
    ref_root, inputs = sequence
    want = outputs(ref_root / "store")
    assert all(len(want[f"late-{v}"]) for v in ("s10", "sess"))  # runs made readings late
    assert all(not want[v]["final"].all() for v in ("s10", "sess"))  # windows left open
    views = tmp_path / "views.toml"
    views.write_text(VIEWS)
    store, recovery = tmp_path / "store", tmp_path / "recovery3"
    summaries = [tmp_path / f"run{i}.json" for i in range(1, RUNS + 1)]
    for i in (0, 1):
        assert main(ingest_cmd(store, views, None, str(inputs[i]), summaries[i])[3:]) == 0
    cmd = ingest_cmd(store, views, recovery, str(inputs[2]), summaries[2])
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        run = wait_until_staged(proc, store, recovery)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # It stopped in the middle: files written, not committed, nothing of it visible.
    assert written_files(store, run)
    assert [c.run for c in read_log(Store(str(store)), "c")][2:] == []
    assert table_frame(store / "captures" / "c")["commit"].max() == 2
    assert not (store / layout.run_summary(run)).exists()
    # The same command resumes it (same recovery directory, same run), then runs 4 and 5.
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=300)
    assert json.loads(summaries[2].read_text())["run"] == run
    for i in (3, 4):
        assert main(ingest_cmd(store, views, None, str(inputs[i]), summaries[i])[3:]) == 0
    assert len(read_log(Store(str(store)), "c")) == RUNS
    got = outputs(store)
    for name, frame in want.items():
        pd.testing.assert_frame_equal(got[name], frame, obj=name)
    for i in range(RUNS):  # every run, the resumed one too, counted what the reference did
        a = json.loads(summaries[i].read_text())
        b = json.loads((ref_root / f"run{i + 1}.json").read_text())
        for key in ("input", "accepted", "rejected", "duplicates", "late", "views"):
            assert a[key] == b[key], (i + 1, key)


def test_a_run_killed_just_after_its_commit_reports_its_counts_when_resumed(
    tmp_path: Path,
) -> None:
    """The run summary is part of the commit: a resume that finds its run committed (killed
    between the commit and the process's end) reports that run's counts, not zeros."""
    store = tmp_path / "store"
    views = tmp_path / "views.toml"
    views.write_text(VIEWS)
    source = "sim://?sources=2&channels=t&rate=10&duration=30s&seed=3"
    first = tmp_path / "first.json"
    cmd = ingest_cmd(store, views, tmp_path / "rec", source=source, summary=first)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(first.read_text())
    (entry,) = read_log(Store(str(store)), "c")
    assert entry.run == summary["run"]
    # The recovery directory as a kill after the commit leaves it: the run, its base.
    rec = tmp_path / "rec-killed"
    rec.mkdir()
    (rec / "obsflow-run.json").write_text(
        json.dumps(
            {"command": "ingest", "run": summary["run"], "base": 0, "format": RECOVERY_FORMAT}
        )
    )
    again = tmp_path / "again.json"
    cmd = ingest_cmd(store, views, rec, source=source, summary=again)
    done = subprocess.run(
        cmd[: cmd.index("-q")] + cmd[cmd.index("-q") + 1 :],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "had committed before it stopped" in done.stderr
    resumed = json.loads(again.read_text())
    assert resumed["accepted"] == summary["accepted"] == 600
    assert resumed["commit"] == 1
    assert len(read_log(Store(str(store)), "c")) == 1  # and nothing was committed again


def test_a_recovery_directory_of_an_older_obsflow_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its steps' state has other keys: resuming it would start them empty mid-input."""
    rec = tmp_path / "rec"
    rec.mkdir()
    store = tmp_path / "store"
    argv = ["ingest", "sim://?sources=1&duration=5s", "--store", str(store), "--recovery", str(rec)]
    for older in ({}, {"format": 2}):  # (1: before routing keys; 2: before operators)
        doc = {"command": "ingest", "run": "r1", **older}
        (rec / "obsflow-run.json").write_text(json.dumps(doc))
        assert main(argv) == 2
        assert "written by an older obsflow" in capsys.readouterr().err
        assert not (store / "captures").exists()
