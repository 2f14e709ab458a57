"""Exactly-once after kill -9: interrupted ingests resume and leave each row once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import CRASH_VIEWS, ROOT, sorted_frame

SIM = "sim://?sources=6&channels=temperature,pressure&rate=1000&duration=120s&seed=9"
VIEWS = CRASH_VIEWS


def ingest_cmd(store: Path, views: Path, recovery: Path | None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "obsflow.flows.cli",
        "ingest",
        SIM,
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
        str(store.parent / f"{store.name}-summary.json"),
    ]
    if recovery is not None:
        cmd += ["--recovery", str(recovery), "--snapshot-interval", "0.2"]
    return cmd


def outputs(store: Path) -> dict[str, pd.DataFrame]:
    """Capture and views in canonical order, without the run that wrote them."""
    out = {"capture": sorted_frame(pd.read_parquet(store / "captures" / "c"))}
    for view in ("s10", "sess"):
        df = pd.read_parquet(store / "views" / view).drop(columns=["run"])
        out[view] = df.sort_values(["source", "channel", "window_start"]).reset_index(drop=True)
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
        # The first kill lands well inside the run; later ones may find it finished.
        time.sleep(rng.uniform(0.3, duration * (0.6 if attempt == 0 else 0.9)))
        if proc.poll() is not None:  # finished before the kill
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    subprocess.run(ingest_cmd(store, views, recovery), cwd=ROOT, check=True, timeout=300)
    return store, kills


def check_against(store: Path, reference: dict[str, pd.DataFrame]) -> None:
    got = outputs(store)
    for name, want in reference.items():
        pd.testing.assert_frame_equal(got[name], want, obj=name)
    summary = json.loads((store.parent / f"{store.name}-summary.json").read_text())
    assert summary["input"] == summary["accepted"] + summary["rejected"] + summary["duplicates"]
    assert summary["accepted"] == len(reference["capture"])
    assert summary["views"] == {v: {"rows": len(reference[v])} for v in ("s10", "sess")}


@pytest.mark.parametrize("seed", range(5))
def test_kill_9_and_resume_gives_the_uninterrupted_outputs(
    tmp_path: Path, reference: tuple[dict[str, pd.DataFrame], float], seed: int
) -> None:
    want, duration = reference
    store, kills = kill_and_resume(tmp_path, seed, duration)
    assert kills >= 1
    check_against(store, want)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5, 30))
def test_kill_9_and_resume_many_times(
    tmp_path: Path, reference: tuple[dict[str, pd.DataFrame], float], seed: int
) -> None:
    want, duration = reference
    store, kills = kill_and_resume(tmp_path, seed, duration)
    assert kills >= 1
    check_against(store, want)
