"""Payloads through ingest: references in the capture, objects in the store, verified fetch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from obsflow.connectors.datasets.reads import read_capture
from obsflow.connectors.payloads.offload import PayloadCorruptError, PayloadStore, payload_key
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main
from tests.delta import table_frame

FRAME = "frame:1024x2048:uint16"  # 4 MiB per frame


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sources, 4 frames each, plus small inline waveforms and scalar channels."""
    path = tmp_path_factory.mktemp("frames") / "frames.parquet"
    assert (
        main(
            [
                "simulate",
                str(path),
                "--sources",
                "2",
                "--rate",
                "1",
                "--duration",
                "8s",
                "--payload",
                FRAME,
                "--payload",
                "wave:100:float32",
                "--payload-rate",
                "0.5",
            ]
        )
        == 0
    )
    return path


def originals(path: Path) -> dict[tuple[str, int], np.ndarray]:
    t = pq.read_table(path).to_pandas()
    t = t[t["payload"].notna()]
    return {
        (r.source, r.seq): np.frombuffer(r.payload, dtype=r.payload_dtype).reshape(
            tuple(r.payload_shape)
        )
        for r in t.itertuples()
    }


def payload_objects(store: Store) -> dict[str, float]:
    return {
        rel: store.fs.info(store.path(rel)).get("LastModified", 0) or 0
        for rel in store.walk_files("payloads")
    }


def ingest(path: Path, url: str, capture: str, tmp_path: Path) -> dict:
    summary = tmp_path / f"{capture}.json"
    assert (
        main(
            [
                "ingest",
                str(path),
                "--store",
                url,
                "--capture",
                capture,
                "--features",
                "mean,max",
                "--summary",
                str(summary),
                "-q",
            ]
        )
        == 0
    )
    return json.loads(summary.read_text())


def check_store(path: Path, url: str, tmp_path: Path) -> None:
    store = Store(url)
    s = ingest(path, url, "frames", tmp_path)
    want = originals(path)
    frames = [k for k, a in want.items() if a.nbytes > 64 * 1024]
    assert len(frames) == 8
    assert s["payloads"] == 16  # 8 frames + 8 waves
    assert s["derived"] == 32  # 2 features each
    assert s["input"] == s["accepted"] + s["rejected"] + s["duplicates"]
    cap = read_capture(store, "frames", payloads=True).to_pandas()
    refs = cap[cap["payload_sha256"].notna()]
    assert len(refs) == 16
    # Frames are references, not bytes; the small waveforms stay inline.
    big = refs[refs["channel"] == "frame"]
    assert big["payload_inline"].isna().all()
    assert set(big["payload_codec"]) <= {"none", "zstd", "zstd-shuffle"}
    assert (big["payload_raw_size"] == 4 * 2**20).all()
    small = refs[refs["channel"] == "wave"]
    assert (small["payload_codec"] == "inline").all()
    assert small["payload_inline"].map(len).eq(400).all()
    # Every referenced object exists; only frames have objects.
    assert all(store.exists(payload_key(sha)) for sha in big["payload_sha256"])
    assert len(payload_objects(store)) == 8
    # The fetch API returns arrays equal to the originals (verified on the way).
    pstore = PayloadStore(store)
    for row in refs.to_dict("records"):
        got = pstore.fetch(row)
        np.testing.assert_array_equal(got, want[(row["source"], row["seq"])])
    # Features are readings like any other, next to their payload reading.
    feats = cap[cap["channel"] == "frame.mean"].set_index(["source", "time"])["value"]
    for row in big.itertuples():
        assert feats[(row.source, row.time)] == pytest.approx(
            want[(row.source, row.seq)].mean(), rel=1e-12
        )
    # The same payloads ingested again (another capture) write no new payload object.
    before = payload_objects(store)
    ingest(path, url, "again", tmp_path)
    assert payload_objects(store) == before


def test_frames_through_moto_s3(frames: Path, s3_env: str, tmp_path: Path) -> None:
    check_store(frames, f"s3://{s3_env}/obs", tmp_path)


def test_frames_through_seaweedfs(frames: Path, seaweed_env: str, tmp_path: Path) -> None:
    check_store(frames, f"s3://{seaweed_env}/obs", tmp_path)


