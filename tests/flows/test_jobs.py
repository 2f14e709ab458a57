"""One job layer: the CLI, the Python API and ``python -m bytewax.run`` give the same store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from obsflow.connectors.datasets import reads
from obsflow.connectors.storage import commits
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main
from obsflow.flows.pipeline import jobs
from obsflow.flows.pipeline.runner import free_port

pytestmark = pytest.mark.integration  # servers, brokers, child processes (tests/conftest.py)

VIEWS = """
[[view]]
name = "w1m"
size = "1m"
aggregates = ["count", "mean", "min", "max", "std"]
[[view]]
name = "hop"
kind = "hopping"
size = "2m"
step = "30s"
[[view]]
name = "sess"
kind = "session"
gap = "20s"
aggregates = ["count", "mean", "last"]
"""
# What differs between two stores holding the same data: where they are, run ids and timing.
VOLATILE = {"run", "store_url", "finished", "seconds", "readings_per_s"}


def _write_input(path: Path) -> None:
    rng = np.random.default_rng(3)
    t0 = pd.Timestamp("2026-05-01T00:00:00Z")
    rows = []
    for i in range(3000):
        src = f"buoy-{rng.integers(12)}"
        t = t0 + pd.Timedelta(seconds=float(i) * 0.2 + rng.uniform(-30, 0))  # disorder
        rows.append(f"{src},temp,{t.isoformat()},{rng.normal(10, 2):.3f}")
    rows += [rows[5], rows[9], "buoy-1,temp,yesterday,1", "../x,temp,2026-05-01T00:00:00Z,1"]
    path.write_text("source,channel,time,value\n" + "\n".join(rows) + "\n")


def _store_contents(root: Path) -> dict[str, Any]:
    store = Store(str(root))
    out: dict[str, Any] = {"capture": reads.read_capture(store, "c").to_pandas()}
    for view in ("w1m", "hop", "sess"):
        out[view] = reads.read_view(store, view).to_pandas().drop(columns=["run"])
        out[f"late {view}"] = reads.read_late(store, view).to_pandas().drop(columns=["run"])
    out["dead"] = reads.read_deadletters(store).to_pandas().drop(columns=["run"])
    (summary,) = reads.run_summaries(store)
    out["summary"] = {k: v for k, v in summary.items() if k not in VOLATILE}
    return out


def _run_bytewax_cluster(csv: Path, store: Path, views: Path) -> None:
    expr = (
        f"obsflow.flows.pipeline.ingest:build_flow(inputs=[{str(csv)!r}], store={str(store)!r}, "
        f"capture='c', views={str(views)!r}, run_id='cluster-run', progress=False)"
    )
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", expr, "-w", "1", "-i", str(i), "-a", addresses]
        )
        for i in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]


def test_cli_python_api_and_bytewax_run_give_identical_stores(tmp_path: Path) -> None:
    csv, views = tmp_path / "in.csv", tmp_path / "views.toml"
    _write_input(csv)
    views.write_text(VIEWS)

    cli, api, cluster = tmp_path / "cli", tmp_path / "api", tmp_path / "cluster"
    args = ["ingest", str(csv), "--store", str(cli), "--capture", "c", "--views", str(views)]
    assert main([*args, "-q"]) == 0
    result = jobs.ingest(
        inputs=[str(csv)], store=str(api), capture="c", views=str(views), progress=False
    )
    assert result.summary["accepted"] == 3000
    assert result.summary["rejected"] == 2
    assert result.summary["duplicates"] == 2
    _run_bytewax_cluster(csv, cluster, views)

    want = _store_contents(cli)
    assert len(want["capture"]) == 3000
    assert want["summary"]["views"]["w1m"]["rows"] > 0
    for other in (api, cluster):
        got = _store_contents(other)
        assert got["summary"] == want["summary"], other
        for key in want:
            if key != "summary":
                pd.testing.assert_frame_equal(got[key], want[key], obj=f"{other.name} {key}")
    # Each way recorded the input, so each skips it the second time.
    for root in (cli, api, cluster):
        again = jobs.ingest(inputs=[str(csv)], store=str(root), capture="c", views=str(views))
        assert again.run is None
        assert [url for url, _ in again.skipped] == [str(csv)]
        assert commits.head(Store(str(root)), "c") == 1


def test_a_cluster_without_a_run_id_is_refused_before_it_writes(tmp_path: Path) -> None:
    csv = tmp_path / "in.csv"
    csv.write_text("source,channel,time,value\ns,temp,2026-05-01T00:00:00Z,1\n")
    expr = (
        f"obsflow.flows.pipeline.ingest:build_flow(inputs=[{str(csv)!r}], "
        f"store={str(tmp_path / 's')!r})"
    )
    addresses = f"127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [sys.executable, "-m", "bytewax.run", expr, "-i", "0", "-a", addresses],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "pass the same run_id" in proc.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("processes", [2])
def test_the_job_layer_runs_a_local_cluster_too(tmp_path: Path, processes: int) -> None:
    csv, views = tmp_path / "in.csv", tmp_path / "views.toml"
    _write_input(csv)
    views.write_text(VIEWS)
    one, many = tmp_path / "one", tmp_path / "many"
    jobs.ingest(inputs=[str(csv)], store=str(one), capture="c", views=str(views), progress=False)
    jobs.ingest(
        inputs=[str(csv)],
        store=str(many),
        capture="c",
        views=str(views),
        progress=False,
        processes=processes,
    )
    a, b = _store_contents(one), _store_contents(many)
    assert a["summary"] == b["summary"]
    for key in ("capture", "w1m", "hop", "sess", "dead"):
        pd.testing.assert_frame_equal(a[key], b[key], obj=key)


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_a_local_cluster_that_loses_a_process_stops_with_one_line_and_commits_nothing(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s"
    sim = "sim://?sources=8&rate=50&duration=20000s&seed=3"
    argv = ["ingest", sim, "--store", str(store), "--capture", "c", "-q", "--processes", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "obsflow.flows.cli.main", *argv],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Running for real: process 1 started and the cluster has written capture files.
        deadline = time.monotonic() + 60
        while not (
            (others := _children(proc.pid)) and list(store.glob("captures/c/part-*/*.parquet"))
        ):
            assert proc.poll() is None, "the run ended before the kill"
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.05)
        os.kill(others[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2, err
    [line] = err.strip().splitlines()
    assert line.startswith("obsflow: error: ingest stopped: a process of the local cluster")
    assert line.endswith("nothing was committed")
    assert commits.head(Store(str(store)), "c") == 0  # (the capture never committed)


def test_a_cluster_process_that_dies_before_connecting_ends_the_run_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Process 0 of a local cluster would wait for ever for a process that never connects:
    the watch ends it with one line once the grace has passed (exit injected here)."""
    monkeypatch.setattr(jobs, "PEER_GRACE", 0.2)
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    fine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    exits: list[int] = []
    try:
        jobs._watch([fine, dead], "ingest", threading.Event(), exits.append)
    finally:
        fine.kill()
    assert exits == [1]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "obsflow: error: ingest stopped: process 2 of the local cluster exited with code 3 "
        "before the run ended; nothing was committed"
    ]
    assert fine.wait(10) != 0  # (killed with the rest)
    done = threading.Event()
    done.set()  # a run that ended: the watch stops without a word
    jobs._watch([dead], "ingest", done, exits.append)
    assert exits == [1]
