"""Every table of a store reads the same in deltalake, Polars, DuckDB and pandas as in obsflow;
a plain ``**/*.parquet`` glob may not (it also sees files no version holds)."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pytest
from deltalake import DeltaTable

from obsflow.connectors.datasets import reads
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main
from tests.delta import exact_times

VIEWS = """
[[view]]
name = "w10"
size = "10s"
aggregates = ["count", "mean", "min", "max"]
[[view]]
name = "sess"
kind = "session"
gap = "1s"
aggregates = ["count", "mean"]
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A capture written in three runs, with a rejected row, a duplicate and a late reading."""
    root = tmp_path_factory.mktemp("globs")
    (root / "views.toml").write_text(VIEWS)
    rng = np.random.default_rng(7)
    for i in range(3):
        ms = np.sort(rng.choice(np.arange(i * 60_000, (i + 1) * 60_000), 200, replace=False))
        t = pd.to_datetime(ms, unit="ms", utc=True).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lines = ["source,channel,time,value"]
        lines += [f"s{j % 7},temp,{x},{rng.normal():.4f}" for j, x in enumerate(t)]
        lines.append("s1,temp,not-a-time,1")  # a dead letter
        lines.append(lines[1])  # a duplicate
        if i == 2:
            lines.append(
                "s2,temp,1970-01-01T00:00:01.5Z,99"
            )  # late: its windows were final two runs ago
        path = root / f"part{i}.csv"
        path.write_text("\n".join(lines) + "\n")
        args = ["ingest", str(path), "--store", str(root / "s"), "--capture", "c"]
        assert main([*args, "--views", str(root / "views.toml"), "-q"]) == 0
    return root / "s"


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def _exact(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame as another tool read it, each time from its exact ``_ns`` twin."""
    return exact_times(frame)


def _readers(folder: Path) -> dict[str, pd.DataFrame]:
    """One table as Polars (``scan_delta``), DuckDB (over deltalake's dataset, offline) and
    pandas (through deltalake) read it."""
    dataset = DeltaTable(str(folder)).to_pyarrow_dataset()  # noqa: F841 - DuckDB's "dataset"
    return {
        "polars": _exact(pl.scan_delta(str(folder)).collect().to_pandas()),
        "duckdb": _exact(duckdb.sql("SELECT * FROM dataset").df()),
        "pandas": _exact(DeltaTable(str(folder)).to_pandas()),
    }


def test_capture_tables_give_exactly_the_accepted_readings(store: Path) -> None:
    want = reads.read_capture(Store(str(store)), "c").to_pandas()
    assert len(want) == 3 * 200 + 1  # every accepted reading once, the late one included
    keys = ["source", "channel", "time", "seq"]
    for name, got in _readers(store / "captures" / "c").items():
        got = _sorted(got[list(want.columns)], keys)
        assert len(got) == len(want), name
        pd.testing.assert_frame_equal(
            got, _sorted(want, keys), check_dtype=False, check_categorical=False, obj=name
        )
    folder = store / "captures" / "c"
    # The microsecond column other tools use agrees with the exact one (to the microsecond).
    frame = pl.scan_delta(str(folder)).collect()
    assert (frame["time"].dt.epoch("us") == frame["time_ns"] // 1000).all()


@pytest.mark.parametrize("view", ["w10", "sess"])
def test_view_tables_give_exactly_the_view_rows(store: Path, view: str) -> None:
    want = reads.read_view(Store(str(store)), view).to_pandas()
    assert want["final"].any()
    assert not want["final"].all()  # the last windows are still open: provisional rows
    keys = ["source", "channel", "window_start"]
    for name, got in _readers(store / "views" / view).items():
        got = _sorted(got[list(want.columns)], keys)
        assert not got.duplicated(keys).any(), name
        pd.testing.assert_frame_equal(
            got, _sorted(want, keys), check_dtype=False, check_categorical=False, obj=name
        )


def test_a_plain_glob_of_a_view_also_sees_files_later_commits_removed(store: Path) -> None:
    """Each run rewrites the segments it changes as new files and removes the old ones from
    the table; the old ones stay in the folder (for time travel) until a vacuum. A glob reads
    them all, so it sees a window more than once: the reason to read tables as tables."""
    glob = str(store / "views" / "w10" / "**" / "*.parquet")
    by_glob = duckdb.sql(f"SELECT * FROM read_parquet('{glob}')").df()
    keys = ["source", "channel", "window_start_ns"]
    assert by_glob.duplicated(keys).any()
    table = pl.scan_delta(str(store / "views" / "w10")).collect().to_pandas()
    assert not table.duplicated(keys).any()
    assert len(by_glob) > len(table)


def test_late_and_dead_letter_tables_read_as_tables_too(store: Path) -> None:
    late = pl.scan_delta(str(store / "late" / "w10")).collect()
    assert list(late["value"]) == [99.0]
    dead = pl.scan_delta(str(store / "deadletter")).collect()
    assert dead.height == 3
    assert set(dead["reason"]) == {"bad_time"}


BEFORE_ALARMS = Path(__file__).parent / "fixtures" / "capture_before_alarms"


def test_a_capture_from_before_the_alarm_columns_gains_them_with_its_next_readings(
    tmp_path: Path,
) -> None:
    """A capture whose table predates ``alarm_severity``/``alarm_status``: readings that
    have them are appended with them, and every reader sees them (null for the old rows)."""
    store = tmp_path / "store"
    shutil.copytree(BEFORE_ALARMS / "store", store)
    new = tmp_path / "alarms.csv"
    new.write_text(
        "source,channel,time,value,alarm_severity,alarm_status\n"
        "ioc,P:s0,2026-01-02T00:00:00Z,1.5,MINOR,HIGH\n"
        "ioc,P:s0,2026-01-02T00:00:01Z,2.5,NO_ALARM,NO_ALARM\n"
    )
    assert main(["ingest", str(new), "--store", str(store), "--capture", "pvs", "-q"]) == 0

    folder = store / "captures" / "pvs"
    names = DeltaTable(str(folder)).schema().to_arrow().names
    assert {"alarm_severity", "alarm_status"} <= set(names)
    frame = pl.read_delta(str(folder)).sort("time")
    assert frame.height == 24 + 2
    assert frame["alarm_severity"].to_list() == [None] * 24 + ["MINOR", "NO_ALARM"]
    assert frame["alarm_status"].to_list()[-2:] == ["HIGH", "NO_ALARM"]
    ours = reads.read_capture(Store(str(store)), "pvs", columns=["source", "alarm_severity"])
    by_source = pl.from_arrow(ours).group_by("source").agg("alarm_severity").sort("source")
    assert by_source.rows() == [("ioc", ["MINOR", "NO_ALARM"]), ("ioc-old", [None] * 24)]
