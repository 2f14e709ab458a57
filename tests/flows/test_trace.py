"""Context that travels with readings: a trace id on 1 % of the records of a file is found on
exactly their capture rows, dead letters and late readings (issue 17 must-show 4, the file part),
through a replay too, and can be filtered on in the Python API and SQL."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from obsflow.flows.cli.main import main
from obsflow.flows.explore.explorer import open_store
from tests.test_serve import serving

VIEWS = """
[[view]]
name = "w10s"
size = "10s"
aggregates = ["count", "mean"]
"""
T0 = pd.Timestamp("2026-03-01T00:00:00Z")


def _input(path: Path, column: str = "trace_id") -> pd.DataFrame:
    """10,000 records of 5 sources, 1 % of them traced; among the traced, 10 bad values and 10
    readings that come far too late (100 s behind their series, in a second file ``path`` with
    ``late-`` before its name: disorder within one file is no lateness)."""
    rng = np.random.default_rng(5)
    n = 10_000
    frame = pd.DataFrame(
        {
            "source": [f"s{i % 5}" for i in range(n)],
            "time": [T0 + pd.Timedelta(milliseconds=100 * (i // 5)) for i in range(n)],
            "value": rng.normal(10, 1, n).round(6).astype(str),
            column: "",
        }
    )
    traced = rng.choice(np.arange(1000, n), 100, replace=False)
    frame.loc[traced, column] = [f"trace-{i:04d}" for i in range(100)]
    frame.loc[traced[:10], "value"] = "not-a-number"
    late = frame.loc[traced[10:20]].copy()
    late["time"] = late["time"] - pd.Timedelta(seconds=100.05)  # (off the 100 ms grid)
    late["value"] = "1.5"
    frame = pd.concat([frame.drop(index=traced[10:20]), late], ignore_index=True)
    out = frame.assign(time=frame["time"].map(lambda t: t.isoformat()))
    out.iloc[:-10].to_csv(path, index=False)
    out.iloc[-10:].to_csv(path.with_name("late-" + path.name), index=False)
    return frame


@pytest.mark.integration
def test_a_trace_id_on_one_percent_of_records_is_on_exactly_their_rows(
    tmp_path: Path,
) -> None:
    frame = _input(tmp_path / "in.csv")
    views = tmp_path / "views.toml"
    views.write_text(VIEWS)
    store = str(tmp_path / "store")
    for name in ("in.csv", "late-in.csv"):
        argv = ["ingest", str(tmp_path / name), "--store", store, "--capture", "c", "-q"]
        assert main([*argv, "--views", str(views), "--lateness", "0s"]) == 0
    ex = open_store(store)
    traced = frame[frame["trace_id"] != ""]
    bad = traced[traced["value"] == "not-a-number"]
    late = traced.iloc[-10:]  # (they were appended last)
    assert len(traced) == 100

    def ids(rows: pd.DataFrame) -> list[str]:
        return sorted(rows["trace_id"].dropna())

    cap = ex.capture("c", columns=["source", "time", "value", "trace_id"])
    assert ids(cap) == sorted(traced["trace_id"][traced["value"] != "not-a-number"])
    on_rows = cap.dropna(subset=["trace_id"]).set_index("trace_id").sort_index()
    want = traced.set_index("trace_id").loc[on_rows.index]
    assert (on_rows["source"] == want["source"]).all()
    assert (on_rows["time"] == want["time"]).all()
    assert ids(ex.deadletters()) == sorted(bad["trace_id"])
    assert ids(ex.late("w10s")) == sorted(late["trace_id"])

    # Filters: the Python API and SQL.
    one = ex.capture("c", trace_id="trace-0050")
    assert len(one) == 1
    assert one["trace_id"].iloc[0] == "trace-0050"
    sql = ex.sql("SELECT trace_id FROM late_w10s WHERE trace_id IS NOT NULL ORDER BY 1")
    assert list(sql["trace_id"]) == sorted(late["trace_id"])

    some = sorted(late["trace_id"])[:3] + sorted(bad["trace_id"])[:3]
    assert ids(ex.late("w10s", trace_id=some)) == sorted(late["trace_id"])[:3]
    assert ids(ex.deadletters(trace_id=some)) == sorted(bad["trace_id"])[:3]

    # ... and the HTTP API.
    with serving(store) as base:
        params = [("trace_id", t) for t in some]
        for path, want in (
            ("captures/c", sorted(late["trace_id"])[:3]),  # (late readings are captured)
            ("views/w10s/late", sorted(late["trace_id"])[:3]),
            ("deadletters", sorted(bad["trace_id"])[:3]),
        ):
            rows = httpx.get(f"{base}/api/{path}", params=params, timeout=30).json()
            assert sorted(r["trace_id"] for r in rows) == want, path
        one = httpx.get(f"{base}/api/captures/c", params={"trace_id": "trace-0050"}).json()
        assert [r["trace_id"] for r in one] == ["trace-0050"]

    # A replay rebuilds the late readings: they keep their trace ids.
    assert main(["replay", "--capture", "c", "--store", store, "-q"]) == 0
    assert ids(ex.late("w10s")) == sorted(late["trace_id"])


def test_a_trace_id_field_of_another_name_is_mapped(tmp_path: Path) -> None:
    frame = _input(tmp_path / "in.csv", column="request")
    store = str(tmp_path / "store")
    for name in ("in.csv", "late-in.csv"):
        argv = ["ingest", str(tmp_path / name), "--store", store, "--capture", "c", "-q"]
        assert main([*argv, "--map", "trace_id=request"]) == 0
    ex = open_store(store)
    traced = frame[(frame["request"] != "") & (frame["value"] != "not-a-number")]
    cap = ex.capture("c", columns=["source", "value", "trace_id"])
    assert sorted(cap["trace_id"].dropna()) == sorted(traced["request"])
    dead = ex.deadletters()
    assert dead["trace_id"].notna().sum() == 10
    assert set(cap["source"]) == {f"s{i}" for i in range(5)}  # (request is no channel)


def test_a_wide_file_keeps_the_trace_id_as_context_not_a_channel(tmp_path: Path) -> None:
    (tmp_path / "wide.csv").write_text(
        "source,time,t,p,trace_id\n"
        "a,2026-01-01T00:00:00Z,1.0,2.0,abc\n"
        "a,2026-01-01T00:00:01Z,1.1,2.1,\n"
    )
    store = str(tmp_path / "store")
    assert main(["ingest", str(tmp_path / "wide.csv"), "--store", store, "-q"]) == 0
    cap = open_store(store).capture("default", columns=["channel", "time", "trace_id"])
    assert sorted(cap["channel"].unique()) == ["p", "t"]
    first, second = (rows["trace_id"] for _, rows in cap.groupby("time"))
    assert first.tolist() == ["abc", "abc"]  # (both channels of the traced record)
    assert second.isna().all()