def test_corrupt_and_truncated_objects_are_caught(
    frames: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = str(tmp_path / "store")
    ingest(frames, url, "frames", tmp_path)
    store = Store(url)
    objects = sorted(payload_objects(store))
    assert main(["capture", "verify", "frames", "--store", url]) == 0
    flipped, cut, gone = objects[0], objects[1], objects[2]
    data = bytearray(store.read_bytes(flipped))
    data[-10] ^= 0xFF
    store.write_bytes(flipped, bytes(data))
    store.write_bytes(cut, store.read_bytes(cut)[:-100])
    store.delete(gone)
    capsys.readouterr()
    assert main(["capture", "verify", "frames", "--store", url]) == 1
    report = capsys.readouterr()
    assert "3 dangling or corrupt" in report.err
    for rel in (flipped, cut, gone):
        assert rel.rsplit("/", 1)[1] in report.out
    cap = read_capture(store, "frames", payloads=True).to_pandas()
    row = cap[cap["payload_sha256"] == flipped.rsplit("/", 1)[1]].iloc[0].to_dict()
    with pytest.raises(PayloadCorruptError, match=r"sha256|decompress"):
        PayloadStore(store).fetch(row)
    out = tmp_path / "x.npy"
    assert main(["payload", "get", cut.rsplit("/", 1)[1], "--store", url, "-o", str(out)]) == 2
    assert not out.exists()


def test_bad_payloads_are_dead_letters(tmp_path: Path) -> None:
    good = np.arange(6, dtype="<u2").tobytes()
    table = pa.table(
        {
            "source": ["s", "s", "s", "s"],
            "time": [1, 2, 3, 4],
            "value": [None, None, None, None],
            "channel": ["img"] * 4,
            "payload": pa.array([good, good[:5], good, good], pa.large_binary()),
            "payload_dtype": ["uint16", "uint16", "object", "uint16"],
            "payload_shape": pa.array(
                [[2, 3], [2, 3], [2, 3], [2**40, 2**40]], pa.list_(pa.int64())
            ),
        }
    )
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    summary = tmp_path / "s.json"
    assert (
        main(
            ["ingest", str(path), "--store", str(tmp_path / "st"), "--summary", str(summary), "-q"]
        )
        == 0
    )
    s = json.loads(summary.read_text())
    assert (s["accepted"], s["rejected"]) == (1, 3)
    assert s["rejected_by_reason"] == {"bad_payload": 2, "oversize": 1}
    dead = table_frame(tmp_path / "st" / "deadletter").sort_values("row")
    assert dead["reason"].tolist() == ["bad_payload", "bad_payload", "oversize"]
    assert dead["row"].tolist() == [1, 2, 3]


def test_chunked_payloads_reassemble_in_any_order_and_incomplete_sets_are_kept(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(3)
    arrays = {cid: rng.integers(0, 4000, size=(64, 50), dtype=np.uint16) for cid in "ABC"}
    counts = {"A": 4, "B": 3, "C": 3}
    rows = []
    for k, cid in enumerate("ABC"):
        raw = arrays[cid].tobytes()
        pieces = np.array_split(np.frombuffer(raw, np.uint8), counts[cid])
        order = rng.permutation(counts[cid])
        for i in order:
            if cid == "C" and i == 1:
                continue  # C never completes
            rows.append(
                {
                    "source": "det",
                    "seq": 10 * k + int(i),
                    "time": 1_000 + k,
                    "channel": "frame",
                    "value": None,
                    "payload": pieces[i].tobytes(),
                    "payload_dtype": "uint16",
                    "payload_shape": [64, 50],
                    "chunk_id": cid,
                    "chunk_index": int(i),
                    "chunk_count": counts[cid],
                }
            )
    rows.insert(3, {"source": "det", "seq": 100, "time": 900, "channel": "temp", "value": 1.5})
    rows.append({"source": "det", "seq": 101, "time": 2_000, "channel": "temp", "value": 2.5})
    path = tmp_path / "chunks.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    summary = tmp_path / "s.json"
    url = str(tmp_path / "st")
    assert (
        main(
            [
                "ingest",
                str(path),
                "--store",
                url,
                "--inline-limit",
                "0",
                "--summary",
                str(summary),
                "-q",
            ]
        )
        == 0
    )
    s = json.loads(summary.read_text())
    # 11 input rows; 7 chunks joined into 2 readings: 6 records = 4 accepted + 2 rejected.
    assert (s["input"], s["accepted"], s["rejected"], s["duplicates"]) == (6, 4, 2, 0)
    assert s["rejected_by_reason"] == {"chunk_expired": 2}
    store = Store(url)
    cap = read_capture(store, "default", payloads=True).to_pandas()
    frames = cap[cap["channel"] == "frame"].sort_values("seq")
    assert frames["seq"].tolist() == [0, 10]  # the reading takes chunk 0's fields
    pstore = PayloadStore(store)
    for cid, row in zip("AB", frames.to_dict("records"), strict=True):
        np.testing.assert_array_equal(pstore.fetch(row), arrays[cid])
    dead = table_frame(tmp_path / "st" / "deadletter").sort_values("row")
    assert dead["reason"].tolist() == ["chunk_expired", "chunk_expired"]
    kept = [json.loads(r) for r in dead["raw"]]
    assert sorted(k["chunk_index"] for k in kept) == [0, 2]
    assert all(k["chunk_id"] == "C" for k in kept)
    pieces = np.array_split(np.frombuffer(arrays["C"].tobytes(), np.uint8), 3)
    for k in kept:  # the incomplete set's chunks are kept, byte for byte
        np.testing.assert_array_equal(pstore.fetch(k), pieces[k["chunk_index"]])
