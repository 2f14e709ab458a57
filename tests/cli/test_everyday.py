"""Everyday paths of the ``obsflow`` command, tried as a new user would (issue 12): each test
reproduces a finding with the same kind of command and input and asserts what happens now."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from obsflow.connectors.datasets import reads
from obsflow.connectors.sources.simulator import SimSpec, generate
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main

WIDE_NAMES = "station,timestamp,temp_c\n"
ROWS = "A,2026-01-01T00:00:00Z,18.0\nA,2026-01-01T00:01:00Z,18.2\nB,2026-01-01T00:00:30Z,17.5\n"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Exit status and stderr of one ``obsflow`` command in this process."""
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_a_run_that_accepts_nothing_fails_says_why_and_does_not_block_its_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wx = tmp_path / "weather.csv"
    wx.write_text(WIDE_NAMES + ROWS)
    store = str(tmp_path / "store")
    code, err = run(capsys, "ingest", str(wx), "--store", store, "--capture", "wx", "-q")
    assert code == 1
    assert "nothing was accepted: all 3 records were rejected" in err
    assert "missing_field (3): no column 'source'" in err
    assert "columns are station, timestamp, temp_c; try --map " in err
    hint = err.split("try --map ")[1].split()[0]
    assert hint == "source=station,time=timestamp,value=temp_c"
    assert reads.read_deadletters(Store(store)).num_rows == 3  # nothing lost

    # The command the hint gives reads the same file: it is not "already captured".
    code, err = run(
        capsys, "ingest", str(wx), "--store", store, "--capture", "wx", "-q", "--map", hint
    )
    assert code == 0, err
    assert "skipping" not in err
    capture = reads.read_capture(Store(store), "wx").to_pandas()
    assert sorted(zip(capture["source"], capture["value"], strict=True)) == [
        ("A", 18.0),
        ("A", 18.2),
        ("B", 17.5),
    ]
    # ... and once accepted, the same content is skipped.
    code, err = run(
        capsys, "ingest", str(wx), "--store", store, "--capture", "wx", "-q", "--map", hint
    )
    assert code == 0
    assert "skipping" in err


def test_a_header_only_file_is_an_empty_run_not_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("source,time,value\n")
    store = str(tmp_path / "store")
    summary = tmp_path / "summary.json"
    code, err = run(
        capsys, "ingest", str(empty), "--store", store, "--capture", "c", "--summary", str(summary)
    )
    assert code == 0, err
    doc = json.loads(summary.read_text())
    assert (doc["input"], doc["accepted"], doc["rejected"], doc["commit"]) == (0, 0, 0, None)
    assert "without" not in err  # no "ended without committing"
    # (a run that accepted nothing creates no capture: the next run into it makes it)
    assert "capture 'c' was not created: no reading was accepted" in err
    assert not (tmp_path / "store" / "captures" / "c").exists()


def test_replay_of_a_capture_that_does_not_exist_names_the_capture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.csv"
    good.write_text("source,time,value\nA,2026-01-01T00:00:00Z,1\n")
    store = str(tmp_path / "store")
    assert run(capsys, "ingest", str(good), "--store", store, "--capture", "wx", "-q")[0] == 0
    code, err = run(capsys, "replay", "--store", store, "--capture", "nosuch")
    assert code == 2
    assert err.strip().splitlines() == [
        f"obsflow: error: no capture 'nosuch' in {Path(store).resolve()} (captures: wx)"
    ]


def test_the_demo_leaves_other_captures_and_their_dead_letters_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("source,time,value\nA,2026-01-01T00:00:00Z,1\nA,not-a-time,2\n")
    store = str(tmp_path / "store")
    assert run(capsys, "ingest", str(mixed), "--store", store, "--capture", "wx", "-q")[0] == 0
    before = {
        "dead": reads.read_deadletters(Store(store)).to_pandas(),
        "capture": reads.read_capture(Store(store), "wx").to_pandas(),
        "view": reads.read_view(Store(store), "wx_1m").to_pandas(),
    }
    assert len(before["dead"]) == 1
    assert run(capsys, "demo", "--store", store, "--duration", "10s")[0] == 0
    after = Store(store)
    assert reads.read_deadletters(after).to_pandas().equals(before["dead"])
    assert reads.read_capture(after, "wx").to_pandas().equals(before["capture"])
    assert reads.read_view(after, "wx_1m").to_pandas().equals(before["view"])
    assert reads.read_capture(after, "demo").num_rows == 4 * 2 * 10 * 10


