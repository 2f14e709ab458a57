"""Everyday paths, second round (issue 31), item 5: a run that accepted nothing, a wrong
``--map``, and taking a capture or a view away (``capture drop`` / ``views drop``). Run as a
user runs them: ``obsflow`` commands in child processes. Every test here failed before its fix
(the finding is in its docstring)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import polars as pl
import pytest

from obsflow.connectors.datasets import reads
from obsflow.connectors.storage.store import Store
from tests.cli.test_everyday_letters import (
    FIX,
    OBSFLOW,
    captured,
    obsflow,
    readings_of,
    station_file,
)

pytestmark = pytest.mark.integration  # child processes (tests/conftest.py)

HOURLY = '[[view]]\nname = "hourly"\nsize = "1h"\naggregates = ["count", "mean"]\n'


def test_a_run_that_accepted_nothing_creates_no_capture_and_no_view(tmp_path: Path) -> None:
    """Item 5: a run that accepted nothing still created the capture, its default view and a
    commit; the unwanted default view then stayed beside the corrected ``--views``."""
    store = tmp_path / "store"
    wx = station_file(tmp_path / "wx.csv", ["w0", "w1"], 30, 1.0)
    first = obsflow("ingest", str(wx), "--capture", "wx", "--store", str(store))
    assert first.returncode == 1, first.stderr
    assert "capture 'wx' was not created: no reading was accepted" in first.stderr
    assert "commit #" not in first.stderr
    assert not (store / "captures" / "wx").exists()
    assert not (store / "views").exists() or not list((store / "views").iterdir())
    listed = obsflow("capture", "list", "--store", str(store))
    assert listed.returncode == 0, listed.stderr
    assert "wx" not in listed.stdout, listed.stdout
    # ...but nothing is lost: its 60 dead letters are the capture's, for a retry
    letters = reads.read_deadletters(Store(str(store)), capture="wx", unresolved=True)
    assert letters.num_rows == 60
    views = tmp_path / "views.toml"
    views.write_text(HOURLY)
    fixed = obsflow(
        "ingest", str(wx), "--capture", "wx", *FIX, "--views", str(views), "--store", str(store)
    )
    assert fixed.returncode == 0, fixed.stderr
    assert "commit #1 of capture 'wx'" in fixed.stderr
    assert sorted(p.name for p in (store / "views").iterdir()) == ["hourly"]
    assert captured(store, "wx") == readings_of(wx)
    # Polars reads the capture as a Delta table: the readings once, nothing of the first run
    frame = pl.read_delta(str(store / "captures" / "wx"))
    assert frame.height == 60
    assert frame["commit"].unique().to_list() == [1]


def test_a_retry_takes_dead_letters_into_a_capture_that_was_never_created(tmp_path: Path) -> None:
    """Item 5: with no capture made by a run that accepted nothing, its dead letters are still
    retried into it by name (a typo: test_retry_into_a_capture_that_does_not_exist_...)."""
    store = tmp_path / "store"
    wx = station_file(tmp_path / "wx.csv", ["w0"], 20, 1.0)
    assert obsflow("ingest", str(wx), "--capture", "wx", "--store", str(store)).returncode == 1
    assert not (store / "captures" / "wx").exists()
    retried = obsflow("deadletters", "retry", "--capture", "wx", *FIX, "--store", str(store))
    assert retried.returncode == 0, retried.stderr
    assert captured(store, "wx") == readings_of(wx)
    left = reads.read_deadletters(Store(str(store)), capture="wx", unresolved=True)
    assert left.num_rows == 0


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_wrong_map_is_refused_before_the_file_is_read(kind: str, tmp_path: Path) -> None:
    """Item 5: a ``--map`` naming no column of the file was found only after reading the whole
    file, one dead letter per record. A file whose columns are known before it is read (CSV's
    header, Parquet's schema) is checked first: one line, nothing written. (Without --map,
    the records are dead letters: retried with --map, test_everyday_letters.)"""
    wx = station_file(tmp_path / "wx.csv", ["w0", "w1"], 30, 1.0)
    data = wx
    if kind == "parquet":
        data = tmp_path / "wx.parquet"
        pd.read_csv(wx).to_parquet(data)
    store = tmp_path / "store"
    wrong = ["--map", "source=stn,value=temp_c"]
    done = obsflow("ingest", str(data), *wrong, "--store", str(store))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"obsflow: error: {data}: --map source=stn names no column of it (columns: station, "
        "time, temp_c) — nothing was read"
    ]
    assert not store.exists()
    right = obsflow("ingest", str(data), *FIX, "--store", str(store), "-q")
    assert right.returncode == 0, right.stderr
    assert captured(store, "default") == readings_of(wx)


def run_stdin(argv: list[str], answer: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OBSFLOW, *argv], input=answer, capture_output=True, text=True, timeout=300, check=False
    )
