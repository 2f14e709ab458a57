"""Data folders hold only data: DuckDB, Polars and pandas read them with a plain glob."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pytest

from obsflow.connectors import reads
from obsflow.connectors.store import Store
from obsflow.flows.cli import main

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


def test_capture_globs_give_exactly_the_accepted_readings(store: Path) -> None:
    want = reads.read_capture(Store(str(store)), "c").to_pandas()
    assert len(want) == 3 * 200 + 1  # every accepted reading once, the late one included
    keys = ["source", "channel", "time", "seq"]
    glob = str(store / "captures" / "c" / "**" / "*.parquet")
    by_duckdb = duckdb.sql(f"SELECT * FROM read_parquet('{glob}')").df()
    by_polars = pl.read_parquet(glob).to_pandas()
    for got in (by_duckdb, by_polars):
        got = _sorted(got[list(want.columns)], keys)
        assert len(got) == len(want)
        pd.testing.assert_frame_equal(
            got, _sorted(want, keys), check_dtype=False, check_categorical=False
        )
    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()
    assert count == [(len(want),)]


@pytest.mark.parametrize("view", ["w10", "sess"])
def test_view_globs_give_exactly_the_view_rows(store: Path, view: str) -> None:
    want = reads.read_view(Store(str(store)), view).to_pandas()
    assert want["final"].any()
    assert not want["final"].all()  # the last windows are still open: provisional rows
    keys = ["source", "channel", "window_start"]
    folder = store / "views" / view
    glob = str(folder / "**" / "*.parquet")
    by_duckdb = duckdb.sql(f"SELECT * FROM read_parquet('{glob}')").df()
    by_polars = pl.read_parquet(glob).to_pandas()
    by_pandas = pd.read_parquet(folder)
    for got in (by_duckdb, by_polars, by_pandas):
        got = _sorted(got[list(want.columns)], keys)
        assert not got.duplicated(keys).any()
        pd.testing.assert_frame_equal(
            got, _sorted(want, keys), check_dtype=False, check_categorical=False
        )


def test_late_and_dead_letter_folders_are_globbable_too(store: Path) -> None:
    late = duckdb.sql(f"SELECT * FROM read_parquet('{store}/late/w10/**/*.parquet')").df()
    assert list(late["value"]) == [99.0]
    dead = pl.read_parquet(str(store / "deadletter" / "**" / "*.parquet"))
    assert dead.height == 3
    assert set(dead["reason"]) == {"bad_time"}
