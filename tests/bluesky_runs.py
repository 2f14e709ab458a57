"""Bluesky runs from a real RunEngine, shared by the tests, and plain readings of them.

Documents go through JSON as suitcase-jsonl writes them. ``scan_and_count``: a scan of
``det`` over ``motor`` and a count of ``det1``, ``det2`` (ophyd.sim); ``npy_count``: an image
and a number saved as .npy files by resource/datum; ``blob_scan``: ophyd-async's simulated blob
detector writing HDF5 by stream_resource/stream_datum. The oracles read the documents and the
files by hand, not through obsflow.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import urlsplit

import bluesky.plan_stubs as bps
import event_model
import h5py
import numpy as np
import pandas as pd
from bluesky import RunEngine
from bluesky.plans import count, scan
from ophyd.sim import SynSignalWithRegistry, det, det1, det2, motor
from ophyd_async import sim
from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider, init_devices

from obsflow.connectors.sources.bluesky.events import seq_of

Docs = list[tuple[str, dict[str, Any]]]


def as_written(docs: Docs) -> Docs:
    """Documents as suitcase-jsonl writes and a reader gets them back: through JSON."""
    text = json.dumps(docs, cls=event_model.NumpyEncoder)
    return [(name, doc) for name, doc in json.loads(text)]


def recorded(engine: RunEngine, plan: Any) -> Docs:
    docs: Docs = []
    token = engine.subscribe(lambda name, doc: docs.append((name, doc)))
    engine(plan)
    engine.unsubscribe(token)
    return as_written(docs)


def scan_and_count() -> Docs:
    """Two runs of one RunEngine: a scan of a detector over a motor, a count of two."""
    engine = RunEngine({})
    docs = recorded(engine, scan([det], motor, -1, 1, 7))
    return docs + recorded(engine, count([det1, det2], num=5))


def write_jsonl(docs: Docs, path: Path, *, objects: bool = False) -> Path:
    """Documents as JSON lines: ``[name, doc]`` (suitcase-jsonl), or ``{"name", "doc"}``."""
    with path.open("w") as f:
        for name, doc in docs:
            item: Any = {"name": name, "doc": doc} if objects else [name, doc]
            f.write(json.dumps(item, cls=event_model.NumpyEncoder) + "\n")
    return path


def write_msgpack(docs: Docs, path: Path) -> Path:
    """Documents as a msgpack stream, one ``[name, doc]`` each (as bluesky-kafka packs them)."""
    import msgpack

    with path.open("wb") as f:
        for pair in docs:
            f.write(msgpack.packb(list(pair)))
    return path


def blob_scan(where: Path) -> Docs:
    """A scan of ophyd-async's simulated blob detector over a simulated motor: HDF5 frames
    (and their sums) by stream_resource/stream_datum, the motor as events."""
    where.mkdir(parents=True, exist_ok=True)
    engine = RunEngine({})
    patterns = sim.PatternGenerator()
    with init_devices():
        stage = sim.SimStage(patterns)
        bdet = sim.SimBlobDetector(
            StaticPathProvider(UUIDFilenameProvider(), PurePath(where)), patterns
        )
    engine(bps.mv(stage.x.velocity, 0))  # moves at once
    return recorded(engine, scan([bdet], stage.x, -2, 2, 4))


def npy_count(where: Path, num: int = 4) -> Docs:
    """A count of an image (uint16 frames) and a number, each saved as one .npy per datum."""
    where.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(15)
    img = SynSignalWithRegistry(
        func=lambda: rng.integers(0, 60000, (6, 8)).astype(np.uint16),
        name="img",
        save_path=str(where),
    )
    energy = SynSignalWithRegistry(func=lambda: rng.random(), name="energy", save_path=str(where))
    return recorded(RunEngine({}), count([img, energy], num=num))


def by_uid(docs: Docs, name: str, uid: str = "uid") -> dict[str, dict[str, Any]]:
    return {doc[uid]: doc for n, doc in docs if n == name}


def npy_oracle(docs: Docs) -> dict[tuple[str, int], tuple[int, np.ndarray]]:
    """(key, seq) -> (time ns, np.load of its file) for every external key of every event."""
    datums = by_uid(docs, "datum", "datum_id")
    resources = by_uid(docs, "resource")
    descriptors = by_uid(docs, "descriptor")
    want = {}
    for name, event in docs:
        if name != "event":
            continue
        desc = descriptors[event["descriptor"]]
        for key, datum_id in event["data"].items():
            datum = datums[datum_id]
            resource = resources[datum["resource"]]
            path = (
                f"{resource['root']}/{resource['resource_path']}_{datum['datum_kwargs']['index']}"
            )
            seq = seq_of(desc["run_start"], desc["uid"], event["seq_num"], key)
            stamp = round(event["timestamps"][key] * 1e9)
            want[key, seq] = (stamp, np.load(path + ".npy"))
    return want


def hdf_oracle(docs: Docs, per_event: int = 0) -> dict[tuple[str, int], tuple[int, np.ndarray]]:
    """(key, seq) -> (time ns of the event of its seq_num, its row of the dataset); with
    ``per_event`` collections per event (a fly scan: no events), that many rows per index at
    the descriptor's time."""
    resources = by_uid(docs, "stream_resource")
    descriptors = by_uid(docs, "descriptor")
    event_time = {(d["descriptor"], d["seq_num"]): d["time"] for n, d in docs if n == "event"}
    want = {}
    for name, datum in docs:
        if name != "stream_datum":
            continue
        resource = resources[datum["stream_resource"]]
        desc = descriptors[datum["descriptor"]]
        key = resource["data_key"]
        with h5py.File(urlsplit(resource["uri"]).path, "r", swmr=True) as f:
            rows = f[resource["parameters"]["dataset"]][()]
        seq_nums = range(datum["seq_nums"]["start"], datum["seq_nums"]["stop"])
        indices = range(datum["indices"]["start"], datum["indices"]["stop"])
        for seq_num, index in zip(seq_nums, indices, strict=True):
            seq = seq_of(desc["run_start"], desc["uid"], seq_num, key)
            if per_event:
                stamp = round(desc["time"] * 1e9)
                want[key, seq] = (stamp, rows[index * per_event : (index + 1) * per_event])
            else:
                stamp = round(event_time[datum["descriptor"], seq_num] * 1e9)
                want[key, seq] = (stamp, rows[index])
    return want


