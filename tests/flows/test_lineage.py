"""Lineage: from a view row back to its readings, runs and inputs (issue 17 must-show 3).

100 random view rows, of a tumbling and a session view over a capture written by three runs
(the last with late readings and duplicates) and then compacted: each row's aggregates are
computed again, with numpy, from exactly the readings its lineage lists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main
from obsflow.flows.explore.explorer import open_store
from obsflow.flows.explore.lineage import lineage

VIEWS = """
[[view]]
name = "w1m"
size = "1m"
aggregates = ["count", "mean", "min", "max", "std"]
[[view]]
name = "sess"
kind = "session"
gap = "3s"
aggregates = ["count", "mean", "min", "max"]
"""
T0 = pd.Timestamp("2026-02-01T00:00:00Z")


def _file(
    path: Path, rng: np.random.Generator, seconds: range, *, extra: pd.DataFrame | None = None
) -> pd.DataFrame:
    rows = [
        (f"s{k}", T0 + pd.Timedelta(seconds=s + rng.uniform(0, 0.9)), ch, rng.normal(5, 2))
        for s in seconds
        for k in range(3)
        for ch in ("a", "b")
        if rng.random() > 0.1  # gaps, so sessions break
    ]
    frame = pd.DataFrame(rows, columns=["source", "time", "channel", "value"])
    if extra is not None:
        frame = pd.concat([frame, extra], ignore_index=True)
    out = frame.assign(time=frame["time"].map(lambda t: t.isoformat()))
    out.to_csv(path, index=False)
    return frame


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("lineage")
    rng = np.random.default_rng(11)
    (tmp / "views.toml").write_text(VIEWS)
    one = _file(tmp / "one.csv", rng, range(0, 600))
    _file(tmp / "two.csv", rng, range(600, 1200))
    late = one.sample(40, random_state=1).assign(value=lambda f: f["value"] + 100)
    late["time"] = late["time"] + pd.Timedelta(milliseconds=950)  # (new readings, old times)
    again = one.sample(40, random_state=2)  # duplicates of captured readings
    _file(tmp / "three.csv", rng, range(1200, 1800), extra=pd.concat([late, again]))
    url = str(tmp / "store")
    for name in ("one.csv", "two.csv", "three.csv"):
        argv = ["ingest", str(tmp / name), "--store", url, "--capture", "c", "-q"]
        assert main([*argv, "--views", str(tmp / "views.toml"), "--lateness", "5s"]) == 0
    assert main(["capture", "compact", "c", "--store", url, "--target-rows", "100000"]) == 0
    return url


def test_lineage_of_100_random_rows_reproduces_their_aggregates(store: str) -> None:
    ex = open_store(store)
    assert ex.late("w1m").shape[0] > 0  # (late readings exist, and lineage must leave them out)
    assert ex.runs()["duplicates"].sum() == 40
    rows = pd.concat(
        [ex.view("w1m").assign(view="w1m"), ex.view("sess").assign(view="sess")],
        ignore_index=True,
    )
    picked = rows.sample(100, random_state=7)
    runs_in_store = set(ex.runs()["run"])
    for row in picked.itertuples():
        found = lineage(Store(store), row.view, row.source, row.channel, row.window_start.value)
        got = found.readings.to_pandas()
        v = got["value"].to_numpy()
        assert len(v) == row.count, (row.view, row.source, row.channel, row.window_start)
        assert got["seq"].min() == row.first_seq
        assert got["seq"].max() == row.last_seq
        assert np.isclose(v.mean(), row.mean, rtol=1e-12, atol=0)
        assert v.min() == row.min
        assert v.max() == row.max
        if row.view == "w1m" and len(v) > 1:
            assert np.isclose(v.std(ddof=1), row.std, rtol=1e-9, atol=1e-12)
        assert (got["time"] >= row.window_start).all()
        assert (got["time"] < row.window_end).all()
        assert set(found.runs) <= runs_in_store
        assert all(found.inputs[r] for r in found.runs)  # (each run's input file is named)
        assert found.row["view_hash"] == row.view_hash


def test_the_cli_prints_a_row_its_runs_and_its_readings(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = open_store(store).view("w1m", source="s1", channel="a").iloc[5]
    at = row["window_start"].isoformat()
    argv = ["lineage", "w1m", "--source", "s1", "--channel", "a", "--at", at, "--store", store]
    capsys.readouterr()
    assert main([*argv, "-o", str(tmp_path / "r.parquet")]) == 0
    said = capsys.readouterr().err
    assert f"readings summarized: {row['count']:,} of capture 'c'" in said
    assert "captured by run" in said
    assert "one.csv" in said
    assert len(pd.read_parquet(tmp_path / "r.parquet")) == row["count"]
    inside = (row["window_start"] + pd.Timedelta(seconds=30)).isoformat()
    assert main([*argv[:-4], "--at", inside, "--store", store]) == 0  # (a time inside it)
    assert main([*argv[:-4], "--at", "2020-01-01", "--store", store]) == 2
    assert "no window of s1/a in view 'w1m' holds that time" in capsys.readouterr().err
