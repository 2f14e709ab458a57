"""Everyday paths, second round (issue 31), item 5: a run that accepted nothing, a wrong
``--map``, and taking a capture or a view away (``capture drop`` / ``views drop``). Run as a
user runs them: ``obsflow`` commands in child processes. Every test here failed before its fix
(the finding is in its docstring)."""

from __future__ import annotations

import json
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
    digests,
    obsflow,
    readings_of,
    station_file,
)

pytestmark = pytest.mark.integration  # child processes (tests/conftest.py)

HOURLY = '[[view]]\nname = "hourly"\nsize = "1h"\naggregates = ["count", "mean"]\n'
TEN = '[[view]]\nname = "ten"\nsize = "10m"\naggregates = ["count", "mean"]\n'


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


def test_map_given_once_per_field_takes_them_all_and_a_field_mapped_twice_is_refused(
    tmp_path: Path,
) -> None:
    """Found trying it as a new user: ``--map source=station --map value=temp_c`` kept only
    the last, so every record was a missing_field dead letter though the command named the
    source column. Every ``--map`` counts (as for ``retry``); one field given two columns is
    refused before anything is read."""
    wx = station_file(tmp_path / "wx.csv", ["w0", "w1"], 30, 1.0)
    store = tmp_path / "store"
    split = ["--map", "source=station", "--map", "value=temp_c"]
    done = obsflow("ingest", str(wx), *split, "--store", str(store), "-q")
    assert done.returncode == 0, done.stderr
    assert captured(store, "default") == readings_of(wx)
    twice = obsflow("ingest", str(wx), "--map", "source=station", "--map", "source=time")
    assert twice.returncode == 2
    assert twice.stderr.splitlines() == [
        "obsflow: error: --map names two columns for source: station, time"
    ]


def run_stdin(argv: list[str], answer: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OBSFLOW, *argv], input=answer, capture_output=True, text=True, timeout=300, check=False
    )


def test_capture_drop_takes_one_capture_and_its_views_and_time_travel_still_reads_them(
    tmp_path: Path,
) -> None:
    """Item 5: there was no way to delete a capture. ``capture drop`` asks for the name again
    (or ``--yes``), takes the capture and its views from every listing and read in one commit,
    leaves other captures' bytes as they were, and ``--as-of`` still reads what was dropped."""
    store = tmp_path / "store"
    wx = station_file(tmp_path / "wx.csv", ["w0", "w1"], 30, 1.0)
    sea = station_file(tmp_path / "sea.csv", ["s0"], 40, 5.0)
    views = tmp_path / "views.toml"
    views.write_text(HOURLY)
    common = [*FIX, "--store", str(store), "-q"]
    assert (
        obsflow("ingest", str(wx), "--capture", "wx", "--views", str(views), *common).returncode
        == 0
    )
    assert obsflow("ingest", str(sea), "--capture", "sea", *common).returncode == 0
    untouched = digests(store, "captures/sea", "views/sea_1m")
    everything = digests(store, ".")

    # Not confirmed: nothing happens.
    for answer in ("", "sea\n"):
        refused = run_stdin(["capture", "drop", "wx", "--store", str(store)], answer)
        assert refused.returncode == 2, refused.stderr
        assert "nothing was dropped (--yes drops without asking)" in refused.stderr
        assert digests(store, ".") == everything

    done = run_stdin(["capture", "drop", "wx", "--store", str(store)], "wx\n")
    assert done.returncode == 0, done.stderr
    assert "capture 'wx' (60 readings) and its view hourly dropped by commit #2" in done.stderr
    listed = obsflow("capture", "list", "--store", str(store))
    assert "wx" not in listed.stdout
    assert "sea" in listed.stdout
    shown = obsflow("views", "list", "--store", str(store))
    assert "hourly" not in shown.stdout
    assert "sea_1m" in shown.stdout
    gone = obsflow("capture", "show", "wx", "--store", str(store))
    assert gone.returncode == 2
    assert "no capture 'wx'" in gone.stderr
    assert digests(store, "captures/sea", "views/sea_1m") == untouched
    # time travel reads the dropped capture and view (their files stay until a vacuum)
    then = obsflow("capture", "info", "wx", "--as-of", "1", "--json", "--store", str(store))
    assert then.returncode == 0, then.stderr
    assert json.loads(then.stdout)["rows"] == 60
    hourly = obsflow("views", "show", "hourly", "--as-of", "1", "-o", str(tmp_path / "h.csv"),
                     "--store", str(store))  # fmt: skip
    assert hourly.returncode == 0, hourly.stderr
    assert pd.read_csv(tmp_path / "h.csv")["count"].sum() == 60
    old = pl.read_delta(str(store / "captures" / "wx"), version=0)
    assert old.height == 60
    assert pl.read_delta(str(store / "captures" / "wx")).height == 0
    # a vacuum of the dropped capture (retention 1h: too young yet) keeps them
    kept = obsflow("capture", "compact", "wx", "--retain", "1h", "--store", str(store))
    assert kept.returncode == 0, kept.stderr
    assert "vacuum deleted 0 files" in kept.stderr
    assert pl.read_delta(str(store / "captures" / "wx"), version=0).height == 60

    # The name starts afresh: the same file is ingested again (not skipped, no duplicates),
    # with the default view (the dropped views are not built again unless asked for).
    again = obsflow("ingest", str(wx), "--capture", "wx", *FIX, "--store", str(store))
    assert again.returncode == 0, again.stderr
    assert "60 input = 60 accepted + 0 rejected + 0 duplicates" in again.stderr
    assert "commit #3 of capture 'wx'" in again.stderr
    assert "view wx_1m" in again.stderr
    assert "hourly" not in again.stderr
    assert captured(store, "wx") == readings_of(wx)
    assert digests(store, "captures/sea", "views/sea_1m") == untouched


