"""A corpus of hostile and broken records mixed into good input: each one is accounted for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from obsflow.connectors.formats.jsonl_files import RAW_BYTES, raw_bytes
from obsflow.flows.cli.main import main
from tests.delta import table_frame

GOOD_CSV = [f"good{i},2024-01-01T00:00:{i:02d}Z,{i}.5,temp,{i},ok-csv-{i}" for i in range(10)]
# (line, expected reason); every line names itself in its note column (or its text).
BAD_CSV = [
    ("../etc,2024-01-01T00:01:00Z,1,temp,1,b01", "bad_id"),
    ("a/b,2024-01-01T00:01:00Z,1,temp,1,b02", "bad_id"),
    ("s3?versionId=1,2024-01-01T00:01:00Z,1,temp,1,b03", "bad_id"),
    (",2024-01-01T00:01:00Z,1,temp,1,b04", "bad_id"),
    ("x" * 129 + ",2024-01-01T00:01:00Z,1,temp,1,b05", "bad_id"),
    ("sénsor,2024-01-01T00:01:00Z,1,temp,1,b06", "bad_id"),
    ("s1,2024-01-01T00:01:00Z,1,te mp,1,b07", "bad_id"),
    ("s1,yesterday,1,temp,1,b08", "bad_time"),
    ("s1,,1,temp,1,b09", "bad_time"),
    ("s1,99999-01-01,1,temp,1,b10", "bad_time"),
    ("s1,99999999999999999999,1,temp,1,b11", "bad_time"),
    ("s1,2024-01-01T00:01:00Z,abc,temp,1,b12", "bad_value"),
    ("s1,2024-01-01T00:01:01Z,inf,temp,1,b13", "bad_value"),
    ("s1,2024-01-01T00:01:02Z,-inf,temp,1,b14", "bad_value"),
    ("s1,2024-01-01T00:01:03Z,1e999,temp,1,b15", "bad_value"),
    ("s1,2024-01-01T00:01:04Z,1,temp,-1,b16", "bad_seq"),
    ("s1,2024-01-01T00:01:05Z,1,temp,1.5,b17", "bad_seq"),
    ("s1,2024-01-01T00:01:06Z,1,temp,1,b18,extra", "malformed"),
    ("s1,2024-01-01T00:01:07Z,b19", "malformed"),
]
GOOD_JSONL = [
    json.dumps(
        {"source": "j", "time": 1_700_000_000 + i, "value": i, "seq": i, "note": f"ok-json-{i}"}
    )
    for i in range(5)
]
BAD_JSONL = [
    ("this is not json b20", "malformed"),
    ('[1, 2, "b21"]', "malformed"),
    (
        json.dumps({"note": "b22", "source": "j", "time": 1, "value": "x" * (2 << 20)}),
        "malformed",
    ),  # a line over 1 MiB (its raw form is cut to 4 KiB: the note comes first)
    (
        json.dumps(
            {"source": "j", "time": 1_700_000_100, "value": {"a": 1}, "seq": 50, "note": "b23"}
        ),
        "bad_value",
    ),
    (json.dumps({"source": "j", "time": True, "value": 1, "seq": 51, "note": "b24"}), "bad_time"),
    (
        json.dumps({"source": "j", "time": 1_700_000_000, "value": 99, "seq": 0, "note": "b25"}),
        "conflict",
    ),  # seq 0 of source j again, other content
]
DUPLICATE_JSONL = GOOD_JSONL[1]  # the same reading again: a duplicate, not a dead letter


def write_inputs(tmp: Path) -> list[Path]:
    csv = tmp / "mixed.csv"
    lines = GOOD_CSV[:5] + [line for line, _ in BAD_CSV] + GOOD_CSV[5:]
    csv.write_text("source,time,value,channel,seq,note\n" + "\n".join(lines) + "\n")
    jsonl = tmp / "mixed.jsonl"
    jsonl.write_text(
        "\n".join(GOOD_JSONL + [line for line, _ in BAD_JSONL] + [DUPLICATE_JSONL]) + "\n"
    )
    frame = np.arange(6, dtype="<u2").tobytes()
    parquet = tmp / "payloads.parquet"
    pq.write_table(
        pa.table(
            {
                "source": ["p", "p", "p"],
                "time": [1, 2, 3],
                "value": [None, None, None],
                "note": ["ok-payload", "b26", "b27"],
                "payload": pa.array([frame, frame, frame], pa.binary()),
                "payload_dtype": ["uint16", "object", "uint16"],
                "payload_shape": pa.array([[2, 3], [2, 3], [2**40, 2**40]], pa.list_(pa.int64())),
            }
        ),
        parquet,
    )
    dupcols = tmp / "dupcols.csv"  # a column twice: the file's rows cannot be read safely
    dupcols.write_text("source,time,value,value\ns,1,1,2\ns,2,3,4\n")
    return [csv, jsonl, parquet, dupcols]


EXPECTED = {
    **{f"b{i:02d}": r for i, (_, r) in enumerate(BAD_CSV, 1)},
    **{f"b{i}": r for i, (_, r) in enumerate(BAD_JSONL, 20)},
    "b26": "bad_payload",
    "b27": "oversize",
}


def test_every_bad_record_is_a_dead_letter_with_its_reason(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    store = tmp_path / "store"
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    summary = tmp_path / "summary.json"
    assert (
        main(["ingest", *map(str, inputs), "--store", str(store), "--summary", str(summary), "-q"])
        == 0
    )
    s = json.loads(summary.read_text())
    assert len(EXPECTED) >= 27
    assert set(EXPECTED.values()) == {
        "bad_id",
        "bad_time",
        "bad_value",
        "bad_seq",
        "malformed",
        "conflict",
        "bad_payload",
        "oversize",
    }
    # Every record is accounted for: 10 + 19 CSV lines, 12 JSONL lines, 3 Parquet rows, 2 rows
    # of the file with a duplicate column.
    assert s["input"] == 10 + len(BAD_CSV) + len(GOOD_JSONL) + len(BAD_JSONL) + 1 + 3 + 2
    assert s["input"] == s["accepted"] + s["rejected"] + s["duplicates"]
    assert s["duplicates"] == 1
    assert s["accepted"] == 10 + 5 + 1
    dead = table_frame(store / "deadletter")
    assert len(dead) == s["rejected"] == len(EXPECTED) + 2
    found = {}
    for reason, raw, origin, row in zip(
        dead["reason"], dead["raw"], dead["origin"], dead["row"], strict=True
    ):
        labels = [k for k in EXPECTED if k in raw]
        # Payload and conflict rejects happen after parsing: their raw form is the reading.
        if origin == str(inputs[2]):
            labels = [{1: "b26", 2: "b27"}[row]]
        if reason == "conflict" and json.loads(raw)["value"] == 99.0:
            labels = ["b25"]
        if reason == "bad_schema":
            assert "dupcols" not in raw  # the raw form is the row, its origin names the file
            continue
        assert len(labels) == 1, raw[:200]
        found[labels[0]] = reason
    assert found == EXPECTED
    assert (dead.loc[dead["reason"] == "bad_schema", "origin"] == str(inputs[3])).all()
    assert s["rejected_by_reason"]["bad_schema"] == 2
    # Good records are all in the capture.
    cap = table_frame(store / "captures" / "default")
    assert sorted(cap["source"].unique()) == sorted({f"good{i}" for i in range(10)} | {"j", "p"})
    # Nothing was written outside the store.
    after = {p for p in tmp_path.rglob("*") if p.is_file()}
    outside = {p for p in after - before if store not in p.parents and p != summary}
    assert outside == set()


# -- poison lines through the command (issue 30) -------------------------------------------------

OBSFLOW = str(Path(sys.executable).parent / "obsflow")
T_LINE = 1_700_000_000


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


POISON_LINES: dict[str, tuple[bytes, str]] = {
    # name: (line, what its dead letter's message says)
    "deep": (b'{"source":"d","time":1,"value":' + deep(3_000) + b"}", "nested too deeply"),
    "deep_for_arrow": (b'{"source":"d","value":' + deep(100_000) + b"}", "nested too deeply"),
    "not_utf8": (b'{"source":"s\xff\xfe","time":1,"value":2}', "not UTF-8"),
    "huge": (
        b'{"source":"h","time":1,"value":1,"note":"' + b"x" * (40 << 20) + b'"}',
        "longer than the record cap of 1,048,576 bytes (--max-record-size)",
    ),
    "key_twice": (b'{"source":"k","time":1,"value":1,"value":2}', "key 'value' given twice"),
    "lone_surrogate": (b'{"source":"\\udc00","time":1,"value":1}', "lone surrogate"),
}


def good_line(i: int) -> bytes:
    return json.dumps({"source": f"g{i % 7}", "time": T_LINE + i, "value": i + 0.5}).encode()


def ingest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OBSFLOW, "ingest", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_poison_lines_are_malformed_dead_letters_and_every_good_line_is_captured(
    tmp_path: Path,
) -> None:
    """Each poison line between 19 good ones, through ``obsflow ingest`` in a child process:
    the run goes on (exit 0), each poison a malformed dead letter naming its line and why, with
    its bytes (4 KiB of them at most), every good line captured, and the counts add up."""
    path = tmp_path / "poison.jsonl"
    where: dict[str, int] = {}  # poison -> its line number
    lines: list[bytes] = []
    for k, (name, (line, _)) in enumerate(POISON_LINES.items()):
        lines += [good_line(19 * k + i) for i in range(9)]
        where[name] = len(lines) + 1
        lines.append(line)
        lines += [good_line(19 * k + i) for i in range(9, 19)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    goods = [json.loads(good_line(i)) for i in range(19 * len(POISON_LINES))]
    store, summary = tmp_path / "store", tmp_path / "summary.json"
    done = ingest(str(path), "--store", str(store), "--summary", str(summary), "-q")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    s = json.loads(summary.read_text())
    assert (s["input"], s["accepted"], s["rejected"], s["duplicates"]) == (
        len(lines),
        len(goods),
        len(POISON_LINES),
        0,
    )
    assert s["rejected_by_reason"] == {"malformed": len(POISON_LINES)}
    dead = table_frame(store / "deadletter")
    by_line = {
        int(m.split(":")[0].removeprefix("line ")): (m, raw)
        for m, raw in zip(dead["message"], dead["raw"], strict=True)
    }
    assert sorted(by_line) == sorted(where.values())
    for name, (line, why) in POISON_LINES.items():
        message, raw = by_line[where[name]]
        assert why in message, (name, message)
        assert len(raw.encode()) <= RAW_BYTES
        if name == "not_utf8":
            assert raw_bytes(raw) == line  # escaped, and the message says how
            assert "escaped" in message
        else:
            assert raw == line[:RAW_BYTES].decode()
    cap = table_frame(store / "captures" / "default")
    got = sorted(zip(cap["source"], cap["value"], strict=True))
    assert got == sorted((g["source"], g["value"]) for g in goods)


@pytest.mark.integration
def test_the_record_cap_is_an_option_and_a_larger_one_reads_the_file_again(
    tmp_path: Path,
) -> None:
    """``--max-record-size``: a 2 KiB line is malformed under a 1KiB cap; the same command
    again skips the file; a larger cap reads it again and captures only that line (the rest
    are duplicates). A size that is none is a usage error in one line."""
    path = tmp_path / "long.jsonl"
    long = json.dumps({"source": "l", "time": T_LINE, "value": 1.5, "note": "n" * 2000})
    path.write_text("\n".join([good_line(1).decode(), long, good_line(2).decode()]) + "\n")
    store, summary = tmp_path / "store", tmp_path / "summary.json"
    args = [str(path), "--store", str(store), "--summary", str(summary), "-q"]
    done = ingest(*args, "--max-record-size", "1KiB")
    assert done.returncode == 0, done.stderr
    s = json.loads(summary.read_text())
    assert (s["accepted"], s["rejected_by_reason"]) == (2, {"malformed": 1})
    (message,) = table_frame(store / "deadletter")["message"]
    assert message == "line 2: longer than the record cap of 1,024 bytes (--max-record-size)"
    again = ingest(*args, "--max-record-size", "1024")
    assert again.returncode == 0, again.stderr
    assert "already" in again.stderr  # (skipped: the same options captured it)
    larger = ingest(*args, "--max-record-size", "4KiB")
    assert larger.returncode == 0, larger.stderr
    s = json.loads(summary.read_text())
    assert (s["accepted"], s["rejected"], s["duplicates"]) == (1, 0, 2)
    cap = table_frame(store / "captures" / "default")
    assert sorted(cap["source"]) == ["g1", "g2", "l"]
    bad = ingest(*args, "--max-record-size", "lots")
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[-1] == (
        "obsflow ingest: error: argument --max-record-size: 'lots': a size such as 1MiB, "
        "512KiB, 2MB or 65536 (bytes)"
    )
