"""Bluesky documents through ``obsflow ingest --format bluesky`` (issue 15), end to end.

Documents come from a real RunEngine (``tests.bluesky_runs``): a scan of ``det`` over ``motor``
and a count of two detectors (scalars), a count of an image detector writing ``.npy`` files by
resource/datum, and a scan of ophyd-async's blob detector writing HDF5 by stream_resource /
stream_datum. They are written as suitcase-jsonl writes them (``[name, doc]``), as
``{"name", "doc"}`` lines and as a msgpack stream. The oracles read the documents and the files
by hand; the capture is read back through the Explorer (payloads fetched and verified).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import event_model
import h5py
import numpy as np
import pandas as pd
import pytest

from obsflow.connectors.sources.bluesky.documents import RUN_DOCUMENTS
from obsflow.connectors.sources.bluesky.external import ASSET_DOCUMENTS
from obsflow.flows.explore.explorer import Explorer
from tests.bluesky_runs import (
    Docs,
    blob_scan,
    hdf_oracle,
    npy_count,
    npy_file,
    npy_oracle,
    scalar_oracle,
    scan_and_count,
    write_jsonl,
    write_msgpack,
)

pytestmark = pytest.mark.integration  # servers, brokers, child processes (tests/conftest.py)

OBSFLOW = str(Path(sys.executable).parent / "obsflow")
COLUMNS = [
    "source",
    "seq",
    "time",
    "channel",
    "value",
    "payload_sha256",
    "run_uid",
    "stream",
    "descriptor",
]


def obsflow(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([OBSFLOW, *args], capture_output=True, text=True, timeout=300)
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def stored(docs: Docs) -> int:
    """The documents a capture keeps whole: run and asset documents."""
    return sum(name in (*RUN_DOCUMENTS, *ASSET_DOCUMENTS) for name, _ in docs)


class Runs:
    """The three kinds of run, as files."""

    def __init__(self, where: Path) -> None:
        self.scalars = scan_and_count()
        self.npy = npy_count(where / "npy")
        self.hdf = blob_scan(where / "hdf")
        self.files = [
            write_jsonl(self.scalars, where / "scan.jsonl"),
            write_jsonl(self.npy, where / "npy.jsonl", objects=True),
            write_msgpack(self.hdf, where / "blob.msgpack"),
        ]

    @property
    def docs(self) -> Docs:
        return [*self.scalars, *self.npy, *self.hdf]

    def externals(self) -> dict[tuple[str, int], tuple[int, np.ndarray]]:
        """(key, seq) -> (time ns, array as its file holds it) of every external value."""
        return {**npy_oracle(self.npy), **hdf_oracle(self.hdf)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("runs"))


def capture(store: Path, name: str = "bl") -> pd.DataFrame:
    return Explorer(str(store)).capture(name, columns=COLUMNS)


def ingest(store: Path, files: list[Path], *extra: str, ok: bool = True) -> dict[str, Any]:
    summary = store.parent / f"{store.name}-summary.json"
    args = ["ingest", "--format", "bluesky", *map(str, files), "--store", str(store)]
    obsflow(*args, "--capture", "bl", "-q", "--summary", str(summary), *extra, ok=ok)
    doc: dict[str, Any] = json.loads(summary.read_text())
    return doc


def test_every_value_and_frame_of_real_runs_is_captured_and_a_reingest_adds_nothing(
    runs: Runs, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    summary = ingest(store, runs.files)
    got = capture(store)
    externals = runs.externals()
    scalars = scalar_oracle(runs.docs)
    assert len(scalars) == 7 * 3 + 5 * 2 + 4  # scan, count; the blob scan's stage-x
    assert len(externals) == 4 * 2 + 4 * 2  # img and energy; bdet frames and their sums
    assert summary["balanced"]
    assert summary["rejected"] == 0
    assert summary["input"] == summary["accepted"] == len(got) == len(scalars) + len(externals)
    assert summary["documents"] == stored(runs.docs)

    # Every numeric value of every event: its source, channel, own time, run and stream.
    key = ["run_uid", "stream", "source", "channel", "time"]
    plain = got[got["payload_sha256"].isna() & ~got["channel"].isin(["energy", "bdet-sum"])]
    merged = scalars.merge(plain, on=key, how="outer", suffixes=("", "_got"), indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"]
    np.testing.assert_array_equal(merged["value"], merged["value_got"])

    # Every external value: frames fetched (sha256 verified) equal the file's array; a value
    # that is one number is a reading of it. Times: each key's own, or its event's.
    ex = Explorer(str(store))
    external = got[got["channel"].isin(["img", "energy", "bdet", "bdet-sum"])]
    assert len(external) == len(externals)
    rows = ex.capture_table("bl", channel=["img", "bdet"], payloads=True).to_pandas()
    keys = zip(rows["channel"], rows["seq"], strict=True)
    frames = dict(zip(keys, ex.payloads(rows), strict=True))
    for row in external.itertuples():
        stamp, array = externals[row.channel, row.seq]
        assert row.time.value == stamp
        if array.size == 1 and row.channel in ("energy", "bdet-sum"):
            assert row.value == float(array.reshape(-1)[0])
        else:
            np.testing.assert_array_equal(frames[row.channel, row.seq], array, strict=True)
    assert {a.dtype for k, a in frames.items()} == {np.dtype("uint16"), np.dtype("uint8")}

    # The run documents, whole and queryable.
    listed = obsflow("bluesky", "runs", "--capture", "bl", "--store", str(store)).stdout
    starts = [d for n, d in runs.docs if n == "start"]
    assert len(starts) == 4
    for start in starts:
        assert start["uid"] in listed
    table = ex.bluesky_runs("bl")
    assert sorted(table["plan_name"]) == sorted(d["plan_name"] for d in starts)
    assert set(table["exit_status"]) == {"success"}
    first = starts[0]["uid"]
    assert ex.bluesky_documents("bl", first) == [
        (n, d)
        for n, d in runs.scalars
        if n in RUN_DOCUMENTS and (d.get("run_start", d["uid"]) == first)
    ]
    assert set(ex.capture("bl", run_uid=first)["run_uid"]) == {first}
    assert len(ex.capture("bl", run_uid=first)) == 21

    # Again, read anew (--force): every reading a duplicate, no document stored twice; the
    # stream datums whose frames are in the capture (a note says so) are not read again.
    again = ingest(store, runs.files, "--force")
    streamed = len(hdf_oracle(runs.hdf))
    assert again["input"] == again["duplicates"] == len(got) - streamed
    assert again["accepted"] == 0
    assert again.get("documents", 0) == 0
    pd.testing.assert_frame_equal(capture(store), got)
    assert len(ex.bluesky_documents("bl")) == stored(runs.docs)
    # And without --force the inputs are known: skipped.
    assert ingest(store, runs.files)["input"] == 0


def test_a_run_split_across_files_continues_in_a_later_ingest(runs: Runs, tmp_path: Path) -> None:
    """The start, descriptor and half the events in one file, the rest in another, ingested
    by another run: the stored documents prime the second run, nothing is an orphan."""
    half = len(runs.scalars) // 2
    first = write_jsonl(runs.scalars[:half], tmp_path / "a.jsonl")
    rest = write_jsonl(runs.scalars[half:], tmp_path / "b.jsonl")
    store = tmp_path / "store"
    one, two = ingest(store, [first]), ingest(store, [rest])
    assert one["rejected"] == two["rejected"] == 0
    assert one["accepted"] > 0
    assert two["accepted"] > 0
    whole = tmp_path / "whole"
    ingest(whole, [write_jsonl(runs.scalars, tmp_path / "all.jsonl")])
    pd.testing.assert_frame_equal(capture(store), capture(whole))


def test_an_export_validates_and_reingests_to_identical_readings(
    runs: Runs, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    ingest(store, runs.files)
    out = tmp_path / "export"
    exported = []
    for run in Explorer(str(store)).bluesky_runs("bl")["run_uid"]:
        path = out / f"{run}.jsonl"
        done = obsflow(
            "bluesky",
            "export",
            "--capture",
            "bl",
            "--run",
            run,
            "--store",
            str(store),
            "-o",
            str(path),
        )
        assert str(path) in done.stderr
        exported.append(path)
    docs = [tuple(json.loads(line)) for p in exported for line in p.read_text().splitlines()]
    names = {n for n, _ in docs}
    assert {"start", "descriptor", "event", "stop", "stream_resource", "stream_datum"} <= names
    for name, doc in docs:  # event-model's own schemas, called here
        event_model.schema_validators[event_model.DocumentNames(name)].validate(doc)
    # The arrays are in the HDF5 files the exports name, and equal the originals.
    for name, doc in docs:
        if name == "stream_resource":
            path = doc["uri"].removeprefix("file://localhost")
            with h5py.File(path, "r") as f:
                assert f[doc["parameters"]["dataset"]].shape[0] == 4
    # Moved elsewhere: the URIs say where they were; --root-map says where they are.
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    again = tmp_path / "again"
    summary = ingest(again, [moved / p.name for p in exported], "--root-map", f"{out}={moved}")
    assert summary["rejected"] == 0
    pd.testing.assert_frame_equal(capture(again), capture(store))
    # Into the capture it came from (whose descriptors have the arrays by datum): nothing new.
    before = capture(store)
    summary = ingest(store, [moved / p.name for p in exported], "--root-map", f"{out}={moved}")
    assert summary["rejected"] == summary["accepted"] == 0
    assert summary["duplicates"] == summary["input"] == len(before)
    pd.testing.assert_frame_equal(capture(store), before)


def test_hostile_documents_are_dead_letters_with_reasons_and_the_counts_add_up(
    runs: Runs, tmp_path: Path
) -> None:
    """Each kind of bad document once (or a run's worth), among good runs: the bad ones are
    dead letters with their reason, the rest is captured, and the run adds up."""
    scalars = [(n, json.loads(json.dumps(d))) for n, d in runs.scalars]
    count_start = [i for i, (n, _) in enumerate(scalars) if n == "start"][1]
    moved = next(i for i, (n, _) in enumerate(scalars) if n == "event" and i > count_start)
    scalars.insert(count_start, scalars.pop(moved))  # an event before its run's start
    npy = npy_count(tmp_path / "npy")
    (tmp_path / "npy" / npy_file(npy, 2)).unlink()  # a datum whose file never appears
    odd = npy_count(tmp_path / "odd", num=1)
    datum_id = next(d for n, d in odd if n == "event")["data"]["img"]
    resource = next(d["resource"] for n, d in odd if n == "datum" and d["datum_id"] == datum_id)
    next(d for n, d in odd if n == "resource" and d["uid"] == resource)["spec"] = "MY_FORMAT"
    far = blob_scan(tmp_path / "far")
    frames = next(d["uid"] for n, d in far if n == "stream_resource" and d["data_key"] == "bdet")
    datum = next(d for n, d in far if n == "stream_datum" and d["stream_resource"] == frames)
    datum["indices"] = {"start": 100, "stop": 101}  # beyond the dataset's 4 rows
    huge = blob_scan(tmp_path / "huge")
    desc = next(d for n, d in huge if n == "descriptor")
    desc["data_keys"]["bdet"].update(shape=[1, 32768, 16384], dtype_numpy="<f4")  # 2 GiB
    event = json.loads(json.dumps(next(d for n, d in scalars if n == "event")))
    docs = [
        *scalars,
        ("event", {**event, "uid": "x1", "descriptor": "no-such-descriptor"}),
        ("start", {"uid": "no-time"}),  # schema-invalid: a start has a time
        ("event", {**event, "uid": "x2", "data": [1, 2]}),  # schema-invalid: data is an object
        *npy,
        *odd,
        *far,
        *huge,
    ]
    path = write_jsonl(docs, tmp_path / "hostile.jsonl")
    with path.open("a") as f:
        f.write("{not json\n")
        f.write("[1, 2]\n")
    summary = ingest(tmp_path / "store", [path], "--external-wait", "0.2s")
    want = {
        "unknown_descriptor": 2,  # the event before its start, the unknown descriptor
        "invalid_document": 2,
        "missing_file": 1,
        "unsupported_external": 1,
        "index_out_of_range": 1,
        "oversize": 4,  # each of the 2 GiB key's stream datums
        "malformed": 1,
        "not_a_document": 1,
    }
    assert summary["rejected_by_reason"] == want
    assert summary["input"] == summary["accepted"] + summary["rejected"] + summary["duplicates"]
    # The rest is captured: 31 scalars less the moved event's 2; img and energy less the
    # missing file; the odd run's energy; the far run's 4 + 4 sums + 3 frames; the huge run's
    # 4 + 4 sums.
    assert summary["accepted"] == (31 - 2) + (8 - 1) + 1 + 11 + 8
    dead = Explorer(str(tmp_path / "store")).deadletters()
    assert len(dead) == sum(want.values())
    assert dead["raw"].str.len().gt(0).all()
    unsupported = dead[dead["reason"] == "unsupported_external"]
    assert "MY_FORMAT" in unsupported["message"].iloc[0] + unsupported["raw"].iloc[0]


def test_a_mistaken_format_says_what_to_do(runs: Runs, tmp_path: Path) -> None:
    """Documents read as readings, readings read as documents: nothing accepted, one line on
    what to do, the records kept as dead letters; the fixed command then reads the file."""
    args = ["ingest", str(runs.files[0]), "--store", str(tmp_path / "a"), "--capture", "bl"]
    done = obsflow(*args, ok=False)
    assert done.returncode == 1
    assert "these look like Bluesky documents: add --format bluesky" in done.stderr
    assert "Traceback" not in done.stderr
    assert obsflow(*args, "--format", "bluesky").returncode == 0
    readings = tmp_path / "readings.jsonl"
    readings.write_text('{"source": "a", "time": "2026-01-01T00:00:00Z", "value": 1}\n')
    args = ["ingest", "--format", "bluesky", str(readings), "--store", str(tmp_path / "b")]
    done = obsflow(*args, ok=False)
    assert done.returncode == 1
    assert "a file of readings is read without --format" in done.stderr
    assert "not_a_document" in done.stderr


def test_external_files_are_read_only_from_under_external_root(runs: Runs, tmp_path: Path) -> None:
    """``--external-root DIR``: the documents' files elsewhere are dead letters, not read."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    summary = ingest(tmp_path / "store", runs.files, "--external-root", str(elsewhere))
    # 8 datums (img, energy) and 8 stream datums (bdet, bdet-sum) refused; the scalars kept.
    assert summary["rejected_by_reason"] == {"bad_reference": 16}
    assert summary["accepted"] == len(scalar_oracle(runs.docs))
    data = runs.files[0].parent  # where the runs wrote their files
    assert ingest(tmp_path / "ok", runs.files, "--external-root", str(data))["rejected"] == 0
