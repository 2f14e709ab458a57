"""Views end to end: the buoy sample against pandas, worker counts, CLI, late output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from obsflow.connectors.datasets.reads import Selection, read_late, read_view
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main
from obsflow.flows.kernels.viewdef import ViewDef, parse_views
from obsflow.flows.pipeline import jobs
from obsflow.flows.pipeline.ingest import IngestConfig, dataflow
from obsflow.flows.pipeline.runner import run_flow
from tests.conftest import BUOY, BUOY_MAP
from tests.delta import table_frame

DAILY = """
[[view]]
name = "daily"
kind = "tumbling"
size = "1d"
aggregates = ["count", "mean", "min", "max", "std"]
"""


def test_buoy_daily_view_equals_pandas_resample(tmp_path: Path) -> None:
    views = tmp_path / "views.toml"
    views.write_text(DAILY)
    summary = tmp_path / "s.json"
    store = tmp_path / "store"
    assert (
        main(
            [
                "ingest",
                str(BUOY),
                "--store",
                str(store),
                "--capture",
                "buoy",
                "--map",
                BUOY_MAP,
                "--views",
                str(views),
                "--summary",
                str(summary),
                "-q",
            ]
        )
        == 0
    )
    got = table_frame(store / "views" / "daily").sort_values("window_start")
    # The last day's window is still open when the run ends (the data may go on): it is a
    # provisional row; every earlier one is final.
    assert got["final"].tolist() == [True] * (len(got) - 1) + [False]
    src = pd.read_parquet(BUOY)
    # Identity without seq is (source, channel, time): the first reading of each stays.
    src = src.drop_duplicates(["source_id", "channel", "event_time"], keep="first")
    src["time"] = pd.to_datetime(src["event_time"], utc=True)
    want = src.set_index("time")["value"].resample("1D").agg(["count", "mean", "min", "max", "std"])
    want = want[want["count"] > 0]  # resample fills the gaps; a view has rows only for data
    assert got["window_start"].tolist() == want.index.tolist()
    assert (got["window_end"] - got["window_start"]).eq(pd.Timedelta("1D")).all()
    assert got["count"].tolist() == want["count"].tolist()
    assert got["min"].tolist() == want["min"].tolist()
    assert got["max"].tolist() == want["max"].tolist()
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-12)
    np.testing.assert_allclose(got["std"], want["std"], rtol=1e-9)
    s = json.loads(summary.read_text())
    assert s["views"] == {"daily": {"rows": len(want) - 1, "provisional": 1}}
    assert s["late"] == {}


def test_one_and_two_workers_write_identical_view_rows(tmp_path: Path) -> None:
    views = parse_views("""
