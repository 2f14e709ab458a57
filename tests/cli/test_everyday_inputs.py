"""Everyday inputs (issue 31, items 9 and 11): files a new user has at hand — a symlink to a
device, a CSV with one endless line, a stray latin-1 byte, records without a value, epoch
placeholders, an unreadable time, a decimal-comma export — ingested with the command a user
types, in a child process. Every test here failed before its fix (the finding in its
docstring is what happened), but item 9e's, which checks that earlier work holds for .json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from obsflow.connectors.datasets import reads
from obsflow.connectors.storage.store import Store

pytestmark = pytest.mark.integration  # child processes (tests/conftest.py)

OBSFLOW = str(Path(sys.executable).parent / "obsflow")


def obsflow(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OBSFLOW, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ),
    )


def one_line(stderr: str) -> str:
    """The one line a refusal prints (progress lines aside): no traceback."""
    lines = [ln for ln in stderr.strip().splitlines() if not ln.startswith("[")]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


def ingest(data: Path, store: Path, *options: str) -> subprocess.CompletedProcess[str]:
    done = obsflow("ingest", str(data), "--store", str(store), *options)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def captured(store: Path) -> pd.DataFrame:
    frame = reads.read_capture(Store(str(store)), "default").to_pandas()
    return frame.sort_values(["source", "time"]).reset_index(drop=True)


def dead(store: Path) -> list[dict]:
    return reads.read_deadletters(Store(str(store))).to_pylist()


def adds_up(stderr: str, n: int, accepted: int, rejected: int) -> None:
    line = f"{n:,} input = {accepted:,} accepted + {rejected:,} rejected + 0 duplicates (adds up)"
    assert line in stderr, stderr


def test_a_device_or_a_fifo_named_like_an_input_is_refused_in_one_line(tmp_path: Path) -> None:
    """Item 9a: a `.csv` symlink to /dev/zero hung forever (its bytes were hashed, then read,
    without end); a FIFO blocked on open."""
    zero = tmp_path / "zero.csv"
    zero.symlink_to("/dev/zero")
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    for path, kind in ((zero, "character device"), (fifo, "FIFO")):
        done = obsflow("ingest", str(path), "--store", str(tmp_path / "store"), timeout=60)
        assert done.returncode == 2, done.stderr
        line = one_line(done.stderr)
        assert line.startswith(f"obsflow: error: input {str(path)!r} is a {kind}"), line
        assert "a regular file" in line
    assert not (tmp_path / "store" / "captures").exists()


def test_an_overlong_csv_line_is_one_dead_letter_and_the_rest_is_captured(tmp_path: Path) -> None:
    """Item 9b: one 40 MB line refused the whole CSV ("straddling object straddles two block
    boundaries"): nothing was captured."""
    data = tmp_path / "long.csv"
    with data.open("wb") as f:
        f.write(b"source,time,value\n")
        for i in range(5):
            f.write(b"a,2026-01-01T00:00:%02dZ,%d\n" % (i, i))
        f.write(b"a,2026-01-01T00:01:00Z," + b"9" * 40_000_000 + b"\n")  # line 7
        for i in range(5):
            f.write(b"b,2026-01-01T00:00:%02dZ,%d\n" % (i, i))
    store = tmp_path / "store"
    done = ingest(data, store)
    assert done.returncode == 0, done.stderr
    adds_up(done.stderr, 11, 10, 1)
    got = captured(store)
    assert list(got["source"]) == ["a"] * 5 + ["b"] * 5
    assert list(got["value"]) == [0.0, 1.0, 2.0, 3.0, 4.0] * 2
    (letter,) = dead(store)
    assert letter["reason"] == "malformed"
    assert letter["row"] is None
    assert letter["message"].startswith("line 7: longer than the record cap of 1,048,576 bytes")
    assert "--max-record-size" in letter["message"]
    assert letter["raw"].startswith("a,2026-01-01T00:01:00Z,999")
    assert len(letter["raw"]) <= 4096
    # A larger cap reads it (a number too large to be finite: bad_value, not malformed).
    again = ingest(data, tmp_path / "store2", "--max-record-size", "64MiB")
    assert again.returncode == 0, again.stderr
    assert "rejected bad_value: 1" in again.stderr


def test_a_latin1_byte_in_a_utf8_csv_is_one_malformed_dead_letter(tmp_path: Path) -> None:
    """Item 9c: one latin-1 byte (b"\\xe9") refused the whole CSV ("CSV conversion error to
    string: invalid UTF8 data")."""
    data = tmp_path / "notes.csv"
    data.write_bytes(
        b"source,time,value,note\n"
        b"a,2026-01-01T00:00:00Z,1,ok\n"
        b"a,2026-01-01T00:00:01Z,2,caf\xe9\n"  # line 3
        b"\n"
        b"a,2026-01-01T00:00:02Z,3,ok\n"
        b"a,2026-01-01T00:00:03Z,4\n"  # line 6: a field short
    )
    store = tmp_path / "store"
    done = ingest(data, store)
    assert done.returncode == 0, done.stderr
    adds_up(done.stderr, 4, 2, 2)
    assert list(captured(store)["value"]) == [1.0, 3.0]
    letters = sorted(dead(store), key=lambda d: d["message"])
    assert [d["reason"] for d in letters] == ["malformed", "malformed"]
    utf8, short = letters
    assert utf8["message"].startswith("line 3: not UTF-8 (byte 28: unexpected end of data)")
    assert "raw has its bytes escaped" in utf8["message"]
    assert utf8["raw"] == "a,2026-01-01T00:00:01Z,2,caf\\xe9"  # its bytes, escaped
    assert short["message"].startswith("line 6: expected 4 fields, found 3")


def test_a_record_without_a_value_is_missing_field_and_nan_is_a_value(tmp_path: Path) -> None:
    """Item 9d: a record without a value (an empty CSV cell, no key or null in JSON lines, a
    null in Parquet) was captured as NaN; the rule: no value is `missing_field`, a value
    written as NaN is a missing value, captured as NaN."""
    t = [f"2026-01-01T00:00:0{i}Z" for i in range(4)]
    csv = tmp_path / "v.csv"
    csv.write_text(f"source,time,value\na,{t[0]},1\na,{t[1]},\na,{t[2]},NaN\na,{t[3]},  \n")
    jsonl = tmp_path / "v.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps(r)
            for r in (
                {"source": "b", "time": t[0], "value": 1},
                {"source": "b", "time": t[1]},
                {"source": "b", "time": t[2], "value": None},
                {"source": "b", "time": t[3], "value": "NaN"},
            )
        )
        + "\n"
    )
    parquet = tmp_path / "v.parquet"
    pq.write_table(
        pa.table(
            {
                "source": ["c"] * 3,
                "time": t[:3],
                "value": pa.array([1.0, None, float("nan")], pa.float64()),
            }
        ),
        parquet,
    )
    store = tmp_path / "store"
    done = obsflow("ingest", str(csv), str(jsonl), str(parquet), "--store", str(store))
    assert done.returncode == 0, done.stderr
    adds_up(done.stderr, 11, 6, 5)
    assert "rejected missing_field: 5" in done.stderr
    got = captured(store)
    kept = {(s, str(v)) for s, v in zip(got["source"], got["value"], strict=True)}
    assert kept == {("a", "1.0"), ("a", "nan"), ("b", "1.0"), ("b", "nan")} | {
        ("c", "1.0"),
        ("c", "nan"),
    }
    letters = dead(store)
    assert {d["reason"] for d in letters} == {"missing_field"}
    where = sorted((Path(d["origin"]).name, d["row"]) for d in letters)
    assert where == [("v.csv", 1), ("v.csv", 3), ("v.jsonl", 1), ("v.jsonl", 2), ("v.parquet", 1)]
    assert all(d["message"].startswith("value is missing") for d in letters)


