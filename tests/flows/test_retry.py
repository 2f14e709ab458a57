"""``obsflow deadletters retry``: ingest again what was rejected, after fixing the mapping.

Issue 17 must-show 2: counts add up across both runs (originally rejected = now accepted + still
rejected); a second retry changes nothing. Dead letters are never deleted: resolved ones are
hidden from ``deadletters list`` unless ``--all``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from obsflow.flows.cli.main import main
from obsflow.flows.explore.explorer import open_store

GOOD = "source,time,value\n" + "".join(f"a,2024-01-01T00:{m:02d}:00Z,{m / 10}\n" for m in range(30))
# A station logger's file: other column names. Ingested without --map, all of it is rejected;
# two rows are bad whatever the mapping.
STATION = "station,time,temp_c\n" + "".join(
    f"w{i % 3},2024-01-01T00:{m:02d}:30Z,{10 + m / 7:.4f}\n" for i, m in enumerate(range(30))
)
STATION += "w1,2024-01-01T00:40:00Z,not-a-number\nw2,yesterday,11.0\n"
FIX = ["--map", "source=station,value=temp_c"]


def _files(root: Path) -> dict[str, str]:
    """Every file of the store and a digest of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _summary(store: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, int]:
    """Open dead letters by reason (``deadletters list``), as printed."""
    capsys.readouterr()
    assert main(["deadletters", "list", "--store", str(store)]) == 0
    header, *out = capsys.readouterr().out.splitlines()
    reason = header.split().index("reason")
    return {line.split()[reason]: int(line.split()[-1]) for line in out}


def test_a_retry_after_fixing_the_mapping_adds_up_and_a_second_one_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    (tmp_path / "good.csv").write_text(GOOD)
    (tmp_path / "station.csv").write_text(STATION)
    common = ["--store", str(store), "--capture", "c", "-q"]
    assert main(["ingest", str(tmp_path / "good.csv"), *common]) == 0
    assert main(["ingest", str(tmp_path / "station.csv"), *common]) == 1  # accepted nothing
    ex = open_store(str(store))
    rejected = ex.deadletters()
    assert len(rejected) == 32
    assert _summary(store, capsys) == {"missing_field": 32}
    dead_objects = {k: v for k, v in _files(store).items() if k.startswith("deadletter/")}

    capsys.readouterr()
    retry = ["deadletters", "retry", "--store", str(store), "--capture", "c", *FIX]
    assert main(retry) == 0
    said = capsys.readouterr().err
    assert "32 open dead letters: 30 resolved by run" in said
    assert "(30 captured, 0 duplicates: already in the capture)" in said
    assert "2 still rejected (bad_time 1, bad_value 1)" in said

    # Counts add up across both runs: originally rejected = now accepted + still rejected.
    runs = ex.runs()
    first, second = (ex.run(r) for r in runs["run"].iloc[1:])
    assert first["rejected"] == 32
    assert first["accepted"] == 0
    assert second["retry"] == {
        "of_run": None,
        "of_reason": None,
        "retried": 32,
        "resolved": 30,
        "still_rejected": 2,
    }
    assert second["accepted"] + second["duplicates"] == 30
    assert second["input"] == second["accepted"] + second["rejected"] + second["duplicates"]
    assert first["rejected"] == second["accepted"] + second["duplicates"] + 2
    assert _summary(store, capsys) == {"missing_field": 2}
    marks = ex.sql("SELECT resolved_by, count(*) AS n FROM deadletters GROUP BY ALL")
    assert dict(zip(marks["resolved_by"].fillna("open"), marks["n"], strict=True)) == {
        second["run"]: 30,
        "open": 2,
    }
    assert len(ex.deadletters(unresolved=True)) == 2

    # What was captured is exactly the fixed rows, and the view went on with them.
    want = pd.read_csv(tmp_path / "station.csv").iloc[:30]
    cap = ex.capture("c", source=["w0", "w1", "w2"])
    assert len(cap) == 30
    assert sorted(cap["value"].round(4)) == sorted(want["temp_c"].astype(float).round(4))
    view = ex.view("c_1m", source=["w0", "w1", "w2"])
    assert view["count"].sum() == 30

    # Never deleted: the dead letters are the same objects, the resolved ones listed with --all.
    after = _files(store)
    assert {k: v for k, v in after.items() if k.startswith("deadletter/")} == dead_objects
    capsys.readouterr()
    assert main(["deadletters", "list", "--all", "--store", str(store)]) == 0
    listed = capsys.readouterr().out
    assert "(open)" in listed
    assert second["run"] in listed

    # A second retry changes nothing: no file of the store is added or altered.
    assert main(retry) == 0
    assert "none of 2 open dead letters passes now" in capsys.readouterr().err
    assert _files(store) == after


def test_a_retry_can_take_one_reason_and_says_when_there_is_nothing_to_retry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    (tmp_path / "good.csv").write_text(GOOD + "b,2024-01-01T01:00:00Z,oops\nb,soon,1\n")
    assert main(["ingest", str(tmp_path / "good.csv"), "--store", str(store), "-q"]) == 0
    capsys.readouterr()
    retry = ["deadletters", "retry", "--store", str(store), "--capture", "default"]
    assert main([*retry, "--reason", "missing_field"]) == 0
    assert "no open dead letters to retry (of those asked for)" in capsys.readouterr().err
    assert main([*retry, "--reason", "bad_time"]) == 0
    assert "none of 1 open dead letters passes now (bad_time 1)" in capsys.readouterr().err
    assert open_store(str(store)).runs()["rejected"].tolist() == [2]  # (no run was added)