[[view]]
name = "t10s"
size = "10s"
aggregates = ["count", "sum", "mean", "min", "max", "std", "var", "first", "last", "p50", "p99"]
[[view]]
name = "hop"
kind = "hopping"
size = "30s"
step = "10s"
[[view]]
name = "sess"
kind = "session"
gap = "2s"
""")
    url = "sim://?sources=5&channels=temperature,pressure,salinity&rate=20&duration=5m&seed=3"
    results = []
    for workers in (1, 2):
        store = tmp_path / f"w{workers}"
        run_flow(
            dataflow(
                IngestConfig(
                    inputs=(url,), store=str(store), capture="c", progress=False, views=views
                )
            ),
            workers,
        )
        results.append(
            {v.name: read_view(Store(str(store)), v.name).drop_columns(["run"]) for v in views}
        )
    for v in views:
        one, two = results[0][v.name], results[1][v.name]
        assert one.num_rows > 0
        assert one.equals(two), v.name


def test_late_readings_go_to_the_late_output_and_stay_in_the_capture(tmp_path: Path) -> None:
    # Lateness is decided at the end of a run: disorder inside one input never makes a reading
    # late (a window stays open for 1024 windows inside a run). So the reading at :03 comes in
    # a second run, after the first ended with watermark 25 - 5 = :20, which made [0,10) final.
    runs = [
        "source,time,value\ns,2024-01-01T00:00:05Z,1\ns,2024-01-01T00:00:25Z,2\n",
        "source,time,value\n"
        "s,2024-01-01T00:00:03Z,3\n"  # its window [0,10) is final: late
        "s,2024-01-01T00:00:21Z,4\n",  # [20,30) is still open (ends after :20)
    ]
    views = tmp_path / "v.toml"
    views.write_text(
        '[[view]]\nname = "t10"\nsize = "10s"\nlateness = "5s"\naggregates = ["count", "sum"]\n'
    )
    store = tmp_path / "store"
    summaries = []
    for i, text in enumerate(runs):
        csv = tmp_path / f"late{i}.csv"
        csv.write_text(text)
        summary = tmp_path / f"s{i}.json"
        assert (
            main(
                [
                    "ingest",
                    str(csv),
                    "--store",
                    str(store),
                    "--views",
                    str(views),
                    "--summary",
                    str(summary),
                    "-q",
                ]
            )
            == 0
        )
        summaries.append(json.loads(summary.read_text()))
    assert [s["late"] for s in summaries] == [{}, {"t10": 1}]
    assert [s["accepted"] for s in summaries] == [2, 2]
    # late readings are still in the capture
    assert len(table_frame(store / "captures" / "default")) == 4
    late = table_frame(store / "late" / "t10")
    assert late["value"].tolist() == [3.0]
    assert set(late["view"]) == {"t10"}
    assert late["run"].tolist() == [summaries[1]["run"]]
    assert read_late(Store(str(store)), "t10").column("value").to_pylist() == [3.0]
    rows = table_frame(store / "views" / "t10").sort_values("window_start")
    assert rows[["count", "sum"]].values.tolist() == [[1, 1.0], [2, 6.0]]
    assert rows["final"].tolist() == [True, False]


def test_a_view_with_another_definition_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i, (size, code) in enumerate((("10s", 0), ("20s", 2))):
        csv = tmp_path / f"{i}.csv"  # new data each time: a known input would be skipped
        csv.write_text(f"source,time,value\ns,2024-01-01T00:00:0{i}Z,1\n")
        views = tmp_path / "v.toml"
        views.write_text(f'[[view]]\nname = "v"\nsize = "{size}"\n')
        assert (
            main(["ingest", str(csv), "--store", str(tmp_path / "st"), "--views", str(views), "-q"])
            == code
        )
    assert "view 'v' exists with definition" in capsys.readouterr().err


def test_views_list_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    assert main(["demo", "--store", store, "--duration", "30s"]) == 0
    capsys.readouterr()
    assert main(["views", "list", "--store", store]) == 0
    listed = capsys.readouterr().out
    assert "demo_10s" in listed
    assert "tumbling" in listed
    assert "size 10s" in listed
    assert (
        main(
            [
                "views",
                "show",
                "demo_10s",
                "--store",
                store,
                "--source",
                "sim-001",
                "--channel",
                "pressure",
                "--from",
                "2026-01-01T00:00:10Z",
                "--until",
                "2026-01-01T00:00:30",
                "--limit",
                "0",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:4] == ["source", "channel", "window_start", "window_end"]
    assert len(lines) == 3  # header + windows starting at :10 and :20
    assert all(line.startswith("sim-001 pressure 2026-01-01 00:00:") for line in lines[1:])
    assert main(["views", "show", "nope", "--store", store]) == 2


def test_read_view_filters_match_filtering_in_pandas(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    jobs.ingest(
        inputs=("sim://?sources=3&rate=5&duration=10m&seed=2",),
        store=str(tmp_path),
        capture="c",
        progress=False,
        views=(ViewDef("m", "tumbling", size=60 * 10**9),),
    )
    full = read_view(store, "m").to_pandas()
    part = read_view(
        store,
        "m",
        sources=["sim-002"],
        start="2026-01-01T00:03:00Z",
        until="2026-01-01T00:07:00Z",
    ).to_pandas()
    lo, hi = pd.Timestamp("2026-01-01T00:03:00Z"), pd.Timestamp("2026-01-01T00:07:00Z")
    want = full[
        (full["source"] == "sim-002") & (full["window_start"] >= lo) & (full["window_start"] < hi)
    ].reset_index(drop=True)
    assert len(want) == 8  # 4 minutes x 2 channels
    pd.testing.assert_frame_equal(part.reset_index(drop=True), want)
    # A Selection reads the same rows as its keywords; keywords replace its fields.
    select = Selection(sources=["sim-002"], start=lo, until=hi)
    pd.testing.assert_frame_equal(read_view(store, "m", select).to_pandas(), part)
    other = read_view(store, "m", select, sources=["sim-001"]).to_pandas()
    assert set(other["source"]) == {"sim-001"}
    assert len(other) == 8
    final = read_view(store, "m", final_only=True).to_pandas()
    pd.testing.assert_frame_equal(final, full[full["final"]].reset_index(drop=True))
    assert 0 < len(final) < len(full)  # the last minute of each series is still open
