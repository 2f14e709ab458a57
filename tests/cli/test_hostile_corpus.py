"""The hostile-input corpus (issue 31): inputs as users' tools make them — pandas, pyarrow, the
csv module, raw bytes — and as they go wrong: truncated and corrupt Parquet, NUL bytes, huge
lines, wrong encodings, NaN and inf, years 1 and 9999, negative seq, 10k sources, deep nesting,
duplicate columns, empty files, non-data files in a glob, /dev/zero.

Each kind writes its input into ``tmp_path`` and knows how many records it holds (counted by
construction, never by obsflow). ``obsflow ingest`` runs on it as a user runs it, bounded by a
timeout (a hang fails), and:

- prints no traceback;
- exits 0 or 1 having run (possibly with rejects): its summary adds up, and its input is the
  kind's records, every one captured, a dead letter with a reason code, or a duplicate;
- or exits 2, a refusal before reading, only for inputs that are no data at all (a file that
  is not what its extension says, /dev/zero, an empty glob, a non-data file among the
  inputs), in exactly one line ``obsflow: error: ...`` naming the input.

A few kinds also check what becomes of particular records (``check``), where the README says.
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from obsflow.connectors.datasets import reads
from obsflow.connectors.formats.schema import READING_SCHEMA
from obsflow.connectors.storage.store import Store

pytestmark = pytest.mark.integration

OBSFLOW = str(Path(sys.executable).parent / "obsflow")
TIMEOUT = 120  # seconds: a run of a tiny input that takes longer hangs
T0 = datetime(2026, 1, 1, tzinfo=UTC)
T0_NS = 1_767_225_600 * 10**9  # T0 in ns since the epoch


@dataclass(frozen=True)
class Outcome:
    """What a run that ran left: its summary, the capture's rows and the dead letters."""

    summary: dict[str, Any]
    captured: pa.Table
    dead: pa.Table

    def reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.dead.column("reason").to_pylist():
            out[r] = out.get(r, 0) + 1
        return out


@dataclass(frozen=True)
class Case:
    """A kind's input: the arguments ``obsflow ingest`` gets, how many records they hold
    (None: no data at all, of which nothing may be captured), whether a refusal before
    reading is right for it, and what else the README says becomes of its records."""

    inputs: list[str]
    records: int | None
    refusable: bool = False
    check: Callable[[Outcome], None] | None = field(default=None)


KINDS: dict[str, Callable[[Path], Case]] = {}


def kind(make: Callable[[Path], Case]) -> Callable[[Path], Case]:
    KINDS[make.__name__] = make
    return make


# -- making inputs ----------------------------------------------------------------------------


def iso(i: int) -> str:
    return (T0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")


def good_rows(n: int, source: str = "a", start: int = 0) -> list[dict[str, Any]]:
    return [{"source": source, "time": iso(start + i), "value": float(i) + 0.5} for i in range(n)]


def frame(n: int, sources: int = 1) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source": [f"s{i % sources:05d}" for i in range(n)],
            "time": pd.date_range(T0, periods=n, freq="s"),
            "value": np.arange(n, dtype=np.float64),
        }
    )


def write_csv(path: Path, rows: list[dict[str, Any]], **fmt: Any) -> Path:
    """Rows as the csv module writes them (its default line end is CRLF)."""
    with path.open("w", newline="", encoding=fmt.pop("encoding", "utf-8")) as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), **fmt)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def raw_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def csv_line(source: bytes, i: int, value: bytes = b"1.5") -> bytes:
    return b",".join([source, iso(i).encode(), value])


HEADER = b"source,time,value"


def table3(**columns: pa.Array) -> pa.Table:
    """Three readings, with ``columns`` in place of (or beside) the usual ones."""
    base: dict[str, pa.Array] = {
        "source": pa.array(["a", "b", "c"]),
        "time": pa.array([T0 + timedelta(seconds=i) for i in range(3)], pa.timestamp("us", "UTC")),
        "value": pa.array([1.0, 2.0, 3.0]),
    }
    base.update(columns)
    return pa.table(base)


