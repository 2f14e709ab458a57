"""``obsflow sql``: DuckDB over a store's captures, views, late readings, dead letters and runs.

Issue 17 must-show 1: SQL equals pandas for 8 queries over captures, views, late readings and
dead letters, on a local store and on moto. The oracle is pandas over the frames the Python API
reads with pyarrow (``Explorer``), which shares no code with DuckDB's reading.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from obsflow.flows.cli.main import main
from obsflow.flows.explore.explorer import Explorer, open_store

VIEWS = """
[[view]]
name = "w1m"
size = "1m"
aggregates = ["count", "mean", "min", "max"]
"""
T0 = pd.Timestamp("2024-01-01T00:00:00Z")


def _readings(
    rng: np.random.Generator, start_s: int, stop_s: int, offset: float = 0.0
) -> pd.DataFrame:
    rows = [
        (
            src,
            T0 + pd.Timedelta(seconds=t + offset),
            ch,
            float(rng.normal(20 if ch == "t" else 1000, 3)),
        )
        for t in range(start_s, stop_s)
        for src in ("a", "b", "c")
        for ch in ("t", "p")
    ]
    frame = pd.DataFrame(rows, columns=["source", "time", "channel", "value"])
    frame["time"] = frame["time"].map(lambda t: t.isoformat())
    return frame


def _build(url: str, tmp_path: Path) -> Explorer:
    """Two runs into capture ``c`` with view ``w1m``: the second brings late readings; both
    have rejected rows."""
    rng = np.random.default_rng(17)
    views = tmp_path / "views.toml"
    views.write_text(VIEWS)
    first = _readings(rng, 0, 600)
    bad = "a,not-a-time,t,1.0\nb,2024-01-01T00:00:05Z,t,abc\n../x,2024-01-01T00:00:06Z,t,2.0\n"
    (tmp_path / "one.csv").write_text(first.to_csv(index=False) + bad)
    second = pd.concat([_readings(rng, 600, 900), _readings(rng, 120, 124, 0.5)])  # minute 2: late
    (tmp_path / "two.csv").write_text(second.to_csv(index=False) + "c,2024-01-01T00:20:00Z,p,\n")
    for name in ("one.csv", "two.csv"):
        argv = ["ingest", str(tmp_path / name), "--store", url, "--capture", "c", "-q"]
        assert main([*argv, "--views", str(views), "--lateness", "0s"]) == 0
    return open_store(url)


def _same(sql: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert len(sql) > 0  # (every query here selects something: an empty pair proves little)
    expected = expected.reset_index(drop=True)
    sql = sql.reset_index(drop=True)
    assert list(sql.columns) == list(expected.columns)
    for col in sql.columns:
        if isinstance(expected[col].dtype, pd.DatetimeTZDtype):  # (SQL's: UTC, tz-naive)
            sql[col] = pd.to_datetime(sql[col]).dt.tz_localize("UTC").astype(expected[col].dtype)
    pd.testing.assert_frame_equal(sql, expected, check_dtype=False, rtol=1e-12)


def _check_eight_queries(ex: Explorer) -> None:
    cap, view, late = ex.capture("c"), ex.view("w1m"), ex.late("w1m")
    dead, runs = ex.deadletters(), ex.runs()
    assert len(late) > 0  # (the store has what is compared)
    assert len(dead) > 0
    assert len(cap) > 5_000
    keys = ["source", "channel"]

    # 1. Per-series statistics of the capture.
    got = ex.sql(
        "SELECT source, channel, count(value) AS n, avg(value) AS mean, min(value) AS lo, "
        "max(value) AS hi FROM capture_c GROUP BY ALL ORDER BY source, channel"
    )
    want = cap.groupby(keys, as_index=False)["value"].agg(
        n="count", mean="mean", lo="min", hi="max"
    )
    _same(got, want)

    # 2. A filter on time and value, rows as they are.
    got = ex.sql(
        "SELECT source, channel, time, value FROM capture_c WHERE time >= "
        "TIMESTAMP '2024-01-01 00:05:00' AND value > 1000 ORDER BY source, channel, time"
    )
    sel = cap[(cap["time"] >= T0 + pd.Timedelta(minutes=5)) & (cap["value"] > 1000)]
    _same(got, sel.sort_values([*keys, "time"])[[*keys, "time", "value"]])

    # 3. Final view rows above a threshold.
    got = ex.sql(
        'SELECT source, channel, window_start, "count", mean FROM view_w1m '
        "WHERE final AND mean > 500 ORDER BY source, channel, window_start"
    )
    sel = view[view["final"] & (view["mean"] > 500)]
    _same(got, sel.sort_values([*keys, "window_start"])[[*keys, "window_start", "count", "mean"]])

    # 4. A view joined with the capture: the readings inside each final window.
    got = ex.sql(
        "SELECT v.source, v.channel, v.window_start, v.count AS view_count, count(*) AS readings "
        "FROM view_w1m v JOIN capture_c c ON c.source = v.source AND c.channel = v.channel "
        "AND c.time >= v.window_start AND c.time < v.window_end WHERE v.final "
        "GROUP BY ALL ORDER BY v.source, v.channel, v.window_start"
    )
    m = view[view["final"]].merge(cap, on=keys)
    m = m[(m["time"] >= m["window_start"]) & (m["time"] < m["window_end"])]
    want = m.groupby([*keys, "window_start"], as_index=False).agg(
        view_count=("count", "first"), readings=("value", "size")
    )
    _same(got, want)

    # 5. Late readings by run and source.
    got = ex.sql(
        "SELECT run, source, count(*) AS n, sum(value) AS total FROM late_w1m "
        "GROUP BY ALL ORDER BY run, source"
    )
    want = late.groupby(["run", "source"], as_index=False)["value"].agg(n="count", total="sum")
    _same(got, want)

    # 6. Dead letters by run and reason.
    got = ex.sql(
        "SELECT run, reason, count(*) AS n FROM deadletters GROUP BY ALL ORDER BY run, reason"
    )
    _same(got, dead.groupby(["run", "reason"], as_index=False).size().rename(columns={"size": "n"}))

    # 7. Runs: the counts of each, and that they add up.
    got = ex.sql(
        "SELECT run, input, accepted, rejected, duplicates, "
        "input = accepted + rejected + duplicates AS balanced FROM runs ORDER BY run"
    )
    want = runs.sort_values("run")[["run", "input", "accepted", "rejected", "duplicates"]]
    want = want.assign(
        balanced=want["input"] == want["accepted"] + want["rejected"] + want["duplicates"]
    )
    _same(got, want)
    assert got["balanced"].all()

    # 8. A minute window computed in SQL from the capture, beside pandas' floor + groupby.
    got = ex.sql(
        "SELECT source, channel, time_bucket(INTERVAL 1 minute, time) AS minute, "
        "count(value) AS n, avg(value) AS mean FROM capture_c GROUP BY ALL "
        "ORDER BY source, channel, minute"
    )
    want = (
        cap.assign(minute=cap["time"].dt.floor("1min"))
        .groupby([*keys, "minute"], as_index=False)["value"]
        .agg(n="count", mean="mean")
    )
    _same(got, want)


def test_sql_equals_pandas_on_a_local_store(tmp_path: Path) -> None:
    _check_eight_queries(_build(str(tmp_path / "store"), tmp_path))


def test_sql_equals_pandas_on_s3(s3_env: str, tmp_path: Path) -> None:
    _check_eight_queries(_build(f"s3://{s3_env}/obs", tmp_path))


def test_the_cli_prints_writes_and_says_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = str(tmp_path / "store")
    _build(url, tmp_path)
    capsys.readouterr()
    assert main(["sql", "--store", url]) == 0
    listing = capsys.readouterr().out
    for table in ("capture_c:", "view_w1m:", "late_w1m:", "deadletters:", "runs:"):
        assert table in listing

    query = "SELECT source, count(*) AS n FROM capture_c GROUP BY source ORDER BY source"
    assert main(["sql", query, "--store", url, "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = open_store(url).capture("c").groupby("source").size()
    assert {r["source"]: r["n"] for r in rows} == want.to_dict()

    out = tmp_path / "n.parquet"
    assert main(["sql", query, "--store", url, "-o", str(out)]) == 0
    assert pd.read_parquet(out)["n"].sum() == want.sum()

    assert main(["sql", "SELECT * FROM capture_nope", "--store", url]) == 2
    err = capsys.readouterr().err
    assert "capture_nope does not exist" in err
    assert "(tables: capture_c, deadletters, late_w1m, runs, view_w1m)" in err
    assert main(["sql", query, "--store", url, "--format", "parquet"]) == 2
    assert "needs -o FILE" in capsys.readouterr().err