def test_views_drop_takes_one_view_and_the_capture_goes_on_without_it(tmp_path: Path) -> None:
    """Item 5: there was no way to delete a view. ``views drop`` takes one view away; its
    capture's later runs build the others, and a replay may define it again."""
    store = tmp_path / "store"
    first = station_file(tmp_path / "a.csv", ["w0"], 30, 1.0)
    views = tmp_path / "views.toml"
    views.write_text(HOURLY + TEN)
    common = [*FIX, "--store", str(store)]
    made = obsflow("ingest", str(first), "--capture", "wx", "--views", str(views), *common)
    assert made.returncode == 0, made.stderr
    done = obsflow("views", "drop", "hourly", "--yes", "--store", str(store))
    assert done.returncode == 0, done.stderr
    assert "view 'hourly' dropped by commit #2 of capture 'wx'" in done.stderr
    assert "hourly" not in obsflow("views", "list", "--store", str(store)).stdout
    late = pd.DataFrame({"station": "w0", "time": ["2026-01-01T01:00:00Z"], "temp_c": [9.5]})
    second = tmp_path / "b.csv"
    late.to_csv(second, index=False)
    more = obsflow("ingest", str(second), "--capture", "wx", *common)
    assert more.returncode == 0, more.stderr
    assert "view ten" in more.stderr
    assert "hourly" not in more.stderr
    assert pl.read_delta(str(store / "views" / "hourly")).height == 0
    views.write_text(HOURLY)
    rebuilt = obsflow("replay", "--capture", "wx", "--views", str(views), "--store", str(store))
    assert rebuilt.returncode == 0, rebuilt.stderr
    hourly = pl.read_delta(str(store / "views" / "hourly")).sort("window_start")
    # pandas: the count per hour of the capture's readings
    frame = reads.read_capture(Store(str(store)), "wx").to_pandas()
    want = frame.groupby(frame["time"].dt.floor("1h")).size()
    assert hourly["count"].to_list() == want.to_list()
