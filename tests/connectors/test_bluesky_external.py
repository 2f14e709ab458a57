"""External data of Bluesky runs (resource/datum, stream_resource/stream_datum) as frames.

Documents come from a real RunEngine: ophyd.sim's ``SynSignalWithRegistry`` writing ``NPY_SEQ``
files, ophyd-async's ``SimBlobDetector`` writing HDF5 with stream resources; ``AD_HDF5`` runs
are composed with event-model (which validates them). Every frame is compared with a plain
reading of its file (``np.load``, ``h5py``), found from the documents by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
from pathlib import Path, PurePath
from typing import Any

import bluesky.plan_stubs as bps
import event_model
import h5py
import numpy as np
import pyarrow as pa
import pytest
from bluesky import RunEngine
from ophyd_async import sim
from ophyd_async.core import (
    StaticPathProvider,
    TriggerInfo,
    UUIDFilenameProvider,
    init_devices,
)

from obsflow.connectors.payloads.format import array_from_bytes
from obsflow.connectors.sources.bluesky.documents import DocumentBatch, DocumentStream
from obsflow.connectors.sources.bluesky.events import seq_of
from obsflow.connectors.sources.bluesky.external import ExternalResolver
from tests.bluesky_runs import (
    as_written,
    blob_scan,
    hdf_oracle,
    npy_count,
    npy_file,
    npy_oracle,
    recorded,
)

Docs = list[tuple[str, dict[str, Any]]]
STAMP = 1_700_000_000.0


@pytest.fixture(scope="module")
def npy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Docs, Path]:
    where = tmp_path_factory.mktemp("npy")
    return npy_count(where), where


@pytest.fixture(scope="module")
def hdf_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Docs, Path]:
    where = tmp_path_factory.mktemp("hdf")
    return blob_scan(where), where


# --- oracles: the documents read by hand ----------------------------------------------------


def got_frames(batch: DocumentBatch) -> dict[tuple[str, int], tuple[int, np.ndarray]]:
    """(key, seq) -> (time ns, array) of the batch's frames, decoded from their payload bytes
    as the payload step will (``array_from_bytes``: allow-listed dtype, sizes checked)."""
    out = {}
    for row in batch.frames.to_pylist():
        array = array_from_bytes(row["payload"], row["payload_dtype"], row["payload_shape"])
        assert (row["channel"], row["seq"]) not in out
        assert np.isnan(row["value"])
        out[row["channel"], row["seq"]] = (int(row["time"].value), array)
    return out


def got_values(batch: DocumentBatch, channel: str) -> dict[tuple[str, int], tuple[int, float]]:
    table = batch.readings.to_pandas()
    table = table[table["channel"] == channel]
    return {
        (channel, int(s)): (int(t.value), float(v))
        for s, t, v in zip(table["seq"], table["time"], table["value"], strict=True)
    }


def assert_same(got: dict[Any, tuple[int, Any]], want: dict[Any, tuple[int, Any]]) -> None:
    assert got.keys() == want.keys()
    for key, (stamp, array) in want.items():
        assert got[key][0] == stamp, key
        np.testing.assert_array_equal(got[key][1], array, strict=True)


def take(docs: Docs, **resolver: Any) -> DocumentBatch:
    return DocumentStream(resolver=ExternalResolver(**resolver)).take(docs)


# --- real runs --------------------------------------------------------------------------------


def test_npy_seq_frames_equal_their_files(npy_run: tuple[Docs, Path]) -> None:
    docs, _ = npy_run
    batch = take(docs)
    assert not batch.rejects
    want = npy_oracle(docs)
    frames = {k: v for k, v in want.items() if k[0] == "img"}
    assert len(frames) == 4
    assert_same(got_frames(batch), frames)
    assert {r["payload_dtype"] for r in batch.frames.to_pylist()} == {"uint16"}
    assert set(batch.frames.column("source").to_pylist()) == {"img"}
    # A .npy holding one number is a reading of that number.
    numbers = {k: (t, float(a)) for k, (t, a) in want.items() if k[0] == "energy"}
    assert got_values(batch, "energy") == numbers
    assert batch.records == 8 == batch.frames.num_rows + batch.readings.num_rows
    names = [n for n, _ in batch.documents]
    assert names == [n for n, _ in docs if n != "event"]  # resource and datums kept whole
    assert names.count("datum") == 8


def test_hdf5_stream_frames_equal_their_dataset_rows(hdf_run: tuple[Docs, Path]) -> None:
    docs, _ = hdf_run
    batch = take(docs)
    assert not batch.rejects
    want = hdf_oracle(docs)
    frames = {k: v for k, v in want.items() if k[0] == "bdet"}
    assert len(frames) == 4
    assert len({a.tobytes() for _, a in frames.values()}) == 4  # the frames differ
    assert_same(got_frames(batch), frames)
    sums = {k: (t, float(a)) for k, (t, a) in want.items() if k[0] == "bdet-sum"}
    assert got_values(batch, "bdet-sum") == sums
    assert len(got_values(batch, "stage-x")) == 4  # the motor, from the events
    assert batch.records == 12 == batch.frames.num_rows + batch.readings.num_rows
    assert [n for n, _ in batch.documents].count("stream_datum") == 8
    row = batch.frames.to_pylist()[0]
    assert (row["source"], row["payload_dtype"], row["payload_shape"]) == (
        "bdet",
        "uint8",
        [240, 320],
    )


@pytest.mark.parametrize("run", ["npy_run", "hdf_run"])
def test_the_same_documents_give_the_same_rows_however_batched(
    run: str, request: pytest.FixtureRequest
) -> None:
    docs, _ = request.getfixturevalue(run)
    whole = take(docs)
    stream = DocumentStream()
    one_by_one = [stream.take([pair]) for pair in docs]
    for field in ("frames", "readings"):
        again = pa.concat_tables([getattr(b, field) for b in one_by_one])
        assert rows(again) == rows(getattr(whole, field))
    assert [d for b in one_by_one for d in b.documents] == whole.documents
    assert whole.frames.num_rows == 4
    assert rows(take(docs).frames) == rows(whole.frames)  # re-ingest: identical rows


def test_pages_give_what_their_documents_give(npy_run: tuple[Docs, Path]) -> None:
    """Datums packed into datum_pages (one per resource) and events into an event_page."""
    docs, _ = npy_run
    resources = [d["uid"] for n, d in docs if n == "resource"]
    pages: Docs = [
        (
            "datum_page",
            event_model.pack_datum_page(
                *[d for n, d in docs if n == "datum" and d["resource"] == r]
            ),
        )
        for r in resources
    ]
    events = [d for n, d in docs if n == "event"]
    paged = [
        *[(n, d) for n, d in docs if n in ("start", "descriptor", "resource")],
        *as_written(pages),
        *as_written([("event_page", event_model.pack_event_page(*events))]),
        *[(n, d) for n, d in docs if n == "stop"],
    ]
    batch = take(paged)
    whole = take(docs)
    assert not batch.rejects
    assert batch.frames.num_rows == 4
    assert rows(batch.frames) == rows(whole.frames)
    assert rows(batch.readings) == rows(whole.readings)


def fly(det: Any, events: int, per_event: int) -> Any:
    """A fly scan: the detector takes ``events`` × ``per_event`` frames on its own, bluesky
    collects their stream datums while it does (no events)."""
    yield from bps.open_run()
    yield from bps.stage(det)
    info = TriggerInfo(
        number_of_events=events, collections_per_event=per_event, livetime=0.01, deadtime=0.01
    )
    yield from bps.prepare(det, info, wait=True)
    yield from bps.declare_stream(det, name="primary", collect=True)
    yield from bps.kickoff(det, wait=True)
    yield from bps.collect_while_completing(flyers=[det], dets=[det], flush_period=0.1)
    yield from bps.unstage(det)
    yield from bps.close_run()


def test_a_fly_scan_gives_blocks_of_frames_at_the_descriptor_time(tmp_path: Path) -> None:
    engine = RunEngine({})
    patterns = sim.PatternGenerator()
    brightness = iter(range(10, 1000, 10))
    patterns.generate_point = lambda *_, **__: next(brightness)  # type: ignore[method-assign]
    with init_devices():
        bdet = sim.SimBlobDetector(
            StaticPathProvider(UUIDFilenameProvider(), PurePath(tmp_path)), patterns
        )
    docs = recorded(engine, fly(bdet, 6, 2))
    assert "event" not in {n for n, _ in docs}
    assert (
        max(d["indices"]["stop"] - d["indices"]["start"] for n, d in docs if n == "stream_datum")
        > 1
    )
    batch = take(docs)
    assert not batch.rejects
    want = hdf_oracle(docs, per_event=2)
    assert len(want) == 12  # 6 events of frames, 6 of sums
    assert len({a.tobytes() for k, (_, a) in want.items() if k[0] == "bdet"}) == 6
    assert_same(got_frames(batch), want)
    # Each stream datum is made once the next one of its descriptor comes, the last at the stop.
    stream = DocumentStream()
    before = stream.take(docs[:-1])
    last = [d for n, d in docs if n == "stream_datum"][-2:]
    assert [w.doc for w in stream.waiting] == last
    waited = last[0]["indices"]["stop"] - last[0]["indices"]["start"]
    assert before.frames.num_rows == 12 - 2 * waited  # a frame and a sum per index
    at_stop = stream.take(docs[-1:])
    assert before.frames.num_rows + at_stop.frames.num_rows == 12
    assert [n for n, _ in at_stop.documents] == ["_settled", "_settled", "stop"]  # made at stop


def test_a_primed_stream_does_not_repeat_documents_and_resumes_waiting_frames(
    hdf_run: tuple[Docs, Path],
) -> None:
    docs, _ = hdf_run
    whole = take(docs)
    # Cut after a stream datum, before the event that gives its frame a time.
    cut = next(i for i, (n, _) in enumerate(docs) if n == "event")
    assert docs[cut - 1][0] == "stream_datum"
    first = DocumentStream()
    before = first.take(docs[:cut])
    assert [w.doc["uid"] for w in first.waiting] == [d["uid"] for _, d in docs[cut - 2 : cut]]
    assert before.frames.num_rows == 0
    assert [n for n, _ in before.documents][-2:] == ["stream_datum"] * 2  # stored at once
    # A fresh stream learns what was stored, waits again for the frames that waited (their
    # run has no stop yet), then takes the rest.
    resumed = DocumentStream()
    assert resumed.prime(before.documents) == len(before.documents)
    assert [w.doc for w in resumed.waiting] == [w.doc for w in first.waiting]
    after = resumed.take(docs[cut:])
    assert after.redelivered == 0
    assert before.documents + after.documents == whole.documents
    assert_same(
        {**got_frames(before), **got_frames(after)},
        got_frames(whole),
    )
    # Everything again: run and asset documents are known, none is stored twice; the stream
    # datums whose frames were made (a SETTLED note says so) are not read again.
    again = resumed.take(docs)
    assert again.documents == []
    assert again.redelivered == sum(n != "event" for n, _ in docs)
    assert again.frames.num_rows == 0


def test_ad_hdf5_points_are_frame_per_point_rows(tmp_path: Path) -> None:
    for fpp, dtype in ((1, ">i4"), (3, "<u2")):
        rows = np.arange(4 * fpp * 5 * 7).reshape(4 * fpp, 5, 7).astype(dtype)
        docs = ad_hdf5_run(tmp_path / f"ad{fpp}.h5", rows, fpp)
        batch = take(docs)
        assert not batch.rejects
        got = got_frames(batch)
        assert len(got) == 4
        for (_, seq), (_, array) in got.items():
            point = next(p for p in range(4) if seq == ad_seq(docs, p))
            want = rows[point * fpp : (point + 1) * fpp]
            np.testing.assert_array_equal(array, want[0] if fpp == 1 else want, strict=False)
            assert array.dtype == np.dtype(dtype).newbyteorder("=")
            assert array.shape == ((5, 7) if fpp == 1 else (fpp, 5, 7))


def ad_hdf5_run(path: Path, rows: np.ndarray, fpp: int, points: int = 4) -> Docs:
    """A run of an area detector's HDF5 plugin, composed (and validated) with event-model."""
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=rows)
    run = event_model.compose_run(time=STAMP)
    key = {
        "source": "AD:HDF1",
        "dtype": "array",
        "shape": [fpp, *rows.shape[1:]],
        "dtype_numpy": rows.dtype.str,
        "external": "FILESTORE:",
    }
    desc = run.compose_descriptor(
        name="primary", data_keys={"ad_image": key}, object_keys={"ad": ["ad_image"]}
    )
    res = run.compose_resource(
        spec="AD_HDF5",
        root=str(path.parent),
        resource_path=path.name,
        resource_kwargs={"frame_per_point": fpp},
    )
    docs: Docs = [
        ("start", run.start_doc),
        ("descriptor", desc.descriptor_doc),
        ("resource", res.resource_doc),
    ]
    for point in range(points):
        datum = res.compose_datum(datum_kwargs={"point_number": point})
        event = desc.compose_event(
            data={"ad_image": datum["datum_id"]},
            timestamps={"ad_image": STAMP + point},
            seq_num=point + 1,
            filled={"ad_image": False},
        )
        docs += [("datum", datum), ("event", event)]
    docs.append(("stop", run.compose_stop()))
    return as_written(docs)


