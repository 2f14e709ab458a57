"""SIGKILL at ten polled moments of an ingest, a compaction, a vacuum and a migration (issue 28,
must-show 2): after each kill, before any other command runs, every reader — the Explorer, SQL,
``capture info`` and Polars' ``scan_delta`` — sees exactly the last committed version of each
table: no row missing, none twice. Then the next command completes what was committed and the
store equals what an uninterrupted history gives (pandas over the inputs, the window oracle).

Each moment is polled for in the store as another tool would see it (files, log entries),
then the process is killed at once; a moment the process got past before the kill is tried
again, so every moment is really exercised.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from obsflow.connectors.storage import commits, layout, tables
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main
from obsflow.flows.explore.explorer import open_store
from obsflow.flows.kernels.viewdef import parse_views
from tests.conftest import ROOT
from tests.delta import table_frame
from tests.flows.oracle import Oracle, assert_rows_match

pytestmark = pytest.mark.integration  # servers, brokers, child processes (tests/conftest.py)

VIEWS = """
[[view]]
name = "t10"
size = "10s"
aggregates = ["count", "mean", "min", "max"]
[[view]]
name = "m1"
size = "1m"
aggregates = ["count", "sum"]
[[view]]
name = "sess"
kind = "session"
gap = "2s"
aggregates = ["count", "last"]
[[view]]
name = "hop"
kind = "hopping"
size = "30s"
step = "10s"
aggregates = ["count", "max"]
"""
VIEW_NAMES = ("t10", "m1", "sess", "hop")
T0 = pd.Timestamp("2026-06-01T00:00:00Z").value
S = 10**9
FIXTURE_2 = ROOT / "tests" / "fixtures" / "store_v2"


def run_input(k: int, n: int = 20_000) -> pa.Table:
    """Run ``k``'s readings: 8 sources, 60 s of event time, in time order; one bad row."""
    rng = np.random.default_rng(k)
    t = T0 + k * 60 * S + np.sort(rng.integers(0, 60 * S, n // 8))
    table = pa.table(
        {
            "source": np.repeat([f"s{i}" for i in range(8)], len(t)),
            "channel": np.repeat("x", 8 * len(t)),
            "time": np.tile(t, 8).astype(np.int64),
            "value": rng.normal(size=8 * len(t)),
        }
    )
    bad = pa.table({"source": ["../x"], "channel": ["x"], "time": [T0], "value": [1.0]})
    return pa.concat_tables([table, bad])


def obsflow(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "obsflow.flows.cli.main", *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )


def log_version(folder: Path) -> int:
    """The last version of the table at ``folder`` (-1: none), as its log's files say."""
    names = [p.name for p in (folder / "_delta_log").glob("*.json")]
    return max((int(n[:20]) for n in names if n[:20].isdigit()), default=-1)


def kill_when(argv: list[str], moment: Callable[[], bool], tries: int = 3) -> bool:
    """Run ``obsflow argv``, SIGKILL it as soon as ``moment()`` holds; True once a kill
    landed while it still ran (a run that got through first is run again, up to ``tries``:
    the caller resets the store in between through ``argv``'s own idempotence)."""
    for _ in range(tries):
        proc = obsflow(*argv)
        deadline = time.monotonic() + 120
        while not moment():
            if proc.poll() is not None:
                break
            assert time.monotonic() < deadline, f"never reached the moment: {argv}"
            time.sleep(0.002)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
            if proc.returncode == -signal.SIGKILL:
                return True
        else:
            proc.communicate()
    return False


def readers_agree(store: Path) -> dict[str, pd.DataFrame]:
    """Every reader of the capture (the Explorer, Polars, SQL, ``capture info``) and of each
    view (the Explorer, Polars) sees the same rows, each once; returns them (the capture,
    then each view)."""
    ex = open_store(str(store))
    capture = ex.capture("c").sort_values(["source", "time"], ignore_index=True)
    assert not capture.duplicated(["source", "channel", "time"]).any()
    polars = table_frame(store / "captures" / "c").sort_values(["source", "time"])
    assert polars["time"].tolist() == capture["time"].tolist()
    assert polars["value"].tolist() == capture["value"].tolist()
    by_sql = ex.sql(
        "SELECT count(*) AS n, (SELECT count(*) FROM (SELECT DISTINCT source, channel, time "
        "FROM capture_c)) AS d FROM capture_c"
    )
    assert by_sql["n"].tolist() == by_sql["d"].tolist() == [len(capture)]
    argv = ["capture", "info", "c", "--json", "--store", str(store)]
    info = subprocess.run(
        [sys.executable, "-m", "obsflow.flows.cli.main", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(info.stdout)
    assert doc["rows"] == len(capture)
    assert doc["commits"] == commits.head(Store(str(store)), "c")
    found = {"capture": capture}
    for view in VIEW_NAMES:
        rows = ex.view(view)
        keys = ["source", "channel", "window_start"]
        assert not rows.duplicated(keys).any(), view
        by_polars = table_frame(store / "views" / view).sort_values(keys, ignore_index=True)
        assert by_polars["window_start"].tolist() == rows["window_start"].tolist(), view
        assert by_polars["count"].tolist() == rows["count"].tolist(), view
        found[view] = rows
    return found


def assert_equals_the_oracle(store: Path, inputs: dict[int, pa.Table], runs: list[int]) -> None:
    """The capture holds the runs' readings once and every view equals the window oracle."""
    found = readers_agree(store)
    want = pd.concat([inputs[k].to_pandas() for k in runs], ignore_index=True)
    want = want[want["source"] != "../x"].sort_values(["source", "time"], ignore_index=True)
    assert found["capture"]["time"].astype("int64").tolist() == want["time"].tolist()
    for view in parse_views(VIEWS):
        oracle = Oracle(view)
        seq: dict[str, int] = {}
        for k in runs:
            df = inputs[k].to_pandas()
            df = df[df["source"] != "../x"].reset_index(drop=True)
            counts = df.groupby("source").cumcount()
            df["seq"] = [seq.get(s, 0) + int(c) for s, c in zip(df["source"], counts, strict=True)]
            for source, n in df["source"].value_counts().items():
                seq[str(source)] = seq.get(str(source), 0) + int(n)
            oracle.run(df)
        rows = found[view.name]
        rows = rows.assign(
            window_start=rows["window_start"].astype("int64"),
            window_end=rows["window_end"].astype("int64"),
        )
        assert_rows_match(rows, oracle.rows(), view, want["value"])


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, pa.Table]]:
    """A store after two runs, and the inputs of runs 1..3."""
    root = tmp_path_factory.mktemp("kill")
    (root / "views.toml").write_text(VIEWS)
    inputs = {k: run_input(k) for k in (1, 2, 3)}
    for k, table in inputs.items():
        pq.write_table(table, root / f"run{k}.parquet")
    for k in (1, 2):
        argv = ["ingest", str(root / f"run{k}.parquet"), "--store", str(root / "store")]
        assert main([*argv, "--capture", "c", "--views", str(root / "views.toml"), "-q"]) == 0
    return root, inputs


INGEST_MOMENTS: dict[str, Callable[[Path, dict[str, int]], bool]] = {
    # the third run has written capture files, none committed
    "files written": lambda s, v: (
        any((s / "captures" / "c").glob("part-*/*.parquet"))
        and len(list((s / "captures" / "c").glob("part-*/*.parquet"))) > 8
    ),
    # its commit point: the capture table holds commit 3
    "capture committed": lambda s, v: log_version(s / "captures" / "c") > v["captures/c"],
    # completing: the first view committed, others maybe not
    "a view committed": lambda s, v: log_version(s / "views" / "t10") > v["views/t10"],
    # completing: the last view committed
    "the last view committed": lambda s, v: log_version(s / "views" / "hop") > v["views/hop"],
}


@pytest.mark.parametrize("moment", list(INGEST_MOMENTS))
def test_a_killed_ingest_leaves_every_reader_on_the_last_committed_version(
    base: tuple[Path, dict[int, pa.Table]], tmp_path: Path, moment: str
) -> None:
    root, inputs = base
    store = tmp_path / "store"
    shutil.copytree(root / "store", store)
    versions = {t: log_version(store / t) for t in ("captures/c", "views/t10", "views/hop")}
    argv = ["ingest", str(root / "run3.parquet"), "--store", str(store), "--capture", "c", "-q"]
    if moment == "files written":  # (the base's own files: 2 runs x 4 partitions)
        before = len(list((store / "captures" / "c").glob("part-*/*.parquet")))
        assert before == 8
    assert kill_when(argv, lambda: INGEST_MOMENTS[moment](store, versions)), "never killed"
    head = commits.head(Store(str(store)), "c")
    pending = commits.pending(Store(str(store)), "c")
    views_done = [
        tables.snapshot(Store(str(store)), layout.view_dir(v)).txn("c")  # type: ignore[union-attr]
        for v in VIEW_NAMES
    ]
    print(
        f"killed at {moment!r}: capture at #{head}, views at {views_done}, "
        f"{len(pending)} commit(s) to complete"
    )
    expected_runs = [1, 2, 3] if head == 3 else [1, 2]
    found = readers_agree(store)
    want = pd.concat([inputs[k].to_pandas() for k in expected_runs], ignore_index=True)
    assert len(found["capture"]) == len(want[want["source"] != "../x"])
    if head == 3:  # committed: its views are behind until the next command completes them
        assert commits.pending(Store(str(store)), "c") or moment == "the last view committed"
    # The next command finishes what was committed (or runs it again if nothing was).
    assert main(argv) == 0
    assert commits.head(Store(str(store)), "c") == 3
    assert not commits.pending(Store(str(store)), "c")
    assert_equals_the_oracle(store, inputs, [1, 2, 3])


def test_a_bytewax_run_after_a_kill_completes_the_commit_before_it_starts(
    base: tuple[Path, dict[int, pa.Table]], tmp_path: Path
) -> None:
    """``python -m bytewax.run`` does not go through the CLI's preparation: its flow still
    completes a killed run's commit in every view before it plans on the capture."""
    root, inputs = base
    store = tmp_path / "store"
    shutil.copytree(root / "store", store)
    v = log_version(store / "captures" / "c")
    argv = ["ingest", str(root / "run3.parquet"), "--store", str(store), "--capture", "c", "-q"]
    assert kill_when(argv, lambda: log_version(store / "captures" / "c") > v), "never killed"
    if commits.head(Store(str(store)), "c") != 3 or not commits.pending(Store(str(store)), "c"):
        pytest.fail("the kill did not land between the capture's commit and its views'")
    expr = (
        f"obsflow.flows.pipeline.ingest:build_flow(inputs=[{str(root / 'run3.parquet')!r}], "
        f"store={str(store)!r}, capture='c', progress=False)"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bytewax.run", expr, "-w", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert not commits.pending(Store(str(store)), "c")
    assert_equals_the_oracle(store, inputs, [1, 2, 3])


def test_killed_compactions_and_vacuums_leave_the_last_committed_version(
    base: tuple[Path, dict[int, pa.Table]], tmp_path: Path
) -> None:
    root, inputs = base
    store = tmp_path / "store"
    shutil.copytree(root / "store", store)
    folder = store / "captures" / "c"
    compact = ["capture", "compact", "c", "--store", str(store), "--target-rows", "100000"]
    # 1. killed with its new files written, before its commit
    assert kill_when(compact, lambda: any(folder.glob("part-*/*.c*.parquet")))
    readers_agree(store)
    assert_equals_the_oracle(store, inputs, [1, 2])
    # 2. killed once its commit is in the log (while it vacuums)
    v = log_version(folder)
    assert kill_when(compact, lambda: log_version(folder) > v)
    readers_agree(store)
    assert_equals_the_oracle(store, inputs, [1, 2])
    history = tables.history(Store(str(store)), "captures/c")
    assert any((e.get("obsflow") or {}).get("kind") == "compact" for e in history)
    # 3. a vacuum with no retention, killed once it deleted a removed file: the last version
    # keeps every file it needs (only time travel before the compaction loses its files)
    snap = tables.snapshot(Store(str(store)), "captures/c")
    assert snap is not None
    held = {f.path for f in snap.files}
    removed = {p for p in folder.glob("part-*/*.parquet") if str(p.relative_to(store)) not in held}
    assert removed  # the small files the compaction replaced are still there
    code = (
        "from obsflow.connectors.storage import table_writes\n"
        "from obsflow.connectors.storage.store import Store\n"
        f"table_writes.vacuum(Store({str(store)!r}), 'captures/c', retention_hours=0)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    while all(p.exists() for p in removed) and proc.poll() is None:
        time.sleep(0.001)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    code = proc.wait()
    gone = {p for p in removed if not p.exists()}
    assert gone  # the vacuum deleted before it was killed, or finished
    assert code == -signal.SIGKILL or (code == 0 and gone == removed)
    readers_agree(store)
    assert_equals_the_oracle(store, inputs, [1, 2])
    # and runs go on over the compacted capture
    argv = ["ingest", str(root / "run3.parquet"), "--store", str(store), "--capture", "c", "-q"]
    assert main(argv) == 0
    assert_equals_the_oracle(store, inputs, [1, 2, 3])


MIGRATE_MOMENTS: dict[str, Callable[[Path], bool]] = {
    "a capture table made": lambda s: any((s / "captures" / "wx" / "_delta_log").glob("*.json")),
    "every file checked": lambda s: (
        (s / "_obsflow" / "migrate-3.json").exists()
        and json.loads((s / "_obsflow" / "migrate-3.json").read_text()).get("verified", False)
    ),
    "removing the old layout": lambda s: (
        not (s / "_obsflow" / "captures" / "wx" / "commits").exists()
    ),
}


@pytest.mark.parametrize("moment", list(MIGRATE_MOMENTS))
def test_a_killed_migration_misleads_no_reader_and_finishes_when_run_again(
    tmp_path: Path, moment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    shutil.copytree(FIXTURE_2 / "store", store)
    expected = json.loads((FIXTURE_2 / "expected.json").read_text())
    argv = ["store", "migrate", "--store", str(store)]
    assert kill_when(argv, lambda: MIGRATE_MOMENTS[moment](store)), "never killed"
    # obsflow's readers refuse a store that is not migrated yet, with what to do...
    if Store(str(store)).read_json(layout.LAYOUT_DOC) != {"layout": layout.LAYOUT}:
        capsys.readouterr()
        assert main(["capture", "info", "wx", "--store", str(store)]) == 2
        assert "store migrate" in capsys.readouterr().err
    # ...and a table another tool opens meanwhile holds whole commits: no reading twice
    # (a kill between delta-rs making _delta_log/ and writing its first commit leaves no table)
    if any((store / "captures" / "wx" / "_delta_log").glob("*.json")):
        frame = table_frame(store / "captures" / "wx")
        assert not frame.duplicated(["source", "seq"]).any()
        assert len(frame) <= expected["info"]["wx"]["rows"]
    assert main(argv) == 0
    ex = open_store(str(store))
    assert len(ex.capture("wx")) == expected["info"]["wx"]["rows"]
    for name, doc in expected["views"].items():
        assert len(ex.view(name)) == len(doc["rows"]), name
    assert len(ex.deadletters()) == len(expected["deadletters"])
