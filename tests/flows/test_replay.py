"""Replay: live equals replay, new definitions against the oracle, restrictions, pacing,
worker and process counts, and interrupted replays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from obsflow.connectors.capture_source import partition_files
from obsflow.connectors.store import Store
from obsflow.connectors.views import read_view
from obsflow.flows.cli import main
from obsflow.flows.ingest import IngestConfig, build_flow
from obsflow.flows.runner import run_flow
from obsflow.flows.viewdef import ViewDef, parse_views
from tests.conftest import ROOT
from tests.flows.oracle import expected_rows
from tests.flows.test_windows import assert_rows_match

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


def view_frame(store: Path, name: str) -> pd.DataFrame:
    t = read_view(Store(str(store)), name)
    t = t.drop_columns([c for c in ("run",) if c in t.column_names])
    return t.to_pandas()


def capture_in_stored_order(store: Path, capture: str) -> pd.DataFrame:
    """Readings as the replay reads them: each partition's objects in stored order."""
    s = Store(str(store))
    tables = [s.read_parquet(rel) for p in range(4) for rel in partition_files(s, capture, p)]
    df = pa.concat_tables(tables).to_pandas()
    df["time"] = df["time"].astype("int64")
    return df


def as_ns(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for c in ("window_start", "window_end"):
        frame[c] = frame[c].astype("int64")
    return frame.sort_values(["source", "channel", "window_start"]).reset_index(drop=True)


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


def test_live_views_equal_replayed_views(live: Path, tmp_path: Path) -> None:
    store = live / "store"
    before = {v: as_ns(view_frame(store, v)) for v in ("m1", "sess")}
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
    assert s["input"] == s["accepted"] == len(capture_in_stored_order(store, "c"))
    for name, old in before.items():
        new = as_ns(view_frame(store, name))
        assert len(new) == len(old) > 0
        for col in old.columns:
            if col in (
                "source",
                "channel",
                "window_start",
                "window_end",
                "count",
                "min",
                "max",
                "first",
                "last",
                "p50",
                "capture",
                "view_hash",
            ):
                assert new[col].tolist() == old[col].tolist(), (name, col)
            else:
                np.testing.assert_allclose(new[col], old[col], rtol=1e-12, err_msg=name + col)


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
    store = live / "store"
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
    df = capture_in_stored_order(store, "c")
    want, late = expected_rows(df, view)
    got = as_ns(view_frame(store, view.name))
    assert_rows_match(got, want, view, df["value"])
    assert json.loads(summary.read_text())["late"].get(view.name, 0) == int(late.sum())
    if view.lateness >= 5 * 10**9:
        assert not late.any()  # the 3 s of disorder fits in 5 s: nothing is late any more


def test_replay_restricted_by_time_and_source_equals_the_restricted_oracle(
    live: Path, tmp_path: Path
) -> None:
    store = live / "store"
    views = tmp_path / "v.toml"
    views.write_text(
        '[[view]]\nname = "r"\nsize = "30s"\nlateness = "3s"\naggregates = ["count", "mean", "max"]'
    )
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
                "-q",
            ]
        )
        == 0
    )
    (view,) = parse_views(views.read_text())
    df = capture_in_stored_order(store, "c")
    lo = pd.Timestamp("2026-01-01T00:02:00Z").value
    hi = pd.Timestamp("2026-01-01T00:05:10Z").value
    df = df[(df["time"] >= lo) & (df["time"] < hi) & df["source"].isin(["sim-001", "sim-003"])]
    want, _ = expected_rows(df.reset_index(drop=True), view)
    got = as_ns(view_frame(store, "r"))
    assert set(got["source"]) == {"sim-001", "sim-003"}
    assert_rows_match(got, want, view, df["value"])


def test_one_worker_two_workers_and_two_processes_give_identical_rows(
    live: Path, tmp_path: Path
) -> None:
    store = live / "store"
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
    run_flow(
        build_flow(
            IngestConfig(
                inputs=(f"sim://?sources=2&rate=50&duration={seconds}s&seed=1",),
                store=str(store),
                capture="paced",
                progress=False,
                views=(ViewDef("p", "tumbling", size=10**9, aggregates=("count",)),),
            )
        ),
        1,
    )


@pytest.mark.parametrize(("speed", "tolerance"), [(1, 0.10), (10, 0.20)])
def test_paced_replay_takes_the_original_time_divided_by_speed(
    tmp_path: Path, speed: int, tolerance: float
) -> None:
    _sim_capture(tmp_path, 20)  # readings from t=0 to t=19.98 s
    started = time.monotonic()
    assert (
        main(
            ["replay", "--store", str(tmp_path), "--capture", "paced", "--speed", str(speed), "-q"]
        )
        == 0
    )
    elapsed = time.monotonic() - started
    expected = 20 / speed
    assert abs(elapsed - expected) <= tolerance * expected, elapsed


def test_a_killed_replay_leaves_the_previous_views_intact(tmp_path: Path) -> None:
    _sim_capture(tmp_path, 30)
    before = view_frame(tmp_path, "p")
    views = tmp_path / "v.toml"
    views.write_text('[[view]]\nname = "p"\nsize = "5s"\naggregates = ["count", "mean"]')
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "obsflow.flows.cli",
            "replay",
            "--store",
            str(tmp_path),
            "--capture",
            "paced",
            "--views",
            str(views),
            "--speed",
            "3",
            "-q",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    # A paced replay of 30 s at 3x takes 10 s: kill it once it has staged some rows.
    deadline = time.monotonic() + 30
    while not any(p.is_file() for p in (tmp_path / "staging").rglob("*.parquet")):
        assert time.monotonic() < deadline, "the replay staged nothing in 30 s"
        time.sleep(0.05)
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list((tmp_path / "staging").iterdir())  # it was interrupted mid-run
    pd.testing.assert_frame_equal(view_frame(tmp_path, "p"), before)
    meta = json.loads((tmp_path / "views" / "p" / "_view.json").read_text())
    assert meta["definition"]["size"] == 10**9  # still the old definition
    # The next replay clears the abandoned staging and completes normally.
    assert (
        main(
            ["replay", "--store", str(tmp_path), "--capture", "paced", "--views", str(views), "-q"]
        )
        == 0
    )
    assert not list((tmp_path / "staging").iterdir())
    assert view_frame(tmp_path, "p")["count"].sum() == len(pd.read_parquet(tmp_path / "captures"))