def scalar_oracle(docs: Docs) -> pd.DataFrame:
    """What the readings must be, by reading the documents plainly: every numeric scalar
    value of every event, its own timestamp, its device."""
    owner: dict[str, dict[str, str]] = {}
    numeric: dict[str, set[str]] = {}
    runs: dict[str, tuple[str, str]] = {}
    rows = []
    for name, doc in docs:
        if name == "descriptor":
            owner[doc["uid"]] = {k: d for d, ks in doc["object_keys"].items() for k in ks}
            numeric[doc["uid"]] = {
                k
                for k, spec in doc["data_keys"].items()
                if spec["dtype"] in ("number", "integer")
                and not spec["shape"]
                and not spec.get("external")
            }
            runs[doc["uid"]] = (doc["run_start"], doc["name"])
        elif name == "event":
            d = doc["descriptor"]
            for key in numeric[d]:
                rows.append(
                    {
                        "source": owner[d][key],
                        "channel": key,
                        "time": pd.Timestamp(round(doc["timestamps"][key] * 1e9), tz="UTC"),
                        "value": float(doc["data"][key]),
                        "run_uid": runs[d][0],
                        "stream": runs[d][1],
                        "seq_num": doc["seq_num"],
                    }
                )
    return pd.DataFrame(rows)


def npy_file(docs: Docs, seq_num: int, key: str = "img") -> str:
    """The file name (under its resource's root) of the datum ``key`` of event ``seq_num``."""
    datums = by_uid(docs, "datum", "datum_id")
    resources = by_uid(docs, "resource")
    event = next(d for n, d in docs if n == "event" and d["seq_num"] == seq_num)
    datum = datums[event["data"][key]]
    resource = resources[datum["resource"]]
    return f"{resource['resource_path']}_{datum['datum_kwargs']['index']}.npy"
