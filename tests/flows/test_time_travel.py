"""Time travel and exact times (issue 28, must-show 4 and 7).

Three runs into one capture; ``--as-of N`` (and the time of commit N) on ``views show``,
``capture show``, ``capture info``, ``sql``, ``replay`` and the Explorer gives exactly what the
store held after commit N: checked against pandas over the files of runs 1..N (the window
oracle of ``tests/flows/oracle.py``). Times carry sub-microsecond digits and values sit on a
1e9 offset; both come back exactly through the capture, the views, late readings, a replay,
SQL, the Explorer and the web app.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from obsflow.connectors.errors import StoreError
from obsflow.connectors.storage import tables
from obsflow.connectors.storage.commits import read_log
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main
from obsflow.flows.explore.explorer import open_store
from obsflow.flows.kernels.viewdef import parse_views
from tests.delta import polars_frame
from tests.flows.oracle import Oracle, assert_rows_match

VIEWS = """
[[view]]
name = "t10"
size = "10s"
aggregates = ["count", "sum", "mean", "min", "max", "std", "first", "last"]
[[view]]
name = "sess"
kind = "session"
gap = "3s"
aggregates = ["count", "mean", "last"]
"""
T0 = pd.Timestamp("2026-04-01T00:00:00Z").value
S = 10**9


def run_frames() -> list[pd.DataFrame]:
    """Three runs of readings with nanosecond digits and values on a 1e9 offset; run 3 holds
    a reading whose windows runs 1-2 made final (late)."""
    frames = []
    for k in range(3):
        n = 40
        t = T0 + k * 25 * S + (pd.RangeIndex(n).to_numpy() * 613_000_017) % (24 * S)
        frames.append(
            pd.DataFrame(
                {
                    "source": [f"s{i % 3}" for i in range(n)],
                    "channel": "x",
                    "time": t + 123,  # ... .xxxxxx123: below the microsecond
                    "value": [1e9 + (i * 7 + k) * 0.001 for i in range(n)],
                }
            )
        )
    frames[2].loc[len(frames[2])] = ["s1", "x", T0 + 2 * S + 999, 1e9 + 0.5]  # late
    return frames


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[pd.DataFrame]]:
    root = tmp_path_factory.mktemp("travel")
    (root / "views.toml").write_text(VIEWS)
    frames = run_frames()
    for k, frame in enumerate(frames):
        path = root / f"run{k}.parquet"
        frame.to_parquet(path)
        argv = ["ingest", str(path), "--store", str(root / "s"), "--capture", "c", "-q"]
        assert main([*argv, "--views", str(root / "views.toml"), "--time-unit", "ns"]) == 0
    return root / "s", frames


def oracle(frames: list[pd.DataFrame], k: int, view: str) -> Oracle:
    """What the view holds after runs 1..k (pandas over the files of that run set)."""
    defs = {v.name: v for v in parse_views(VIEWS)}
    o = Oracle(defs[view])
    seq: dict[str, int] = {}
    for frame in frames[:k]:  # seq numbered per source in arrival order, across runs
        df = frame.copy()
        counts = df.groupby("source").cumcount()
        df["seq"] = [seq.get(s, 0) + int(c) for s, c in zip(df["source"], counts, strict=True)]
        for source, n in df["source"].value_counts().items():
            seq[str(source)] = seq.get(str(source), 0) + int(n)
        o.run(df)
    return o


def moment_after(store: Store, k: int) -> str:
    """A time between the end of commit ``k`` (its last table's commit) and the next one."""
    stamps = [
        int(e["timestamp"])
        for table in ("captures/c", "views/t10", "views/sess", "late/t10", "late/sess")
        for e in tables.history(store, table)
        if (e.get("obsflow") or {}).get("commit") == k
    ]
    later = [
        int(e["timestamp"])
        for e in tables.history(store, "captures/c")
        if (e.get("obsflow") or {}).get("commit") == k + 1
    ]
    assert not later or max(stamps) < min(later)  # (the runs were apart)
    return pd.Timestamp(max(stamps) + 0.5, unit="ms", tz="UTC").isoformat()


def capture_oracle(frames: list[pd.DataFrame], k: int) -> pd.DataFrame:
    df = pd.concat(frames[:k], ignore_index=True)
    return df.sort_values(["source", "time"]).reset_index(drop=True)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_as_of_each_commit_gives_exactly_that_version(
    three_runs: tuple[Path, list[pd.DataFrame]], k: int, capsys: pytest.CaptureFixture[str]
) -> None:
    store, frames = three_runs
    log = read_log(Store(str(store)), "c")
    assert [c.n for c in log] == [1, 2, 3]
    when = moment_after(Store(str(store)), k)
    want_capture = capture_oracle(frames, k)
    for as_of in (k, when):
        ex = open_store(str(store), as_of=as_of)
        got = ex.capture("c").sort_values(["source", "time"]).reset_index(drop=True)
        assert got["time"].astype("int64").tolist() == want_capture["time"].tolist()  # exact ns
        assert got["value"].tolist() == want_capture["value"].tolist()  # exact doubles
        for view in ("t10", "sess"):
            o = oracle(frames, k, view)
            rows = ex.view(view)
            rows = rows.assign(
                window_start=rows["window_start"].astype("int64"),
                window_end=rows["window_end"].astype("int64"),
            )
            values = pd.concat(frames[:k])["value"]
            defs = {v.name: v for v in parse_views(VIEWS)}
            assert_rows_match(rows, o.rows(), defs[view], values)
            late = ex.late(view)
            assert sorted(late["time"].astype("int64")) == sorted(o.late_readings()["time"])
        assert ex.captures().set_index("name").loc["c", "rows"] == len(want_capture)
        assert ex.captures().set_index("name").loc["c", "commits"] == k

    # The CLI: capture show/info, views show, sql at commit k.
    s = str(store)
    capsys.readouterr()
    assert main(["capture", "info", "c", "--store", s, "--as-of", str(k), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["rows"], info["commits"]) == (len(want_capture), k)
    out = Path(s).parent / f"cap{k}.parquet"
    assert main(["capture", "show", "c", "--store", s, "--as-of", str(k), "-o", str(out)]) == 0
    shown = pq.read_table(out).to_pandas()
    assert sorted(shown["time"].astype("int64")) == sorted(want_capture["time"])
    out = Path(s).parent / f"t10-{k}.parquet"
    assert main(["views", "show", "t10", "--store", s, "--as-of", when, "-o", str(out)]) == 0
    assert len(pq.read_table(out)) == len(oracle(frames, k, "t10").rows())
    capsys.readouterr()
    query = "SELECT count(*) AS n, min(time) AS first FROM capture_c"
    assert main(["sql", query, "--store", s, "--as-of", str(k), "--format", "csv"]) == 0
    answer = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert answer["n"].tolist() == [len(want_capture)]
    assert pd.Timestamp(answer["first"][0]).value == want_capture["time"].min()  # exact ns


def test_a_time_goes_by_the_commit_times_the_log_records_not_by_file_times(
    three_runs: tuple[Path, list[pd.DataFrame]], tmp_path: Path
) -> None:
    """A commit's log file is written after the time it records (under load, by more than a
    millisecond; S3 lists it to the second): a time just after the recorded one sees it."""
    import os
    import shutil

    store, frames = three_runs
    copy = tmp_path / "s"
    shutil.copytree(store, copy)
    when = moment_after(Store(str(copy)), 2)
    for log in copy.glob("*/*/_delta_log/*.json"):  # every log file written an hour late
        stat = log.stat()
        os.utime(log, (stat.st_atime + 3600, stat.st_mtime + 3600))
    ex = open_store(str(copy), as_of=when)
    assert len(ex.capture("c")) == len(capture_oracle(frames, 2))
    assert len(ex.view("t10")) == len(oracle(frames, 2, "t10").rows())
    with pytest.raises(StoreError, match="did not exist"):
        open_store(str(copy), as_of="2000-01-01T00:00:00Z").capture("c")


def test_replay_as_of_an_earlier_commit_rebuilds_that_versions_views(
    three_runs: tuple[Path, list[pd.DataFrame]], tmp_path: Path
) -> None:
    import shutil

    store, frames = three_runs
    copy = tmp_path / "s"
    shutil.copytree(store, copy)
    argv = ["replay", "--store", str(copy), "--capture", "c", "--as-of", "2", "-q"]
    assert main(argv) == 0
    ex = open_store(str(copy))
    defs = {v.name: v for v in parse_views(VIEWS)}
    for view in ("t10", "sess"):
        rows = ex.view(view)
        rows = rows.assign(
            window_start=rows["window_start"].astype("int64"),
            window_end=rows["window_end"].astype("int64"),
        )
        o = oracle(frames, 2, view)
        # (a replay ends at the capture's last commit read: the windows of run 2's end)
        assert_rows_match(rows, o.rows(), defs[view], pd.concat(frames[:2])["value"])
    # The capture itself is as it was: replaying an older version changes no reading.
    assert len(ex.capture("c")) == len(capture_oracle(frames, 3))
    # And Polars reads the views' latest version, the replay's.
    assert len(polars_frame(copy, "views/t10")) == len(ex.view("t10"))


def test_asking_for_a_commit_that_does_not_exist_says_so(
    three_runs: tuple[Path, list[pd.DataFrame]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, _ = three_runs
    argv = ["replay", "--store", str(store), "--capture", "c", "--as-of", "9", "-q"]
    assert main(argv) == 2
    assert "no commit #9 (its commits: 1..3)" in capsys.readouterr().err
    # before the capture's first commit (a number, or a time) it did not exist: every read
    # says so rather than showing the latest version or nothing
    for as_of in ("0", "2000-01-01"):
        for action in ("info", "show"):
            argv = ["capture", action, "c", "--store", str(store), "--as-of", as_of]
            assert main(argv) == 2
            assert "capture 'c' did not exist then" in capsys.readouterr().err
        with pytest.raises(StoreError, match="did not exist then"):
            open_store(str(store), as_of=as_of).capture("c")


@pytest.mark.integration
def test_the_web_app_gives_times_to_the_nanosecond(
    three_runs: tuple[Path, list[pd.DataFrame]],
) -> None:
    import httpx

    from tests.test_serve import serving

    store, frames = three_runs
    want = capture_oracle(frames, 3)
    with serving(store) as base:
        got = httpx.get(f"{base}/api/captures/c", params={"format": "json"}, timeout=30).json()
        rows = httpx.get(f"{base}/api/views/sess", params={"format": "json"}, timeout=30).json()
    times = sorted(pd.Timestamp(r["time"]).value for r in got)
    assert times == sorted(want["time"])
    assert any(t % 1000 for t in times)  # (they have digits below the microsecond)
    assert sorted(r["value"] for r in got) == sorted(want["value"])  # doubles exact
    starts = sorted(pd.Timestamp(r["window_start"]).value for r in rows)
    assert starts == sorted(open_store(str(store)).view("sess")["window_start"].astype("int64"))
    assert any(s % 1000 for s in starts)  # a session starts at its first reading's time
