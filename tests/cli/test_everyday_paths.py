"""Everyday paths, second round (issue 31): findings from trying obsflow as a new user would,
each reproduced with the command a user types and asserted as it behaves now. Every test here
failed before its fix (the finding in its docstring is what happened)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from obsflow.connectors.datasets import reads
from obsflow.connectors.storage import commits
from obsflow.connectors.storage.store import Store
from tests.flows.test_live import wait_for
from tests.test_serve import serving

pytestmark = pytest.mark.integration

OBSFLOW = str(Path(sys.executable).parent / "obsflow")


def obsflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OBSFLOW, *args],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def one_line(stderr: str) -> str:
    """The one line a refusal prints (progress lines aside): no traceback."""
    lines = [ln for ln in stderr.strip().splitlines() if not ln.startswith("[")]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


def test_ctrl_c_in_a_file_ingest_says_one_line_and_commits_nothing(tmp_path: Path) -> None:
    """Item 7: Ctrl-C in a file ingest printed a 30-line traceback (Bytewax wraps the
    KeyboardInterrupt)."""
    big = tmp_path / "big.csv"
    made = obsflow("simulate", str(big), "--sources", "20", "--rate", "500", "--duration", "100s")
    assert made.returncode == 0, made.stderr
    rows = sum(1 for _ in big.open()) - 1
    store = tmp_path / "store"
    proc = subprocess.Popen(
        [OBSFLOW, "ingest", str(big), "--store", str(store)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # (a child of a non-interactive shell would ignore SIGINT: take the default back)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    parts = store / "captures" / "default"
    wait_for(lambda: any(parts.glob("part-*/*.parquet")), 120, "nothing was written")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert one_line(err).startswith("obsflow: interrupted: ")
    assert commits.head(Store(str(store)), "default") == 0  # nothing committed
    again = obsflow("ingest", str(big), "--store", str(store), "-q")
    assert again.returncode == 0, again.stderr
    assert reads.read_capture(Store(str(store)), "default").num_rows == rows


def test_a_corrupt_parquet_row_group_is_dead_letters_and_the_rest_is_read(tmp_path: Path) -> None:
    """Item 8: a Parquet file corrupt inside (its footer intact) raised an uncaught OSError;
    then it failed the whole run. Now the records of a row group that cannot be read are
    ``malformed`` dead letters (the footer counts them) and the other row groups are read."""
    good = tmp_path / "good.parquet"
    frame = pd.DataFrame(
        {
            "source": ["a"] * 100,
            "time": pd.date_range("2026-01-01", periods=100, freq="s", tz="UTC"),
            "value": np.arange(100.0),
        }
    )
    frame.to_parquet(good, row_group_size=40)  # row groups of 40, 40 and 20 records
    data = bytearray(good.read_bytes())
    group = pq.ParquetFile(good).metadata.row_group(1)
    for c in range(group.num_columns):  # the pages of the second row group
        chunk = group.column(c)
        first = chunk.dictionary_page_offset or chunk.data_page_offset
        for i in range(first + 8, first + chunk.total_compressed_size):
            data[i] ^= 0x5A
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(data))
    store = tmp_path / "store"
    done = obsflow("ingest", str(bad), "--store", str(store))
    assert "Traceback" not in done.stderr
    assert done.returncode == 0, done.stderr
    assert "100 input = 60 accepted + 40 rejected + 0 duplicates" in done.stderr
    assert "rejected malformed: 40" in done.stderr
    got = reads.read_capture(Store(str(store)), "default").column("value").to_pylist()
    assert got == [*range(40), *range(80, 100)]
    dead = reads.read_deadletters(Store(str(store)))
    assert (
        dead.column("message")
        .to_pylist()[0]
        .startswith("record 40 (0-based): row group 1 cannot be read")
    )


def test_a_missing_bucket_is_said_once_by_every_command(s3_env: str, tmp_path: Path) -> None:
    """Item 8: `--store s3://nobucket/x` gave S3's XML (ingest) or "no captures" (capture
    list)."""
    good = tmp_path / "good.csv"
    good.write_text("source,time,value\na,2026-01-01T00:00:00Z,1\n")
    store = f"s3://{s3_env}-missing/x"
    for args in (
        ["ingest", str(good)],
        ["capture", "list"],
        ["views", "show", "v"],
        ["deadletters", "list"],
    ):
        done = obsflow(*args, "--store", store)
        assert done.returncode == 2, (args, done.stderr)
        assert one_line(done.stderr).startswith(f"obsflow: error: no bucket '{s3_env}-missing' ")
    ok = obsflow("capture", "list", "--store", f"s3://{s3_env}/x")  # the bucket that exists
    assert ok.returncode == 0, ok.stderr


def test_a_time_outside_what_obsflow_holds_is_a_400_and_a_one_line_error(tmp_path: Path) -> None:
    """Item 8: `?from=0001-01-01` over HTTP was a 500 (OverflowError); the CLI alike."""
    data = tmp_path / "in.csv"
    data.write_text("source,time,value\na,2026-01-01T00:00:00Z,1\n")
    store = tmp_path / "store"
    assert obsflow("ingest", str(data), "--store", str(store), "-q").returncode == 0
    for when in ("0001-01-01", "9999-12-31"):
        done = obsflow("views", "show", "default_1m", "--store", str(store), "--from", when)
        assert done.returncode == 2
        assert "outside the times obsflow holds" in one_line(done.stderr)
    with serving(store) as base:
        for when in ("0001-01-01", "9999-12-31"):
            got = httpx.get(f"{base}/api/views/default_1m", params={"from": when}, timeout=30)
            assert got.status_code == 400, got.text
            assert "outside the times obsflow holds" in got.text
        assert httpx.get(f"{base}/api/views/default_1m", timeout=30).status_code == 200


def test_a_file_overlapping_the_capture_says_duplicates_not_nothing_accepted(
    tmp_path: Path,
) -> None:
    """Item 6: a file overlapping what is captured (all duplicates but one conflict) said
    "nothing was accepted: all 1 records were rejected" and exited 1."""
    times = pd.date_range("2026-01-01", periods=500, freq="s", tz="UTC")
    first = pd.DataFrame({"source": "a", "time": times, "value": np.arange(500.0)})
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    first.to_csv(one, index=False)
    overlap = first.iloc[100:].copy()
    overlap.loc[overlap.index[0], "value"] = -1.0  # the same reading, other content
    overlap.to_csv(two, index=False)
    store = str(tmp_path / "store")
    assert obsflow("ingest", str(one), "--store", store, "-q").returncode == 0
    done = obsflow("ingest", str(two), "--store", store)
    assert done.returncode == 0, done.stderr
    assert "nothing was accepted" not in done.stderr
    assert "400 input = 0 accepted + 1 rejected + 399 duplicates" in done.stderr
    assert "rejected conflict: 1" in done.stderr


TEXT_KINDS = {
    "string": lambda a: a,
    "large_string": lambda a: a.cast(pa.large_string()),  # what pandas 3 writes
    "string_view": lambda a: a.cast(pa.string_view()),  # what pyarrow writes on request
    "dictionary": lambda a: a.cast(pa.large_string()).dictionary_encode(),
}


@pytest.mark.parametrize("kind", sorted(TEXT_KINDS))
def test_every_text_column_is_text_in_each_arrow_kind(kind: str, tmp_path: Path) -> None:
    """Item 2: a Parquet file written by pandas 3 (text as large_string) with a trace_id column
    had every traced record rejected "trace_id is not text". Every column that takes text —
    source, channel, time as ISO text, value as text, trace id — in each of the four
    kinds Arrow has for text."""
    n = 300
    times = pd.date_range("2026-01-01", periods=n, freq="s", tz="UTC")
    frame = pd.DataFrame(
        {
            "source": [f"s{i % 3}" for i in range(n)],
            "channel": ["temp", "rh"] * (n // 2),
            "time": times.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "value": [f"{i / 4}" for i in range(n)],
            "trace_id": [f"t{i}" if i % 7 == 0 else None for i in range(n)],
        }
    )
    make = TEXT_KINDS[kind]
    table = pa.table({c: make(pa.array(frame[c], pa.string())) for c in frame.columns})
    data = tmp_path / "in.parquet"
    pq.write_table(table, data)
    stored = pq.read_schema(data).field("trace_id").type  # (the kind the file keeps)
    assert pa.types.is_dictionary(stored) if kind == "dictionary" else stored == table[0].type
    store = tmp_path / "store"
    done = obsflow("ingest", str(data), "--store", str(store), "-q")
    assert done.returncode == 0, done.stderr
    columns = ["source", "channel", "time", "value", "trace_id"]
    got = reads.read_capture(Store(str(store)), "default", columns=columns).to_pandas()
    assert len(got) == n
    assert reads.read_deadletters(Store(str(store))).num_rows == 0
    got = got.sort_values("time").reset_index(drop=True)
    assert list(got["source"]) == list(frame["source"])
    assert list(got["channel"]) == list(frame["channel"])
    assert list(got["value"]) == [i / 4 for i in range(n)]
    assert list(got["trace_id"].where(got["trace_id"].notna(), None)) == list(frame["trace_id"])


@pytest.mark.parametrize("unit", ["s", "auto"])
def test_epoch_seconds_with_a_decimal_point_are_exact(unit: str, tmp_path: Path) -> None:
    """Item 3: epoch seconds with a decimal point in CSV (``1754006400.5``, and ``….0`` as pandas
    writes whole floats) were rejected even with ``--time-unit s``; float epochs lost precision
    (``1754006400.25`` became ``…00.249999872``: seconds x 1e9 in float64)."""
    seconds = [1754006400.0, 1754006400.5, 1754006400.25, 1754006401.125, 1754006402.0]
    frame = pd.DataFrame({"source": "a", "time": seconds, "value": range(len(seconds))})
    text, floats = tmp_path / "epochs.csv", tmp_path / "epochs.parquet"
    frame.to_csv(text, index=False)  # pandas writes 1754006400.0
    assert "1754006400.0," in text.read_text()
    frame.to_parquet(floats)  # float64 seconds
    want = [round(s * 4) * 250_000_000 for s in seconds]  # (quarter seconds: exact)
    want[3] = 1754006401_125_000_000
    for data in (text, floats):
        store = tmp_path / f"store-{data.suffix[1:]}"
        done = obsflow("ingest", str(data), "--store", str(store), "--time-unit", unit, "-q")
        assert done.returncode == 0, done.stderr
        got = reads.read_capture(Store(str(store)), "default", columns=["time", "value"])
        assert got.column("time").cast(pa.int64()).to_pylist() == sorted(want), data


def test_an_error_obsflow_did_not_expect_is_one_line_and_a_file_to_report(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The corpus found a uint64 ``seq`` of 2**64-1 raising from deep in pyarrow: a bug,
    printed as a 40-line traceback. A bug is now one line naming it, and a file to report."""
    from obsflow.flows.cli.main import internal_error

    try:
        raise ValueError("Integer value 18446744073709551615 not in range")
    except ValueError as exc:
        code = internal_error(exc)
    assert code == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("obsflow: internal error: ValueError: Integer value 1844")
    report = Path(line.rsplit(" ", 1)[1])
    assert "Traceback" in report.read_text()
    assert "raise ValueError" in report.read_text()
    report.unlink()
