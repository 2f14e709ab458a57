"""The ingest dataflow, end to end on real files and stores."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from obsflow.connectors.batch import RawBatch
from obsflow.connectors.datasets.capture import list_captures
from obsflow.connectors.formats.schema import InputSpec
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main
from obsflow.flows.pipeline import jobs
from obsflow.flows.pipeline.ingest import IngestConfig, dataflow, normalize_batch
from obsflow.flows.pipeline.runner import Wiring, run_flow
from obsflow.flows.steps.summary import Counts
from tests.conftest import BUOY, BUOY_MAP, ROOT, sorted_frame
from tests.delta import files_in_order, table_frame


def read_dir(path: Path) -> pd.DataFrame:
    """A table as Polars reads it (Delta's list of files; times exact)."""
    return table_frame(path)


def test_buoy_sample_is_accounted_for_row_by_row(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    code = main(
        [
            "ingest",
            str(BUOY),
            "--store",
            str(tmp_path / "store"),
            "--capture",
            "buoy",
            "--map",
            BUOY_MAP,
            "--summary",
            str(summary),
            "-q",
        ]
    )
    assert code == 0
    src = pd.read_parquet(BUOY)
    cap = read_dir(tmp_path / "store" / "captures" / "buoy")
    s = json.loads(summary.read_text())
    # The sample holds two values at 2017-03-21 16:30 UTC (rows 19209 and 19210): same
    # identity (source, channel, time), other content. The first stays; the second is a
    # conflict, kept in the dead letters with its raw form and origin.
    assert (s["input"], s["accepted"], s["rejected"], s["duplicates"]) == (19_226, 19_225, 1, 0)
    assert s["rejected_by_reason"] == {"conflict": 1}
    assert s["capture"] == "buoy"
    dead = read_dir(tmp_path / "store" / "deadletter")
    assert dead[["origin", "row", "reason"]].values.tolist() == [[str(BUOY), 19210, "conflict"]]
    assert json.loads(dead["raw"][0])["value"] == 4.289
    # Every other input row is in the capture with its time and value, in arrival order.
    kept = src.drop(index=19210).reset_index(drop=True)
    cap = cap.sort_values("seq").reset_index(drop=True)
    assert len(cap) == len(kept) == 19_225
    assert cap["seq"].tolist() == list(range(len(kept)))
    assert (cap["time"].astype("int64").to_numpy() == kept["event_time"].to_numpy()).all()
    assert (cap["value"].to_numpy() == kept["value"].to_numpy()).all()
    assert (cap["source"] == kept["source_id"]).all()
    assert (cap["channel"] == kept["channel"]).all()
    pair = cap[cap["time"] == pd.Timestamp("2017-03-21 16:30", tz="UTC")]
    assert pair["value"].tolist() == [4.276]


def test_bad_ids_and_times_are_counted_and_kept_not_fatal(tmp_path: Path) -> None:
    csv = tmp_path / "mixed.csv"
    csv.write_text(
        "source,time,value\n"
        "good-1,2024-01-01T00:00:00Z,1.0\n"
        "../escape,2024-01-01T00:00:01Z,2.0\n"
        "good-1,not-a-time,3.0\n"
        "good-2,1704067200000000000,4.0\n"
        ",2024-01-01T00:00:02Z,5.0\n"
        "good-2,2024-01-01T00:00:03Z,\n"
    )
    summary = tmp_path / "s.json"
    store = tmp_path / "store"
    assert (
        main(
            [
                "ingest",
                str(csv),
                "--store",
                str(store),
                "--capture",
                "c",
                "--summary",
                str(summary),
                "-q",
            ]
        )
        == 0
    )
    s = json.loads(summary.read_text())
    assert (s["input"], s["accepted"], s["rejected"]) == (6, 2, 4)
    assert s["input"] == s["accepted"] + s["rejected"] + s["duplicates"]
    assert s["rejected_by_reason"] == {"bad_id": 2, "bad_time": 1, "missing_field": 1}
    dead = read_dir(store / "deadletter")
    assert sorted(dead["reason"]) == ["bad_id", "bad_id", "bad_time", "missing_field"]
    assert set(dead["origin"]) == {str(csv)}
    assert {json.loads(r)["source"] for r in dead["raw"]} == {"../escape", "good-1", "good-2", None}
    assert not (store / "captures" / "c" / "..").resolve().joinpath("escape").exists()
    cap = read_dir(store / "captures" / "c")
    assert sorted(cap["value"]) == [1.0, 4.0]  # an empty value is missing: a dead letter


def test_one_and_two_workers_write_the_same_capture(tmp_path: Path) -> None:
    url = "sim://?sources=6&rate=200&duration=60s&seed=11"
    frames = []
    for workers in (1, 2):
        store = tmp_path / f"w{workers}"
        cfg = IngestConfig(
            inputs=(url,), store=str(store), capture="c", progress=False, run_id=f"r{workers}"
        )
        run_flow(dataflow(cfg), workers)
        frames.append(sorted_frame(read_dir(store / "captures" / "c")))
        # each source lives in exactly one partition folder
        owners = {}
        for uri in files_in_order(store, "captures/c"):
            f = Path(uri.removeprefix("file://"))
            for src in pd.read_parquet(f, columns=["source"])["source"].unique():
                assert owners.setdefault(src, f.parent.name) == f.parent.name
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert len(frames[0]) > 100_000


def test_later_runs_continue_seq_numbers_and_skip_what_is_already_captured(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("source,time,value\ns,1,1\ns,2,2\n")
    second.write_text("source,time,value\ns,2,2\ns,3,3\ns,4,4\n")  # (s, 2) again
    results = []
    # r3 reads b.csv again (--force): every reading is a duplicate; r4 skips it unread.
    for run, csv, force in (("r1", first, False), ("r2", second, False), ("r3", second, True)):
        results.append(
            jobs.ingest(
                inputs=(str(csv),),
                store=str(tmp_path),
                capture="c",
                progress=False,
                run_id=run,
                force=force,
            )
        )
    assert [(r.summary["accepted"], r.summary["duplicates"]) for r in results] == [
        (2, 0),
        (2, 1),
        (0, 3),
    ]
    skipped = jobs.ingest(
        inputs=(str(second),), store=str(tmp_path), capture="c", progress=False, run_id="r4"
    )
    assert skipped.run is None
    assert skipped.skipped == ((str(second), "r2"),)
    assert skipped.summary["input"] == 0
    cap = read_dir(tmp_path / "captures" / "c").sort_values("seq")
    assert cap["seq"].tolist() == [0, 1, 2, 3]
    assert cap["value"].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_flow_accepts_a_testing_source_and_sink(tmp_path: Path) -> None:
    batch = RawBatch(
        "mem", 0, pa.table({"source": ["a", "b/"], "time": [1, 2], "value": [1.0, 2.0]})
    )
    out: list = []
    flow = dataflow(
        IngestConfig(inputs=("unused.csv",), store="memory://t-flow", capture="c", progress=False),
        Wiring(source=TestingSource([batch, batch]), sink=TestingSink(out)),
    )
    run_main(flow)
    assert len(out) == 1
    assert out[0][1].outputs  # (the files it wrote, for a commit)
    out = [(key, replace(counts, outputs={})) for key, counts in out]
    # the same batch twice: its valid reading is accepted once, then counted as a duplicate.
    # Its window [0, 1m) is still open at the end of the run: a provisional row, not final.
    # Times 1 and 2 are epoch numbers of the magnitude of seconds (--time-unit auto).
    assert out == [
        (
            "run",
            Counts(
                input=4,
                accepted=1,
                rejected=2,
                duplicates=1,
                reasons={"bad_id": 2},
                view_rows={"c_1m": 0},
                provisional={"c_1m": 1},
                origins={"mem": 1},
                epoch_units={"s": 4},
                records=4,
            ),
        )
    ]
    # A sink in place of the run's finish: nothing was committed.
    assert list_captures(Store("memory://t-flow")) == []


def test_normalize_batch_counts_reader_and_schema_rejects() -> None:
    from obsflow.connectors.sources.files import malformed

    batch = RawBatch(
        "f",
        0,
        pa.table({"source": ["a"], "time": ["x"], "value": ["1"]}),
        malformed("f", [(3, "bad line", "a,b")]),
    )
    readings, rejects, counts = normalize_batch(InputSpec(), batch)
    assert readings.num_rows == 0
    assert counts == Counts(input=2, rejected=2, reasons={"malformed": 1, "bad_time": 1}, records=2)
    assert rejects.num_rows == 2


@pytest.mark.integration
def test_bytewax_run_module_runs_the_flow(tmp_path: Path) -> None:
    store = tmp_path / "store"
    expr = (
        f"obsflow.flows.pipeline.ingest:build_flow(inputs=['{BUOY}'], store='{store}', "
        f"capture='bw', map='{BUOY_MAP}', progress=False)"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bytewax.run", expr, "-w", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(read_dir(store / "captures" / "bw")) == 19_225  # one conflict set aside


def test_cli_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ingest", "x.xlsx", "--store", str(tmp_path)]) == 2
    assert "use .parquet, .csv or .jsonl" in capsys.readouterr().err
    assert main(["ingest", "a.csv", "--store", str(tmp_path), "--capture", "../up"]) == 2
    assert "capture name '../up'" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "nope.csv"), "--store", str(tmp_path)]) == 2
    assert "nope.csv' does not exist" in capsys.readouterr().err
    (tmp_path / "more.csv").mkdir()  # a folder, as a shell's glob gives it
    assert main(["ingest", str(tmp_path / "more.csv"), "--store", str(tmp_path)]) == 2
    assert "more.csv' is a folder, not a file" in capsys.readouterr().err
    (tmp_path / "cut.parquet").write_bytes(b"PAR1")  # a copy cut short: no footer
    assert main(["ingest", str(tmp_path / "cut.parquet"), "--store", str(tmp_path)]) == 2
    assert "cut.parquet is not a Parquet file (" in capsys.readouterr().err
    assert main(["capture", "info", "nope", "--store", str(tmp_path)]) == 2