def ad_seq(docs: Docs, point: int) -> int:
    desc = next(d for n, d in docs if n == "descriptor")
    return seq_of(desc["run_start"], desc["uid"], point + 1, "ad_image")


def rows(table: pa.Table) -> list[dict[str, Any]]:
    """The rows, in (channel, seq) order, NaN as None (so that equal rows compare equal)."""
    out = table.sort_by([("channel", "ascending"), ("seq", "ascending")]).to_pylist()
    for row in out:
        if row["value"] != row["value"]:
            row["value"] = None
    return out


# --- hostile ------------------------------------------------------------------------------------


class FakeClock:
    """``clock`` and ``sleep`` for the resolver: naps advance the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.naps: list[float] = []
        self.on_nap: Any = None

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.naps.append(seconds)
        self.now += seconds
        if self.on_nap is not None:
            self.on_nap(len(self.naps))


def reasons(batch: DocumentBatch) -> list[tuple[str, str]]:
    return [(r.name, r.reason) for r in batch.rejects]


def test_files_that_never_appear_are_waited_for_once_per_batch_then_rejected(
    tmp_path: Path,
) -> None:
    docs = npy_count(tmp_path)
    gone = [npy_file(docs, 2), npy_file(docs, 3, "energy")]
    for name in gone:
        os.remove(tmp_path / name)
    fake = FakeClock()
    batch = take(docs, wait=2.0, poll=0.25, clock=fake.clock, sleep=fake.sleep)
    assert reasons(batch) == [("datum", "missing_file")] * 2
    assert gone[0] in batch.rejects[0].detail
    assert gone[1] in batch.rejects[1].detail
    raw = json.loads(batch.rejects[0].raw)
    assert raw[0] == "datum"
    assert raw[1]["datum_kwargs"] == {"index": 1}  # the reference, kept
    assert sum(fake.naps) == pytest.approx(2.0)  # one deadline for the batch, not one per file
    assert max(fake.naps) <= 0.25
    assert batch.frames.num_rows == 3
    assert batch.readings.num_rows == 3
    assert batch.records == 8  # every external value: a frame, a reading or a reject


def test_a_file_written_late_is_read_when_it_appears(tmp_path: Path) -> None:
    docs = npy_count(tmp_path / "run")
    late = npy_file(docs, 2)
    os.rename(tmp_path / "run" / late, tmp_path / late)
    fake = FakeClock()
    fake.on_nap = lambda n: n == 3 and os.rename(tmp_path / late, tmp_path / "run" / late)
    batch = take(docs, wait=5.0, poll=0.2, clock=fake.clock, sleep=fake.sleep)
    assert not batch.rejects
    assert len(fake.naps) == 3
    want = {k: v for k, v in npy_oracle(docs).items() if k[0] == "img"}
    assert_same(got_frames(batch), want)


def test_an_index_beyond_the_dataset_is_rejected(
    hdf_run: tuple[Docs, Path], tmp_path: Path
) -> None:
    docs = as_written(hdf_run[0])
    bdet = next(d["uid"] for n, d in docs if n == "stream_resource" and d["data_key"] == "bdet")
    datum = next(d for n, d in docs if n == "stream_datum" and d["stream_resource"] == bdet)
    datum["indices"] = {"start": 40, "stop": 41}
    batch = take(docs, wait=0)
    assert reasons(batch) == [("stream_datum", "index_out_of_range")]
    assert "has 4 rows" in batch.rejects[0].detail
    assert bdet in batch.rejects[0].raw
    assert batch.frames.num_rows == 3
    assert batch.records == 12
    # A stream datum of a trillion indices waits, and is refused, in little memory.
    datum.update(indices={"start": 0, "stop": 10**12}, seq_nums={"start": 1, "stop": 10**12 + 1})
    tracemalloc.start()
    batch = take(docs, wait=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert reasons(batch) == [("stream_datum", "index_out_of_range")]
    assert peak < 16 * 2**20
    # An AD_HDF5 datum for a point the file does not have.
    ad = ad_hdf5_run(tmp_path / "ad.h5", np.zeros((3, 2, 2), "<u2"), 1, points=4)
    batch = take(ad, wait=0)
    assert reasons(batch) == [("datum", "index_out_of_range")]
    assert batch.frames.num_rows == 3


def test_a_2gb_declared_frame_is_rejected_without_allocating(
    hdf_run: tuple[Docs, Path], tmp_path: Path
) -> None:
    docs = as_written(hdf_run[0])
    desc = next(d for n, d in docs if n == "descriptor")
    desc["data_keys"]["bdet"].update(shape=[2**16, 2**16, 1], dtype_numpy="<f4")  # 16 GiB
    tracemalloc.start()
    batch = take(docs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert reasons(batch) == [("stream_datum", "oversize")] * 4
    assert "17179869184 bytes" in batch.rejects[0].detail
    assert peak < 16 * 2**20
    assert batch.readings.num_rows == 8  # the motor and the sums still come
    # A file that declares more than it may: a .npy header, an HDF5 dataset (data unwritten).
    npy = npy_count(tmp_path / "npy", num=1)
    with open(tmp_path / "npy" / npy_file(npy, 1), "wb") as f:
        header = {"descr": "<f8", "fortran_order": False, "shape": (2**15, 2**15)}
        np.lib.format.write_array_header_1_0(f, header)
    ad = ad_hdf5_run(tmp_path / "ad.h5", np.zeros((1, 2, 2), "<f4"), 1, points=1)
    with h5py.File(tmp_path / "ad.h5", "w") as f:
        f.create_dataset("/entry/data/data", shape=(1, 2**15, 2**15), dtype="<f4", chunks=True)
    tracemalloc.start()
    batch = take([*npy, *ad])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert reasons(batch) == [("datum", "oversize")] * 2
    assert "8589934592 bytes" in batch.rejects[0].detail  # the .npy header's 8 GiB
    assert "4294967296 bytes" in batch.rejects[1].detail  # the dataset's 4 GiB row
    assert peak < 16 * 2**20


def test_unknown_specs_and_mimetypes_are_rejected_with_their_reference(
    hdf_run: tuple[Docs, Path], tmp_path: Path
) -> None:
    ad = ad_hdf5_run(tmp_path / "ad.h5", np.zeros((2, 2, 2), "<u2"), 1, points=2)
    next(d for n, d in ad if n == "resource")["spec"] = "AD_TIFF"
    batch = take(ad)
    assert reasons(batch) == [("datum", "unsupported_external")] * 2
    assert "'AD_TIFF'" in batch.rejects[0].detail
    assert "ad.h5" in batch.rejects[0].detail
    assert json.loads(batch.rejects[0].raw)[1]["datum_kwargs"] == {"point_number": 0}
    assert [n for n, _ in batch.documents] == [n for n, _ in ad if n != "event"]  # kept whole
    docs = as_written(hdf_run[0])
    sres = next(d for n, d in docs if n == "stream_resource" and d["data_key"] == "bdet")
    sres["mimetype"] = "application/x-zarr"
    batch = take(docs)
    assert reasons(batch) == [("stream_datum", "unsupported_external")] * 4
    assert "application/x-zarr" in batch.rejects[0].detail
    assert sres["uri"] in batch.rejects[0].detail
    assert batch.records == 12


def test_root_map_finds_files_moved_after_the_run(tmp_path: Path) -> None:
    npy = npy_count(tmp_path / "npy-old")
    hdf = blob_scan(tmp_path / "hdf-old")
    want = {**npy_oracle(npy), **hdf_oracle(hdf)}  # read before the move
    for name in ("npy", "hdf"):
        shutil.move(tmp_path / f"{name}-old", tmp_path / f"{name}-new")
    lost = take([*npy, *hdf], wait=0)
    assert {reason for _, reason in reasons(lost)} == {"missing_file"}
    assert lost.frames.num_rows == 0
    root_map = {
        str(tmp_path / "npy-old"): str(tmp_path / "npy-new"),
        f"file://localhost{tmp_path}/hdf-old": str(tmp_path / "hdf-new"),  # a URI works too
    }
    found = take([*npy, *hdf], wait=0, root_map=root_map)
    assert not found.rejects
    frames = {k: v for k, v in want.items() if k[0] in ("img", "bdet")}
    assert_same(got_frames(found), frames)


def test_files_outside_the_allowed_directories_are_not_read(tmp_path: Path) -> None:
    """Documents name the files an ingest reads: with ``allowed`` directories, a file outside
    them (a path elsewhere, or a symlink out of them) is a dead letter, and is not opened."""
    npy = npy_count(tmp_path / "data" / "npy", num=2)
    hdf = blob_scan(tmp_path / "data" / "hdf")
    inside = take([*npy, *hdf], wait=0, allowed=(str(tmp_path / "data"),))
    assert not inside.rejects
    assert inside.frames.num_rows == 2 + 4
    elsewhere = take([*npy, *hdf], wait=0, allowed=(str(tmp_path / "data" / "npy"),))
    assert {r for _, r in reasons(elsewhere)} == {"bad_reference"}
    assert elsewhere.frames.num_rows == 2  # only the .npy frames
    assert all("outside the directories" in r.detail for r in elsewhere.rejects)
    # A link inside the allowed directory to a file outside it is outside.
    (tmp_path / "secret").mkdir()
    target = tmp_path / "data" / "npy" / npy_file(npy, 1)
    shutil.move(target, tmp_path / "secret" / "frame.npy")
    os.symlink(tmp_path / "secret" / "frame.npy", target)
    linked = take(npy, wait=0, allowed=(str(tmp_path / "data"),))
    assert [r for _, r in reasons(linked)] == ["bad_reference"]


def test_bad_payloads_and_references_are_rejected(tmp_path: Path) -> None:
    docs = npy_count(tmp_path, num=2)
    np.save(tmp_path / npy_file(docs, 1), np.array(["abc", "def"]))  # strings: no payload
    resource = next(d for n, d in docs if n == "resource")
    event = next(d for n, d in docs if n == "event")
    desc = next(d for n, d in docs if n == "descriptor")
    stray: Docs = [
        ("datum", {"resource": "no-such-resource", "datum_id": "x/0", "datum_kwargs": {}}),
        ("event", {**event, "uid": "e-2", "data": {**event["data"], "img": "no-such-datum"}}),
        (
            "stream_datum",
            {
                "uid": "sd",
                "stream_resource": "no-such-stream-resource",
                "descriptor": desc["uid"],
                "indices": {"start": 0, "stop": 1},
                "seq_nums": {"start": 1, "stop": 2},
            },
        ),
    ]
    stop = len(docs) - 1
    batch = take([*docs[:stop], *stray, docs[stop]])
    assert reasons(batch) == [
        ("datum", "bad_payload"),
        ("datum", "bad_reference"),
        ("event", "bad_reference"),
        ("stream_datum", "bad_reference"),
    ]
    assert "<U3" in batch.rejects[0].detail
    assert "no-such-datum" in batch.rejects[2].detail
    assert resource["uid"] not in batch.rejects[1].raw
    # 2 events and the stray one, 2 keys each: 6 values, each a frame, a reading or a reject;
    # plus the two stray documents.
    assert batch.records == 6 + 2