def parquet(path: Path, table: pa.Table, **options: Any) -> Path:
    pq.write_table(table, path, **options)
    return path


def single(path: Path, records: int | None, **more: Any) -> Case:
    return Case([str(path)], records, **more)


def shell_glob(pattern: Path) -> list[str]:
    """What bash gives a command for ``pattern``: the sorted matches (dot files left out),
    or the pattern itself when nothing matches."""
    return sorted(glob.glob(str(pattern))) or [str(pattern)]


# -- what the README says of particular records -----------------------------------------------


def at_least(reason: str, n: int) -> Callable[[Outcome], None]:
    def check(out: Outcome) -> None:
        assert out.reasons().get(reason, 0) >= n, out.reasons()

    return check


# -- CSV ----------------------------------------------------------------------------------------


@kind
def csv_empty_file(d: Path) -> Case:
    (d / "empty.csv").write_bytes(b"")
    return single(d / "empty.csv", 0, refusable=True)


@kind
def csv_header_only(d: Path) -> Case:
    return single(raw_lines(d / "header.csv", [HEADER]), 0)


@kind
def csv_blank_lines_only(d: Path) -> Case:
    (d / "blank.csv").write_bytes(b"\n\n\r\n\n")
    return single(d / "blank.csv", 0, refusable=True)


@kind
def csv_nul_in_a_value(d: Path) -> Case:
    lines = [HEADER, csv_line(b"a", 0), csv_line(b"a\x00b", 1), csv_line(b"a", 2, b"1\x005")]
    return single(raw_lines(d / "nul.csv", lines), 3)


@kind
def csv_line_of_nul_bytes(d: Path) -> Case:
    lines = [HEADER, csv_line(b"a", 0), b"\x00" * 100, csv_line(b"a", 1)]
    return single(raw_lines(d / "nul_line.csv", lines), 3)


@kind
def csv_all_nul_bytes(d: Path) -> Case:
    (d / "zeros.csv").write_bytes(b"\x00" * 4096)
    return single(d / "zeros.csv", None, refusable=True)


@kind
def csv_line_of_2_mb(d: Path) -> Case:
    lines = [HEADER, csv_line(b"a", 0), csv_line(b"x" * (2 << 20), 1), csv_line(b"a", 2)]
    return single(raw_lines(d / "huge.csv", lines), 3)


@kind
def csv_line_over_the_read_block(d: Path) -> Case:
    """A line longer than Arrow's CSV block (4 MiB; the 40 MB line of a log dump)."""
    lines = [HEADER, csv_line(b"a", 0), csv_line(b"a", 1, b"9" * (5 << 20)), csv_line(b"a", 2)]
    return single(raw_lines(d / "huge.csv", lines), 3)


@kind
def csv_latin1_byte(d: Path) -> Case:
    lines = [HEADER, csv_line(b"a", 0), csv_line("Zürich".encode("latin-1"), 1), csv_line(b"a", 2)]
    return single(raw_lines(d / "latin1.csv", lines), 3)


@kind
def csv_cp1252_file(d: Path) -> Case:
    """As Excel on Windows saves it: cp1252, CRLF, a degree sign in a channel."""
    rows = [{**r, "channel": "temp_°C", "source": "Zürich"} for r in good_rows(3)]
    pd.DataFrame(rows).to_csv(
        d / "cp1252.csv", index=False, encoding="cp1252", lineterminator="\r\n"
    )
    return single(d / "cp1252.csv", 3)


@kind
def csv_utf16_file(d: Path) -> Case:
    pd.DataFrame(good_rows(3)).to_csv(d / "utf16.csv", index=False, encoding="utf-16")
    return single(d / "utf16.csv", None, refusable=True)  # (refused: "save it as UTF-8")


@kind
def csv_utf8_bom(d: Path) -> Case:
    pd.DataFrame(good_rows(3)).to_csv(d / "bom.csv", index=False, encoding="utf-8-sig")
    return single(d / "bom.csv", 3)