def test_a_short_run_prints_no_progress_line_only_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.csv"
    good.write_text("source,time,value\nA,2026-01-01T00:00:00Z,1\nA,2026-01-01T00:00:01Z,2\n")
    code, err = run(capsys, "ingest", str(good), "--store", str(tmp_path / "s"), "--capture", "c")
    assert code == 0
    assert "[ingest]" not in err  # it used to say "0 accepted" at millions of readings/s
    assert "2 input = 2 accepted + 0 rejected + 0 duplicates (adds up)" in err


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_semicolon_tab_and_bar_delimited_csv_files_are_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sep: str
) -> None:
    text = "source,channel,time,value\nA,t,2026-01-01T00:00:00Z,1.5\nB,t,2026-01-01T00:00:01Z,2\n"
    path = tmp_path / "export.csv"
    path.write_text(text.replace(",", sep))
    store = str(tmp_path / "s")
    code, err = run(capsys, "ingest", str(path), "--store", store, "--capture", "c", "-q")
    assert code == 0, err
    capture = reads.read_capture(Store(store), "c").to_pandas()
    assert list(zip(capture["source"], capture["value"], strict=True)) == [("A", 1.5), ("B", 2.0)]


def test_disorder_inside_one_file_loses_nothing_from_the_views(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """48 readings over 48 minutes, in random order, default settings (lateness 0)."""
    rng = np.random.default_rng(4)
    t = pd.Timestamp("2026-03-01T00:00:00Z") + pd.to_timedelta(rng.permutation(48), unit="min")
    frame = pd.DataFrame({"source": "s1", "time": t, "value": rng.normal(10, 1, 48).round(3)})
    path = tmp_path / "unsorted.csv"
    frame.assign(time=frame["time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(path, index=False)
    store = str(tmp_path / "s")
    summary = tmp_path / "summary.json"
    args = ["ingest", str(path), "--store", store, "--capture", "unsorted", "-q"]
    assert run(capsys, *args, "--summary", str(summary))[0] == 0
    assert json.loads(summary.read_text())["late"] == {}
    view = reads.read_view(Store(store), "unsorted_1m").to_pandas()
    expected = frame.set_index("time").sort_index()["value"]
    assert view["count"].tolist() == [1] * 48
    assert view["mean"].tolist() == expected.tolist()


WIDE = """timestamp,station,temp_c,rh_pct,site
2026-01-01T00:00:00Z,A,18.0,55,north
2026-01-01T00:00:30Z,A,18.2,,north
2026-01-01T00:01:00Z,B,abc,60.5,south
2026-01-01T00:01:30Z,B,17.1,61,south
"""


def test_a_wide_file_gives_one_channel_per_numeric_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "station.csv"
    path.write_text(WIDE)
    store = str(tmp_path / "s")
    base = ["ingest", str(path), "--store", store, "--capture", "wx", "-q"]
    code, err = run(capsys, *base)
    assert code == 1
    assert "try --map source=station,time=timestamp\n" in err + "\n"

    summary = tmp_path / "summary.json"
    code, err = run(
        capsys, *base, "--map", "source=station,time=timestamp", "--summary", str(summary)
    )
    assert code == 0, err
    # The oracle: pandas melts the file; empty cells are no reading; text columns no channel.
    frame = pd.read_csv(path)
    long = frame.melt(
        id_vars=["timestamp", "station"], value_vars=["temp_c", "rh_pct"], var_name="channel"
    ).dropna(subset=["value"])
    numbers = pd.to_numeric(long["value"], errors="coerce")
    good = long[numbers.notna()].assign(value=numbers[numbers.notna()])
    capture = reads.read_capture(Store(store), "wx").to_pandas()
    got = sorted(zip(capture["source"], capture["channel"], capture["value"], strict=True))
    want = sorted(zip(good["station"], good["channel"], good["value"].astype(float), strict=True))
    assert got == want
    doc = json.loads(summary.read_text())
    assert (doc["input"], doc["accepted"], doc["rejected"]) == (len(long), len(good), 1)
    (dead,) = reads.read_deadletters(Store(store), run=doc["run"]).to_pylist()
    assert (dead["row"], dead["reason"]) == (2, "bad_value")  # the record holding "abc"
    assert json.loads(dead["raw"])["value"] == "abc"


def test_a_channel_mapped_to_a_column_of_measurements_is_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "station.csv"
    path.write_text("timestamp,station,temp_c\n2026-01-01T00:00:00Z,A,18.0\n")
    mapping = "source=station,time=timestamp,channel=temp_c,value=temp_c"
    store = str(tmp_path / "s")
    code, err = run(capsys, "ingest", str(path), "--store", store, "-q", "--map", mapping)
    assert code == 1
    assert "--map channel=temp_c: that column holds measurements, not channel names" in err


def test_integer_epoch_times_get_their_unit_from_their_magnitude_and_it_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seconds = [1_767_225_600, 1_767_225_660, 1_767_225_720]
    path = tmp_path / "epoch.csv"
    rows = [f"a,{t},{i}" for i, t in enumerate(seconds)]
    rows.append("a,1767225780000,9")  # milliseconds among seconds: which one is it?
    path.write_text("source,time,value\n" + "\n".join(rows) + "\n")
    store = str(tmp_path / "s")
    code, err = run(capsys, "ingest", str(path), "--store", store, "--capture", "e")
    assert code == 0, err
    assert "epoch-number times read as seconds since 1970-01-01 UTC" in err
    capture = reads.read_capture(Store(store), "e").to_pandas()
    assert capture["time"].tolist() == [pd.Timestamp(t, unit="s", tz="UTC") for t in seconds]
    (dead,) = reads.read_deadletters(Store(store)).to_pylist()
    assert (dead["row"], dead["reason"]) == (3, "bad_time")
    assert "another magnitude than the rest (read as s); give --time-unit" in dead["message"]

    # Said explicitly, the unit is taken as given (and nothing is inferred or said).
    ms = tmp_path / "ms.csv"
    ms.write_text("source,time,value\nb,1767225600000,1\n")
    args = ["ingest", str(ms), "--store", store, "--capture", "e", "--time-unit", "ms"]
    code, err = run(capsys, *args)
    assert code == 0
    assert "epoch-number" not in err
    b = reads.read_capture(Store(store), "e", sources=["b"]).to_pandas()
    assert b["time"].tolist() == [pd.Timestamp("2026-01-01T00:00:00Z")]


def test_a_shuffled_million_reading_file_gives_the_views_pandas_gives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """8 instruments x 2 channels at 10 Hz for 1 h 45 min, rows in random order, default
    settings (the default per-minute view, lateness 0): nothing late, every window as pandas
    computes it over all readings."""
    spec = SimSpec(sources=8, rate=10.0, duration=6250.0, seed=5, gap_prob=0.0)
    table = generate(spec).select(["source", "channel", "time", "value"])
    order = np.random.default_rng(6).permutation(table.num_rows)
    path = tmp_path / "shuffled.parquet"
    pq.write_table(table.take(pa.array(order)), path)
    assert table.num_rows == 1_000_000
    store = str(tmp_path / "s")
    summary = tmp_path / "summary.json"
    args = ["ingest", str(path), "--store", store, "--capture", "sh", "-q", "--summary"]
    assert run(capsys, *args, str(summary))[0] == 0
    assert json.loads(summary.read_text())["late"] == {}
    frame = table.to_pandas()
    frame["window_start"] = frame["time"].dt.floor("1min")
    want = (
        frame.groupby(["source", "channel", "window_start"])["value"]
        .agg(["count", "mean", "min", "max"])
        .reset_index()
    )
    got = reads.read_view(Store(store), "sh_1m").to_pandas()
    assert len(got) == len(want)
    assert got["count"].tolist() == want["count"].tolist()
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-12)
    assert got["min"].tolist() == want["min"].tolist()
    assert got["max"].tolist() == want["max"].tolist()


def test_late_readings_are_explained_with_the_command_that_includes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "s")
    first, late = tmp_path / "first.csv", tmp_path / "late.csv"
    first.write_text("source,time,value\na,2026-01-01T00:00:10Z,1\na,2026-01-01T00:05:00Z,2\n")
    late.write_text("source,time,value\na,2026-01-01T00:00:20Z,3\n")  # its minute is final
    assert run(capsys, "ingest", str(first), "--store", store, "--capture", "c")[0] == 0
    code, err = run(capsys, "ingest", str(late), "--store", store, "--capture", "c")
    assert code == 0
    assert "1 late reading ->" in err
    hint = "To include them: obsflow replay --capture c --lateness DURATION"
    assert hint in err
    # The command it gives, with a duration, does include it.
    code, _ = run(capsys, "replay", "--store", store, "--capture", "c", "--lateness", "10m", "-q")
    assert code == 0
    rows = reads.read_view(Store(store), "c_1m").to_pandas()
    first_minute = rows[rows["window_start"] == pd.Timestamp("2026-01-01T00:00:00Z")]
    assert first_minute["count"].tolist() == [2]


@pytest.mark.integration
def test_a_file_that_is_not_what_its_extension_says_is_one_line_without_a_panic(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_text("source,time,value\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "obsflow.flows.cli.main",
            "ingest",
            str(bad),
            "--store",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "RUST_BACKTRACE": "1"},
        timeout=120,
    )
    assert proc.returncode == 2  # (refused before the run reads anything)
    assert proc.stderr.splitlines() == [
        f"obsflow: error: {bad} is not a Parquet file (Parquet magic bytes not found in footer. "
        "Either the file is corrupted or this is not a parquet file): was it copied whole, and "
        "is it Parquet? (a file's extension chooses how it is read)"
    ]


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_views_and_captures_export_to_csv_json_and_parquet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ext: str
) -> None:
    cells = [(s, m, sec) for s in "AB" for m in range(3) for sec in (0, 30)]
    rows = [f"{s},2026-01-01T00:0{m}:{sec:02d}Z,{m * 10 + sec / 10}" for s, m, sec in cells]
    path = tmp_path / "in.csv"
    path.write_text("source,time,value\n" + "\n".join(rows) + "\n")
    store = str(tmp_path / "s")
    assert run(capsys, "ingest", str(path), "--store", store, "--capture", "c", "-q")[0] == 0

    def read_back(out: Path) -> pd.DataFrame:
        if ext == "parquet":
            return pd.read_parquet(out)
        if ext == "csv":
            return pd.read_csv(out)
        return pd.read_json(out, lines=True)

    out = tmp_path / f"view.{ext}"
    args = ["views", "show", "c_1m", "--store", store, "--source", "A", "-o", str(out)]
    code, err = run(capsys, *args)
    assert code == 0
    assert f"view 'c_1m': wrote 3 rows to {out}" in err
    view = reads.read_view(Store(store), "c_1m", sources=["A"]).to_pandas()
    got = read_back(out)
    assert got["count"].tolist() == view["count"].tolist() == [2, 2, 2]
    assert got["mean"].tolist() == view["mean"].tolist()
    assert got["final"].tolist() == view["final"].tolist() == [True, True, False]

    out = tmp_path / f"capture.{ext}"
    args = ["capture", "show", "c", "--store", store, "--from", "2026-01-01T00:01:00Z"]
    assert run(capsys, *args, "-o", str(out))[0] == 0
    got = read_back(out)
    assert sorted(zip(got["source"], got["value"], strict=True)) == sorted(
        (s, m * 10 + sec / 10) for s in "AB" for m in (1, 2) for sec in (0, 30)
    )