def test_a_key_given_twice_in_a_json_file_is_malformed(tmp_path: Path) -> None:
    """Item 9e: a key given twice is malformed in JSON lines (earlier work); a plain .json
    file (read as JSON lines) must refuse it the same way, and keep the others."""
    data = tmp_path / "readings.json"
    data.write_text(
        '{"source":"a","time":"2026-01-01T00:00:00Z","value":1}\n'
        '{"source":"a","time":"2026-01-01T00:00:01Z","value":2,"value":3}\n'
        '{"source":"a","time":"2026-01-01T00:00:02Z","value":4}\n'
    )
    store = tmp_path / "store"
    done = ingest(data, store)
    assert done.returncode == 0, done.stderr
    adds_up(done.stderr, 3, 2, 1)
    assert list(captured(store)["value"]) == [1.0, 4.0]
    (letter,) = dead(store)
    assert letter["reason"] == "malformed"
    assert letter["message"] == "line 2: key 'value' given twice in one object"


def test_auto_time_unit_judges_a_column_as_one_unit(tmp_path: Path) -> None:
    """Item 9f: placeholders 0 and -1 outvoted the real times: the column was read as
    seconds (0 and -1 became 1970) and every millisecond time was rejected."""
    ms = [1_767_225_600_000, 1_767_225_601_000, 1_767_225_602_000]
    times = [0, ms[0], -1, 0, ms[1], 0, ms[2], 0]  # more placeholders than times
    data = tmp_path / "logger.csv"
    rows = [f"a,{t},{i}" for i, t in enumerate(times)]
    data.write_text("source,time,value\n" + "\n".join(rows) + "\n")
    store = tmp_path / "store"
    done = ingest(data, store)
    assert done.returncode == 0, done.stderr
    adds_up(done.stderr, 8, 3, 5)
    assert "epoch-number times read as milliseconds" in done.stderr
    got = captured(store)
    assert list(got["time"]) == [pd.Timestamp(t, unit="ms", tz="UTC") for t in ms]
    letters = dead(store)
    assert [d["reason"] for d in letters] == ["bad_time"] * 5
    assert [d["row"] for d in letters] == [0, 2, 3, 5, 7]
    for letter in letters:
        assert "is 0 or negative: no time to read in milliseconds" in letter["message"]
        assert "--time-unit s" in letter["message"]
    assert "epoch time '-1'" in letters[1]["message"]
    # Said by the user, 0 and -1 are seconds: 1970 (the milliseconds are then out of range,
    # and the later zeros the same reading as the first with other values: conflicts).
    said = ingest(data, tmp_path / "store-s", "--time-unit", "s")
    assert said.returncode == 0, said.stderr
    assert "8 input = 2 accepted + 6 rejected" in said.stderr
    zeros = captured(tmp_path / "store-s")
    assert list(zeros["time"]) == [pd.Timestamp(-1, unit="s", tz="UTC"), pd.Timestamp(0, tz="UTC")]