@kind
def csv_crlf_by_the_csv_module(d: Path) -> Case:
    return single(write_csv(d / "crlf.csv", good_rows(3)), 3)


@kind
def csv_nan_and_inf(d: Path) -> Case:
    values = ["NaN", "nan", "inf", "-inf", "Infinity", "1e400", "-1e400", "null"]
    rows = [{"source": "a", "time": iso(i), "value": v} for i, v in enumerate(values)]
    return single(write_csv(d / "nan.csv", rows), len(values))


@kind
def csv_missing_value(d: Path) -> Case:
    """An empty value cell is no value: ``missing_field`` (not a NaN reading)."""
    rows = good_rows(3)
    rows[1]["value"] = ""
    return single(write_csv(d / "missing.csv", rows), 3, check=at_least("missing_field", 1))


@kind
def csv_years_1_and_9999(d: Path) -> Case:
    times = ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", iso(0), "1677-09-21T00:00:00Z"]
    rows = [{"source": "a", "time": t, "value": 1.0} for t in times]
    return single(write_csv(d / "years.csv", rows), 4)


@kind
def csv_negative_seq(d: Path) -> Case:
    seqs = ["-1", str(-(2**63)), str(2**64 - 1), "1.5", "7", "", "-0"]
    rows = [{**r, "seq": s} for r, s in zip(good_rows(len(seqs)), seqs, strict=True)]
    return single(write_csv(d / "seq.csv", rows), len(seqs))


