"""A corpus of hostile and broken records mixed into good input: each one is accounted for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