def test_a_bad_time_says_its_value_and_the_formats_read(tmp_path: Path) -> None:
    """Item 11: a bad time said "time is missing, unparseable or outside the ns range": no
    sample of the value, no word of the formats read, in the dead letter or the summary."""
    data = tmp_path / "t.csv"
    data.write_text(
        "source,time,value\n"
        "a,2026-13-45T00:00:00Z,1\n"
        "a,2026-01-01T00:00:01Z,2\n"
        "a,,3\n"
        "a,yesterday,4\n"
    )
    store = tmp_path / "store"
    done = ingest(data, store)
    assert done.returncode == 0, done.stderr
    adds_up(done.stderr, 4, 1, 3)
    letters = {d["row"]: d["message"] for d in dead(store)}
    assert set(letters) == {0, 2, 3}
    for row, sample in ((0, "'2026-13-45T00:00:00Z'"), (3, "'yesterday'")):
        message = letters[row]
        assert message.startswith(f"time {sample} is not a time obsflow reads"), message
        assert "ISO 8601" in message
        assert "epoch number in s, ms, us or ns (--time-unit)" in message
    assert letters[2].startswith("time is missing")
    # The summary shows a sample with the formats too.
    assert "rejected bad_time: 3" in done.stderr
    assert "e.g. record 0 of t.csv: time '2026-13-45T00:00:00Z' is not a time" in done.stderr


def test_a_decimal_comma_csv_is_read_with_decimal_comma(tmp_path: Path) -> None:
    """Item 11: a decimal-comma CSV (`21,5`) gave bad_value for every record, and the hint
    said nothing of the decimal comma; there was no option to read it."""
    data = tmp_path / "wetter.csv"
    data.write_text(
        "source;time;value\n"
        "a;2026-01-01T00:00:00Z;21,5\n"
        "a;2026-01-01T00:00:01Z;-0,25\n"
        "a;2026-01-01T00:00:02Z;22,0\n"
    )
    store = tmp_path / "store"
    done = ingest(data, store)
    assert done.returncode == 1, done.stderr
    assert "nothing was accepted" in done.stderr
    assert "bad_value (3): value is not a finite number: '21,5'" in done.stderr
    assert "written with a decimal comma (21,5): add --decimal ," in done.stderr
    fixed = ingest(data, store, "--decimal", ",")
    assert fixed.returncode == 0, fixed.stderr
    adds_up(fixed.stderr, 3, 3, 0)
    assert list(captured(store)["value"]) == [21.5, -0.25, 22.0]
    # A decimal comma needs another delimiter than the comma.
    clash = obsflow(
        "ingest", str(data), "--store", str(store), "--decimal", ",", "--delimiter", ","
    )
    assert clash.returncode == 2
    assert "--decimal ," in one_line(clash.stderr)