@kind
def csv_epoch_sentinels_beside_ms(d: Path) -> Case:
    """0 and -1 (an instrument's "no time") beside millisecond epochs: the milliseconds are
    the column's unit, and their rows are captured."""
    ms = [T0_NS // 10**6 + 1000 * i for i in range(2)]
    rows = [{"source": "a", "time": t, "value": 1.0} for t in [0, -1, *ms]]

    def check(out: Outcome) -> None:
        got = set(out.captured.column("time").cast(pa.int64()).to_pylist())
        assert {t * 10**6 for t in ms} <= got, (got, out.summary["epoch_units"])

    return single(write_csv(d / "epochs.csv", rows), 4, check=check)


@kind
def csv_decimal_comma(d: Path) -> Case:
    """A European export: semicolons, decimal commas — read without ``--decimal ,``: each a
    ``bad_value`` dead letter whose message names the decimal comma (``--decimal ,`` reads
    them: tests/cli/test_everyday_inputs.py)."""
    rows = [{"source": "a", "time": iso(i), "value": v} for i, v in enumerate(["21,5", "-0,25"])]

    def check(out: Outcome) -> None:
        assert out.reasons() == {"bad_value": 2}, out.reasons()
        assert all("decimal comma" in m for m in out.dead.column("message").to_pylist())

    return single(write_csv(d / "comma.csv", rows, delimiter=";"), 2, check=check)


@kind
def csv_ragged_rows(d: Path) -> Case:
    lines = [HEADER, csv_line(b"a", 0), csv_line(b"a", 1) + b",extra,fields", b"a,only", b""]
    lines[-1] = csv_line(b"a", 3)
    return single(raw_lines(d / "ragged.csv", lines), 4)


@kind
def csv_duplicate_columns(d: Path) -> Case:
    lines = [b"source,time,value,value", *(csv_line(b"a", i) + b",2.5" for i in range(3))]
    return single(raw_lines(d / "dupcols.csv", lines), 3)


@kind
def csv_10k_sources(d: Path) -> Case:
    frame(10_000, sources=10_000).to_csv(d / "sources.csv", index=False)
    return single(d / "sources.csv", 10_000)


@kind
def csv_duplicate_rows(d: Path) -> Case:
    rows = good_rows(2)
    return single(write_csv(d / "dups.csv", rows + rows), 4)


@kind
def csv_odd_ids(d: Path) -> Case:
    sources = ["a\tb", "🌊", "../../etc/passwd", "", " ", "x" * 129, "ok.id:1-2"]
    rows = [{"source": s, "time": iso(i), "value": 1.0} for i, s in enumerate(sources)]
    return single(write_csv(d / "ids.csv", rows), len(sources))


@kind
def csv_time_garbage(d: Path) -> Case:
    times = ["2026-13-45T00:00:00Z", "yesterday", "", "1e400", "NaT", "2026-01-01T25:00:00"]
    rows = [{"source": "a", "time": t, "value": 1.0} for t in times]
    return single(write_csv(d / "times.csv", rows), len(times))


@kind
def csv_gzip_named_csv(d: Path) -> Case:
    (d / "data.csv").write_bytes(gzip.compress(HEADER + b"\n" + csv_line(b"a", 0) + b"\n"))
    return single(d / "data.csv", None, refusable=True)


@kind
def csv_png_named_csv(d: Path) -> Case:
    (d / "plot.csv").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    return single(d / "plot.csv", None, refusable=True)


# -- JSON lines and JSON --------------------------------------------------------------------


@kind
def jsonl_empty_file(d: Path) -> Case:
    (d / "empty.jsonl").write_bytes(b"")
    return single(d / "empty.jsonl", 0, refusable=True)


@kind
def jsonl_blank_lines_between(d: Path) -> Case:
    recs = [json.dumps(r).encode() for r in good_rows(2)]
    return single(raw_lines(d / "blank.jsonl", [b"", recs[0], b"   ", b"\t", recs[1], b""]), 2)


@kind
def jsonl_nul_bytes(d: Path) -> Case:
    lines = [
        json.dumps(good_rows(1)[0]).encode(),
        b'{"source": "a\\u0000b", "time": "%s", "value": 1}' % iso(1).encode(),
        b'{"source": "a\x00b", "time": "%s", "value": 1}' % iso(2).encode(),
        b"\x00" * 64,
    ]
    return single(raw_lines(d / "nul.jsonl", lines), 4)


@kind
def jsonl_line_of_2_mb(d: Path) -> Case:
    """Over the 1 MiB ``--max-record-size``: a ``malformed`` dead letter (README)."""
    big = {**good_rows(1, start=1)[0], "note": "x" * (2 << 20)}
    return single(
        write_jsonl(d / "huge.jsonl", [good_rows(1)[0], big, good_rows(1, start=2)[0]]),
        3,
        check=at_least("malformed", 1),
    )


@kind
def jsonl_latin1_byte(d: Path) -> Case:
    bad = json.dumps({**good_rows(1, start=1)[0], "source": "Zürich"}).encode("latin-1")
    lines = [json.dumps(r).encode() for r in good_rows(2)]
    return single(raw_lines(d / "latin1.jsonl", [lines[0], bad, lines[1]]), 3)


@kind
def jsonl_utf16_file(d: Path) -> Case:
    text = "".join(json.dumps(r) + "\n" for r in good_rows(3))
    (d / "utf16.jsonl").write_bytes(text.encode("utf-16"))
    return single(d / "utf16.jsonl", None, refusable=True)  # (refused: "save it as UTF-8")


@kind
def jsonl_deep_object(d: Path) -> Case:
    deep = '{"a":' * 100_000 + "1" + "}" * 100_000
    line = json.dumps(good_rows(1, start=1)[0])[:-1] + ', "meta": ' + deep + "}"
    recs = [json.dumps(r) for r in good_rows(2)]
    (d / "deep.jsonl").write_text("\n".join([recs[0], line, recs[1]]) + "\n")
    return single(d / "deep.jsonl", 3, check=at_least("malformed", 1))


@kind
def jsonl_deep_array_value(d: Path) -> Case:
    nested = "[" * 50_000 + "]" * 50_000
    line = f'{{"source": "a", "time": "{iso(1)}", "value": {nested}}}'
    (d / "deep.jsonl").write_text(json.dumps(good_rows(1)[0]) + "\n" + line + "\n")
    return single(d / "deep.jsonl", 2)


@kind
def jsonl_duplicate_keys(d: Path) -> Case:
    """A key twice in one object: ``malformed`` (README)."""
    line = f'{{"source": "a", "source": "b", "time": "{iso(1)}", "value": 1}}'
    (d / "dupkeys.jsonl").write_text(json.dumps(good_rows(1)[0]) + "\n" + line + "\n")
    return single(d / "dupkeys.jsonl", 2, check=at_least("malformed", 1))


@kind
def jsonl_nan_inf_tokens(d: Path) -> Case:
    """As Python's json writes them: NaN, Infinity, -Infinity (not JSON)."""
    values = [float("nan"), float("inf"), float("-inf"), "NaN", 1e308]
    recs = [{"source": "a", "time": iso(i), "value": v} for i, v in enumerate(values)]
    return single(write_jsonl(d / "nan.jsonl", recs), len(values))


@kind
def jsonl_years_1_and_9999(d: Path) -> Case:
    times = ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", iso(0), 253402300799999]
    recs = [{"source": "a", "time": t, "value": 1} for t in times]
    return single(write_jsonl(d / "years.jsonl", recs), len(times))


@kind
def jsonl_negative_seq(d: Path) -> Case:
    seqs: list[Any] = [-1, -(2**63), 2**64, 2**70, -0.0, 3, "4", None]
    recs = [{**r, "seq": s} for r, s in zip(good_rows(len(seqs)), seqs, strict=True)]
    return single(write_jsonl(d / "seq.jsonl", recs), len(seqs))


@kind
def jsonl_truncated_last_line(d: Path) -> Case:
    text = "".join(json.dumps(r) + "\n" for r in good_rows(3))
    (d / "cut.jsonl").write_text(text[: -len(json.dumps(good_rows(1)[0])) // 2])
    return single(d / "cut.jsonl", 3)


@kind
def jsonl_wrong_types(d: Path) -> Case:
    values: list[Any] = ["abc", True, [1, 2], {"x": 1}, None, "12.5", 10**400]
    sources: list[Any] = [5, None, ["a"], {"id": "a"}]
    recs = [{"source": "a", "time": iso(i), "value": v} for i, v in enumerate(values)]
    recs += [{"source": s, "time": iso(i), "value": 1} for i, s in enumerate(sources)]
    recs += [{"source": "a", "time": t, "value": 1} for t in [None, True, [1], {"t": 1}]]
    return single(write_jsonl(d / "types.jsonl", recs), len(recs))


@kind
def jsonl_lines_that_are_no_objects(d: Path) -> Case:
    lines = [b"42", b'"text"', b"null", b"true", b"{", b"}", b"not json"]
    return single(raw_lines(d / "scalars.jsonl", [json.dumps(good_rows(1)[0]).encode(), *lines]), 8)


@kind
def jsonl_10k_sources(d: Path) -> Case:
    frame(10_000, sources=10_000).to_json(
        d / "sources.jsonl", orient="records", lines=True, date_format="iso"
    )
    return single(d / "sources.jsonl", 10_000)


@kind
def json_records_array(d: Path) -> Case:
    """A ``.json`` file as pandas writes records: one JSON array on one line."""
    frame(3).to_json(d / "records.json", orient="records", date_format="iso")
    return single(d / "records.json", 3)


@kind
def json_pretty_array(d: Path) -> Case:
    """A ``.json`` file as ``json.dump(rows, f, indent=2)`` writes it."""
    (d / "pretty.json").write_text(json.dumps(good_rows(3), indent=2))
    return single(d / "pretty.json", 3)


# -- Parquet ------------------------------------------------------------------------------------


@kind
def parquet_empty_file(d: Path) -> Case:
    (d / "empty.parquet").write_bytes(b"")
    return single(d / "empty.parquet", None, refusable=True)


@kind
def parquet_truncated(d: Path) -> Case:
    """Half a file (a copy cut short): no footer, so no Parquet at all."""
    frame(1000).to_parquet(d / "full.parquet")
    data = (d / "full.parquet").read_bytes()
    (d / "cut.parquet").write_bytes(data[: len(data) // 2])
    return single(d / "cut.parquet", None, refusable=True)


@kind
def parquet_corrupt_pages(d: Path) -> Case:
    """Its footer intact, its pages garbage: the footer counts the records."""
    frame(100).to_parquet(d / "good.parquet")
    data = bytearray((d / "good.parquet").read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    for i in range(4, len(data) - footer):
        data[i] ^= 0x5A
    (d / "bad.parquet").write_bytes(bytes(data))
    return single(d / "bad.parquet", 100)


@kind
def parquet_that_is_csv_text(d: Path) -> Case:
    frame(3).to_csv(d / "data.parquet", index=False)
    return single(d / "data.parquet", None, refusable=True)


@kind
def parquet_that_is_arrow_ipc(d: Path) -> Case:
    """``df.to_feather("x.parquet")``: Arrow IPC under a Parquet name."""
    frame(3).to_feather(d / "data.parquet")
    return single(d / "data.parquet", None, refusable=True)


@kind
def parquet_zero_rows(d: Path) -> Case:
    frame(0).to_parquet(d / "none.parquet")
    return single(d / "none.parquet", 0)


@kind
def parquet_large_string(d: Path) -> Case:
    table = table3(source=pa.array(["a", "b", "c"], pa.large_string()))
    table = table.append_column("channel", pa.array(["t", "t", "t"], pa.large_string()))
    return single(parquet(d / "large.parquet", table), 3)


@kind
def parquet_string_view(d: Path) -> Case:
    table = table3(
        source=pa.array(["a", "b", "c"], pa.string_view()),
        time=pa.array([iso(i) for i in range(3)], pa.string_view()),
    )
    return single(parquet(d / "view.parquet", table, store_schema=True), 3)


@kind
def parquet_pandas_categorical(d: Path) -> Case:
    df = frame(30, sources=3)
    df["source"] = df["source"].astype("category")
    df.to_parquet(d / "cat.parquet")
    return single(d / "cat.parquet", 30)


@kind
def parquet_nan_inf_null(d: Path) -> Case:
    values = pa.array([np.nan, np.inf, -np.inf, None, 1.0], pa.float64())
    times = pa.array([T0 + timedelta(seconds=i) for i in range(5)], pa.timestamp("ns", "UTC"))
    table = pa.table({"source": ["a"] * 5, "time": times, "value": values})
    return single(parquet(d / "nan.parquet", table), 5)


@kind
def parquet_years_1_and_9999(d: Path) -> Case:
    times = [datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), T0]
    table = table3(time=pa.array(times, pa.timestamp("us", "UTC")))
    return single(parquet(d / "years.parquet", table), 3)


@kind
def parquet_negative_seq(d: Path) -> Case:
    table = table3(seq=pa.array([-1, -(2**63), 5], pa.int64()))
    return single(parquet(d / "seq.parquet", table), 3)


@kind
def parquet_uint64_seq(d: Path) -> Case:
    table = table3(seq=pa.array([2**64 - 1, 2**63, 1], pa.uint64()))
    return single(parquet(d / "useq.parquet", table), 3)


@kind
def parquet_epoch_sentinels_beside_ns(d: Path) -> Case:
    """0 and -1 beside nanosecond epochs in one int64 column: the nanoseconds are captured."""
    ns = [T0_NS, T0_NS + 10**9]
    table = pa.table(
        {
            "source": ["a", "b", "c", "d"],
            "time": pa.array([0, -1, *ns], pa.int64()),
            "value": [1.0, 2.0, 3.0, 4.0],
        }
    )

    def check(out: Outcome) -> None:
        got = set(out.captured.column("time").cast(pa.int64()).to_pylist())
        assert set(ns) <= got, (got, out.summary["epoch_units"])

    return single(parquet(d / "epochs.parquet", table), 4, check=check)


@kind
def parquet_10k_sources(d: Path) -> Case:
    frame(10_000, sources=10_000).to_parquet(d / "sources.parquet")
    return single(d / "sources.parquet", 10_000)


@kind
def parquet_deep_nesting(d: Path) -> Case:
    value: pa.Array = pa.array([1, 2, 3], pa.int64())
    for _ in range(60):
        value = pa.StructArray.from_arrays([value], names=["a"])
    return single(parquet(d / "deep.parquet", table3(meta=value)), 3)


@kind
def parquet_duplicate_columns(d: Path) -> Case:
    base = table3()
    table = base.append_column("value", pa.array([9.0, 9.0, 9.0]))
    return single(parquet(d / "dupcols.parquet", table), 3)


@kind
def parquet_value_is_a_struct(d: Path) -> Case:
    value = pa.StructArray.from_arrays([pa.array([1.0, 2.0, 3.0])], names=["x"])
    return single(parquet(d / "struct.parquet", table3(value=value)), 3)


@kind
def parquet_binary_ids(d: Path) -> Case:
    table = table3(source=pa.array([b"\xff\xfe", b"a", b"a\x00"], pa.binary()))
    return single(parquet(d / "binary.parquet", table), 3)


@kind
def parquet_a_row_group_per_row(d: Path) -> Case:
    frame(500, sources=7).to_parquet(d / "groups.parquet", row_group_size=1)
    return single(d / "groups.parquet", 500)


@kind
def parquet_null_typed_columns(d: Path) -> Case:
    table = table3(source=pa.nulls(3), value=pa.nulls(3))
    return single(parquet(d / "nulls.parquet", table), 3)


# -- Arrow IPC (no file input format: a refusal naming the formats) ---------------------------


@kind
def arrow_ipc_file(d: Path) -> Case:
    table = table3(source=pa.array(["a", "b", "c"], pa.string_view()))
    with pa.ipc.new_file(str(d / "data.arrow"), table.schema) as writer:
        writer.write_table(table)
    return single(d / "data.arrow", None, refusable=True)


@kind
def arrow_feather_file(d: Path) -> Case:
    feather.write_feather(table3(), str(d / "data.feather"))
    return single(d / "data.feather", None, refusable=True)


# -- globs (expanded as bash does) ------------------------------------------------------------


@kind
def glob_matching_nothing(d: Path) -> Case:
    (d / "in").mkdir()
    return Case(shell_glob(d / "in" / "*.parquet"), None, refusable=True)


@kind
def glob_of_every_format(d: Path) -> Case:
    (d / "in").mkdir()
    write_csv(d / "in" / "a.csv", good_rows(3, "a"))
    write_jsonl(d / "in" / "b.jsonl", good_rows(3, "b"))
    frame(3, 3).to_parquet(d / "in" / "c.parquet")
    write_jsonl(d / "in" / "d.ndjson", good_rows(2, "d"))
    return Case(shell_glob(d / "in" / "*"), 11)


@kind
def glob_with_non_data_files(d: Path) -> Case:
    """``obsflow ingest in/*`` in a folder that also holds notes, a plot and Spark's marker."""
    (d / "in").mkdir()
    write_csv(d / "in" / "a.csv", good_rows(3))
    (d / "in" / "README.txt").write_text("readings from the roof\n")
    (d / "in" / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (d / "in" / "_SUCCESS").write_bytes(b"")
    return Case(shell_glob(d / "in" / "*"), None, refusable=True)


@kind
def glob_with_empty_files(d: Path) -> Case:
    (d / "in").mkdir()
    (d / "in" / "a.csv").write_bytes(b"")
    raw_lines(d / "in" / "b.csv", [HEADER])
    write_csv(d / "in" / "c.csv", good_rows(3))
    (d / "in" / "d.csv").write_bytes(b"\n")
    return Case(shell_glob(d / "in" / "*.csv"), 3)


@kind
def glob_with_a_folder(d: Path) -> Case:
    """A folder named like data (``more.csv/``) among the matches."""
    (d / "in").mkdir()
    write_csv(d / "in" / "a.csv", good_rows(3))
    (d / "in" / "more.csv").mkdir()
    return Case(shell_glob(d / "in" / "*.csv"), None, refusable=True)


@kind
def glob_of_50_files(d: Path) -> Case:
    (d / "in").mkdir()
    for i in range(50):
        write_csv(d / "in" / f"hour{i:02d}.csv", good_rows(2, f"s{i}", start=2 * i))
    return Case(shell_glob(d / "in" / "*.csv"), 100)


@kind
def glob_with_a_truncated_parquet(d: Path) -> Case:
    """A glob whose last file a copy cut short (no footer: no Parquet at all)."""
    (d / "in").mkdir()
    frame(50).to_parquet(d / "in" / "a.parquet")
    data = (d / "in" / "a.parquet").read_bytes()
    (d / "in" / "b.parquet").write_bytes(data[: len(data) // 3])
    return Case(shell_glob(d / "in" / "*.parquet"), None, refusable=True)


# -- devices ------------------------------------------------------------------------------------


def device(d: Path, name: str, target: str, records: int | None) -> Case:
    os.symlink(target, d / name)
    return single(d / name, records, refusable=True)


@kind
def dev_zero_as_csv(d: Path) -> Case:
    return device(d, "zero.csv", "/dev/zero", None)


@kind
def dev_zero_as_jsonl(d: Path) -> Case:
    return device(d, "zero.jsonl", "/dev/zero", None)


@kind
def dev_zero_as_parquet(d: Path) -> Case:
    return device(d, "zero.parquet", "/dev/zero", None)


@kind
def dev_zero_itself(d: Path) -> Case:
    return Case(["/dev/zero"], None, refusable=True)


@kind
def dev_null_as_csv(d: Path) -> Case:
    return device(d, "null.csv", "/dev/null", 0)


# -- the test -----------------------------------------------------------------------------------


def test_the_corpus_has_every_kind_the_issue_asks_for() -> None:
    assert len(KINDS) >= 46, len(KINDS)


@pytest.mark.parametrize("name", list(KINDS))
def test_hostile_input(name: str, tmp_path: Path) -> None:
    (tmp_path / "input").mkdir()
    case = KINDS[name](tmp_path / "input")
    store, summary = tmp_path / "store", tmp_path / "summary.json"
    run = subprocess.run(
        [OBSFLOW, "ingest", *case.inputs, "--store", str(store), "--summary", str(summary)],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=TIMEOUT,  # a hang fails the test
        stdin=subprocess.DEVNULL,
    )
    said = f"exit {run.returncode}\nstdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert "Traceback" not in run.stdout + run.stderr, said
    assert run.returncode in (0, 1, 2), said
    if run.returncode == 2:
        assert case.refusable, f"refused data: {said}"
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, said
        assert lines[0].startswith("obsflow: error: "), said
        assert any(Path(i).name in lines[0] for i in case.inputs), f"names no input: {said}"
        assert not store.joinpath("captures").exists() or not any(
            store.joinpath("captures").iterdir()
        ), said
        return
    assert summary.exists(), f"the run did not finish (no summary): {said}"
    doc = json.loads(summary.read_text())
    if doc["commit"] is None:  # (a run that accepted nothing into a new capture makes none)
        assert doc["accepted"] == 0, said
        assert not store.joinpath("captures", doc["capture"]).exists(), said
        captured = READING_SCHEMA.empty_table()
    else:
        captured = reads.read_capture(Store(str(store)), doc["capture"])
    outcome = Outcome(doc, captured, reads.read_deadletters(Store(str(store))))
    counts = {k: doc[k] for k in ("input", "accepted", "rejected", "duplicates")}
    assert doc["input"] == doc["accepted"] + doc["rejected"] + doc["duplicates"], counts
    assert outcome.captured.num_rows == doc["accepted"], (counts, outcome.captured.num_rows)
    assert outcome.dead.num_rows == doc["rejected"], (counts, outcome.reasons())
    for reason in outcome.dead.column("reason").to_pylist():
        assert reason, outcome.dead.to_pylist()[:3]
        assert reason in reads.REASONS, outcome.reasons()
    if case.records is None:  # no data: nothing of it may be captured
        assert doc["accepted"] == 0, (counts, outcome.captured.slice(0, 3).to_pylist())
    else:
        assert doc["input"] == case.records, (counts, outcome.reasons(), said)
    if case.check is not None:
        case.check(outcome)