def test_duplicates_older_than_the_dedup_memory_are_found_in_the_capture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file ingested again after 12 hours of newer data (the memory holds 10 minutes): its
    readings are duplicates, a changed one is a conflict, a new one is accepted."""

    def minutes(name: str, hour: int, values: list[str]) -> Path:
        path = tmp_path / name
        rows = [f"b,2026-07-01T{hour:02d}:{m:02d}:00Z,{v}" for m, v in enumerate(values)]
        path.write_text("source,time,value\n" + "\n".join(rows) + "\n")
        return path

    morning = minutes("morning.csv", 0, [str(m) for m in range(60)])
    evening = minutes("evening.csv", 12, [str(m) for m in range(60)])
    store = str(tmp_path / "s")
    summary = tmp_path / "summary.json"

    def ingest(path: Path, *extra: str) -> dict[str, int]:
        args = ["ingest", str(path), "--store", store, "--capture", "c", "-q"]
        assert run(capsys, *args, "--summary", str(summary), *extra)[0] == 0
        doc = json.loads(summary.read_text())
        return {k: doc[k] for k in ("input", "accepted", "rejected", "duplicates")}

    ingest(morning)
    ingest(evening)
    assert ingest(morning, "--force") == {
        "input": 60, "accepted": 0, "rejected": 0, "duplicates": 60
    }  # fmt: skip
    changed = tmp_path / "changed.csv"
    changed.write_text(
        "source,time,value\n"
        "b,2026-07-01T00:05:00Z,999\n"  # same identity, other value: a conflict
        "b,2026-07-01T00:06:00Z,6\n"  # the same reading: a duplicate
        "b,2026-07-01T00:06:30Z,6.5\n"  # new
    )
    assert ingest(changed) == {"input": 3, "accepted": 1, "rejected": 1, "duplicates": 1}
    (conflict,) = reads.read_deadletters(Store(store), reason="conflict").to_pylist()
    assert json.loads(conflict["raw"])["value"] == 999.0
    capture = reads.read_capture(Store(store), "c").to_pandas()
    assert len(capture) == 121
    assert capture["time"].is_unique


def test_channels_picks_columns_of_a_wide_file_and_delimiter_overrides_the_sniffing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A ;-file whose header holds more commas than semicolons (a column of flags): sniffing
    # picks ',' and nothing parses; --delimiter says it.
    path = tmp_path / "logger.csv"
    path.write_text(
        "timestamp;station;temp_c;rh_pct;flags (q,c,s,r,m,x)\n"
        "2026-01-01T00:00:00Z;A;18.0;55;7\n"
        "2026-01-01T00:01:00Z;A;18.5;56;0\n"
    )
    store = str(tmp_path / "s")
    base = ["ingest", str(path), "--store", store, "-q", "--map", "source=station,time=timestamp"]
    code, err = run(capsys, *base, "--capture", "sniffed")
    assert code == 2  # (refused before it is read: the columns --map names are not there)
    assert "--map source=station names no column of it" in err
    code, err = run(
        capsys, *base, "--capture", "wx", "--delimiter", ";", "--channels", "temp_c,rh_pct"
    )
    assert code == 0, err
    capture = reads.read_capture(Store(store), "wx").to_pandas()
    frame = pd.read_csv(path, sep=";")
    want = frame.melt(id_vars=["timestamp", "station"], value_vars=["temp_c", "rh_pct"])
    assert sorted(zip(capture["channel"], capture["value"], strict=True)) == sorted(
        zip(want["variable"], want["value"].astype(float), strict=True)
    )  # the flags column, numeric too, is left out

    # A column --channels names that the file does not have: said, with the columns it has.
    code, err = run(capsys, *base, "--capture", "wx2", "--delimiter", ";", "--channels", "temp")
    assert code == 2
    assert (
        "--channels temp names no column of it (columns: timestamp, station, temp_c, rh_pct" in err
    )
    # A delimiter of two characters is a usage error before anything is read.
    code, err = run(capsys, *base, "--capture", "wx3", "--delimiter", ";;")
    assert code == 2
    assert "--delimiter ';;': one character" in err


def test_dead_letter_rows_index_records_and_malformed_text_names_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text(
        "source,time,value\n"
        "A,2026-01-01T00:00:00Z,1\n"  # line 2, record 0
        "A,2026-01-01T00:00:01Z,2,9\n"  # line 3: malformed (no record)
        "A,2026-01-01T00:00:02Z,x\n"  # line 4, record 1: bad value
    )
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(
        '{"source":"A","time":"2026-01-01T00:00:03Z","value":1}\n'  # line 1, record 0
        "not json\n"  # line 2: malformed
        "\n"
        '{"source":"A","time":"never","value":2}\n'  # line 4, record 1: bad time
    )
    store = str(tmp_path / "s")
    assert run(capsys, "ingest", str(csv), str(jsonl), "--store", store, "-q")[0] == 0
    dead = reads.read_deadletters(Store(store)).to_pandas()
    got = {
        (Path(o).name, None if pd.isna(r) else int(r), reason, m.split(";")[0].split(":")[0])
        for o, r, reason, m in zip(
            dead["origin"], dead["row"], dead["reason"], dead["message"], strict=True
        )
    }
    assert got == {
        ("m.csv", None, "malformed", "line 3"),
        ("m.csv", 1, "bad_value", "value is not a finite number"),
        ("m.jsonl", None, "malformed", "line 2"),
        (
            "m.jsonl",
            1,
            "bad_time",
            "time 'never' is not a time obsflow reads, or outside its range (1677-09-21 to "
            "2262-04-11)",
        ),
    }
    # The record index is the row pandas gives the file (which skips what it cannot parse).
    assert pd.read_csv(csv, on_bad_lines="skip").iloc[1]["value"] == "x"


def test_the_summary_says_how_records_and_readings_differ(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "station.csv"
    path.write_text(WIDE)
    store = str(tmp_path / "s")
    code, err = run(
        capsys, "ingest", str(path), "--store", store, "--map", "source=station,time=timestamp"
    )
    assert code == 0, err
    assert "7 input = 6 accepted + 1 rejected + 0 duplicates (adds up)" in err
    assert "input counts readings: 4 records read (a wide record holds one per numeric cell)" in err


def test_progress_comes_at_a_steady_interval_and_its_last_line_is_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A paced replay takes at least 5 s of wall time: lines every 2 s, rates, an ETA, and a
    last line holding the counts the summary reports. (The rates and ETAs themselves are
    checked on a fake clock in tests/flows/test_progress.py.)"""
    store = str(tmp_path / "s")
    sim = "sim://?sources=4&channels=t&rate=20&duration=50s&seed=3"
    assert run(capsys, "ingest", sim, "--store", store, "--capture", "p", "-q")[0] == 0
    summary = tmp_path / "summary.json"
    args = ["replay", "--store", store, "--capture", "p", "--speed", "10"]
    code, err = run(capsys, *args, "--summary", str(summary))
    assert code == 0, err
    doc = json.loads(summary.read_text())
    lines = [ln for ln in err.splitlines() if ln.startswith("[replay] ")]
    *steps, last = lines
    assert len(steps) >= 2, err  # pacing holds the replay for 5 s at least: a line per 2 s
    counts = [int(ln.split()[1].replace(",", "")) for ln in steps]
    assert counts == sorted(counts)
    assert counts[-1] <= doc["input"]
    for ln in steps:
        assert re.fullmatch(r"[\d,]+ readings/s", ln.split(" · ")[4]), ln
        assert "% · ETA " in ln
    assert last.startswith(
        f"[replay] {doc['input']:,} input · {doc['accepted']:,} accepted · {doc['rejected']:,} "
        f"rejected · {doc['duplicates']:,} duplicates · all read in "
    )


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--addresses", "h0:2101;h1:2101", "--process-id", "0"], "--addresses needs --run-id"),
        (["--addresses", "h0:2101;h1:2101", "--run-id", "r1"], "needs --process-id"),
        (["--addresses", "h0:2101;h1", "--process-id", "0", "--run-id", "r1"], "is not host:port"),
        (["--addresses", "h0:2101;h1:2101", "--process-id", "2", "--run-id", "r1"], "0..1"),
        (["--addresses", "h0:2101", "--process-id", "0", "--run-id", "r1"], "two or more"),
        (["--addresses", "h0:1;h1:1", "--process-id", "0", "--run-id", "../x"], "run id"),
        (["--process-id", "1"], "are for a cluster (--addresses)"),
        (
            ["--addresses", "h0:1;h1:1", "--process-id", "0", "--run-id", "r", "--processes", "2"],
            "leave out --processes",
        ),
    ],
)
def test_a_mistaken_cluster_option_says_what_to_do_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], says: str
) -> None:
    store = tmp_path / "store"
    code, err = run(capsys, "ingest", "sim://?sources=1&duration=1s", "--store", str(store), *extra)
    assert code == 2
    assert says in err
    assert not store.exists()


@pytest.mark.integration
def test_output_cut_short_by_its_reader_ends_quietly(tmp_path: Path) -> None:
    """``obsflow capture show ... | head -1``: no traceback, the shell's status for SIGPIPE."""
    store = str(tmp_path / "store")
    cli = [sys.executable, "-m", "obsflow.flows.cli.main"]
    subprocess.run([*cli, "demo", "--store", store], check=True, capture_output=True)
    show = [*cli, "capture", "show", "demo", "--store", store, "--limit", "4800"]
    proc = subprocess.Popen(show, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert proc.stdout.readline()  # the reader takes one line and goes away
    proc.stdout.close()
    assert proc.wait(60) == 141
    assert b"Traceback" not in proc.stderr.read()
