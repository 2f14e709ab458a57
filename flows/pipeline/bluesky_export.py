"""``obsflow bluesky export``: one Bluesky run of a capture back as event-model documents.

Input: the run's stored documents (``start``, ``descriptor``, ``stop``) and its readings in the
capture (``run_uid`` context). Output: JSON lines of ``[name, doc]`` (as suitcase-jsonl writes)
in RunEngine order — start; per descriptor, the descriptor, then per event its stream datums
and the event; stop — and the run's arrays in an HDF5 file beside them (``out`` with suffix
``.h5``), by ``stream_resource``/``stream_datum`` whatever the original reference was
(resource/datum included). Every document is validated with event-model's schemas before
anything is written.

Re-ingesting the export gives the same readings: the run, descriptor and event ``seq_num``
are the originals (so the seqs hash the same), each key keeps its own timestamp, and each
frame is the same array (the same payload sha256). An event's ``seq_num`` is not stored; it is
found again by hashing the candidate seq_nums 1..N of each key (N from the stop document, the
stream datums and the readings) — exact, since the seq is a function of them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from obsflow.connectors.datasets.reads import read_capture
from obsflow.connectors.errors import ConfigError, ObsflowError
from obsflow.connectors.ids import check_name
from obsflow.connectors.payloads.offload import PayloadStore
from obsflow.connectors.sources.bluesky import io as bluesky_io
from obsflow.connectors.sources.bluesky.events import NUMERIC, schema_error, seqs
from obsflow.connectors.storage.layout import CAPTURE_SCHEMA
from obsflow.connectors.storage.store import Store

Doc = tuple[str, dict[str, Any]]
_NAMESPACE = uuid.UUID("6b1f3c52-5c2e-4a51-9d8e-2f4a3c1b7e90")  # obsflow's exports


def export_run(store: Store, capture: str, run_uid: str, out: Path) -> dict[str, Any]:
    """Write run ``run_uid`` of ``capture`` to ``out`` (and its arrays to ``out.h5``); returns
    what was written: documents by name, readings, frames, readings left out (and why)."""
    check_name(capture, kind="capture name")
    check_name(run_uid, kind="run uid")
    stored = bluesky_io.stored_documents(store, capture, run_uid=run_uid)
    start = next((doc for name, doc in stored if name == "start"), None)
    if start is None:
        raise ConfigError(
            f"capture {capture!r} holds no Bluesky run {run_uid!r}: "
            f"`obsflow bluesky runs --capture {capture}` lists them"
        )
    rows = read_capture(
        store, capture, columns=CAPTURE_SCHEMA.names, filter=pc.field("run_uid") == run_uid
    ).to_pandas()
    h5 = out.with_suffix(".h5")
    writer = _Export(run_uid, stored, rows, PayloadStore(store), h5)
    docs = list(writer.documents())
    for name, doc in docs:  # all or nothing: nothing is written unless every document is valid
        problem = schema_error(name, doc)
        if problem:
            raise ObsflowError(f"export of run {run_uid}: an invalid {name} document: {problem}")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer.write_arrays()
    with out.open("w") as f:
        for name, doc in docs:
            f.write(json.dumps([name, doc], separators=(",", ":")) + "\n")
    counts: dict[str, int] = {}
    for name, _ in docs:
        counts[name] = counts.get(name, 0) + 1
    return {
        "run_uid": run_uid,
        "out": str(out),
        "arrays": str(h5) if writer.arrays else None,
        "documents": counts,
        "readings": writer.readings,
        "frames": writer.frames,
        "left_out": writer.left_out,
    }


class _Export:
    def __init__(
        self,
        run_uid: str,
        stored: list[Doc],
        rows: pd.DataFrame,
        payloads: PayloadStore,
        h5: Path,
    ) -> None:
        self.run_uid, self.stored, self.rows, self.payloads, self.h5 = (
            run_uid,
            stored,
            rows,
            payloads,
            h5,
        )
        self.stop = next((doc for name, doc in stored if name == "stop"), None)
        self.arrays: dict[str, list[np.ndarray]] = {}  # dataset -> frames in order
        self.readings = self.frames = 0
        self.left_out: dict[str, int] = {}

    def documents(self) -> Iterator[Doc]:
        yield from ((n, d) for n, d in self.stored if n == "start")
        for name, desc in self.stored:
            if name == "descriptor":
                yield from self._descriptor(desc)
        if self.stop is not None:
            yield "stop", self.stop

    def _leave_out(self, why: str, n: int) -> None:
        if n:
            self.left_out[why] = self.left_out.get(why, 0) + n

    def _descriptor(self, desc: dict[str, Any]) -> Iterator[Doc]:
        rows = self.rows[self.rows["descriptor"] == desc["uid"]]
        keys = desc.get("data_keys", {})
        known = rows["channel"].isin(list(keys))
        self._leave_out("not a data key of the descriptor (a derived feature)", int((~known).sum()))
        rows = rows[known].copy()
        rows["seq_num"] = self._seq_nums(desc, rows)
        placed = rows["seq_num"] > 0
        self._leave_out("no seq_num found for the seq", int((~placed).sum()))
        rows = rows[placed].sort_values(["seq_num", "channel"], kind="stable")
        framed = rows["payload_sha256"].notna()
        array_keys = sorted(set(rows.loc[framed, "channel"]))
        resources = {k: self._stream_resource(desc, k) for k in array_keys}
        yield "descriptor", self._rewritten(desc, rows, array_keys)
        yield from (("stream_resource", r) for r in resources.values())
        for seq_num, event_rows in rows.groupby("seq_num", sort=True):
            data: dict[str, Any] = {}
            stamps: dict[str, float] = {}
            for row in event_rows.itertuples(index=False):
                stamps[row.channel] = row.time.value / 1e9
                if isinstance(row.payload_sha256, str):
                    yield "stream_datum", self._frame(desc, resources[row.channel], row, seq_num)
                    continue
                data[row.channel] = _value(row.value, keys[row.channel].get("dtype"))
                self.readings += 1
            yield (
                "event",
                {
                    "uid": str(uuid.uuid5(_NAMESPACE, f"{desc['uid']}/{seq_num}")),
                    "descriptor": desc["uid"],
                    "seq_num": int(seq_num),
                    "time": min(stamps.values()),
                    "data": data,
                    "timestamps": stamps,
                    "filled": {},
                },
            )

    def _seq_nums(self, desc: dict[str, Any], rows: pd.DataFrame) -> np.ndarray:
        """Each reading's event seq_num (0: none of the candidates hashes to its seq)."""
        n = max(
            int((self.stop or {}).get("num_events", {}).get(desc.get("name", "primary"), 0)),
            int(rows.groupby("channel").size().max()) if len(rows) else 0,
            *(
                int(d["seq_nums"]["stop"]) - 1
                for name, d in self.stored
                if name == "stream_datum" and d.get("descriptor") == desc["uid"]
            ),
        )
        candidates = np.arange(1, n + 1, dtype=np.int64)
        out = np.zeros(len(rows), dtype=np.int64)
        got = rows["seq"].to_numpy(dtype=np.int64)
        for key, at in rows.groupby("channel").indices.items():
            hashed = seqs(self.run_uid, desc["uid"], candidates, str(key))
            order = np.argsort(hashed)
            pos = np.minimum(np.searchsorted(hashed[order], got[at]), n - 1)
            found = hashed[order][pos] == got[at] if n else np.zeros(len(at), bool)
            out[at] = np.where(found, candidates[order][pos] if n else 0, 0)
        return out

    def _rewritten(
        self, desc: dict[str, Any], rows: pd.DataFrame, array_keys: list[str]
    ) -> dict[str, Any]:
        """The descriptor with its arrays as ``STREAM:`` keys (of the exported frames' shape
        and dtype) and external values that were single numbers as plain numbers."""
        doc = json.loads(json.dumps(desc))
        for key, spec in doc.get("data_keys", {}).items():
            if key in array_keys:
                first = rows[(rows["channel"] == key) & rows["payload_sha256"].notna()].iloc[0]
                spec.update(
                    external="STREAM:",
                    dtype="array",
                    dtype_numpy=np.dtype(first.payload_dtype).newbyteorder("<").str,
                    shape=[int(x) for x in first.payload_shape],
                )
            elif spec.get("external"):
                spec.pop("external")
                spec["shape"] = []
                if spec.get("dtype") not in NUMERIC:
                    spec["dtype"] = "number"
                spec.pop("dtype_numpy", None)
        return dict(doc)

    def _stream_resource(self, desc: dict[str, Any], key: str) -> dict[str, Any]:
        dataset = f"/{desc['uid']}/{key}"
        self.arrays[dataset] = []
        return {
            "uid": str(uuid.uuid5(_NAMESPACE, f"{self.run_uid}/{desc['uid']}/{key}")),
            "run_start": self.run_uid,
            "data_key": key,
            "mimetype": "application/x-hdf5",
            "uri": self.h5.resolve().as_uri().replace("file:///", "file://localhost/", 1),
            "parameters": {"dataset": dataset},
        }

    def _frame(
        self, desc: dict[str, Any], resource: dict[str, Any], row: Any, seq_num: int
    ) -> dict[str, Any]:
        frames = self.arrays[resource["parameters"]["dataset"]]
        array = self.payloads.fetch(row._asdict())  # size and sha256 verified
        if frames and (array.shape != frames[0].shape or array.dtype != frames[0].dtype):
            raise ObsflowError(
                f"key {row.channel!r} of descriptor {desc['uid']} has frames of different "
                f"shapes or dtypes ({frames[0].shape} {frames[0].dtype}, then {array.shape} "
                f"{array.dtype}): one HDF5 dataset cannot hold them"
            )
        frames.append(array)
        self.frames += 1
        i = len(frames) - 1
        return {
            "uid": f"{resource['uid']}/{i}",
            "stream_resource": resource["uid"],
            "descriptor": desc["uid"],
            "indices": {"start": i, "stop": i + 1},
            "seq_nums": {"start": int(seq_num), "stop": int(seq_num) + 1},
        }

    def write_arrays(self) -> None:
        if not self.arrays:
            return
        import h5py  # type: ignore[import-untyped,unused-ignore]

        with h5py.File(self.h5, "w") as f:
            for dataset, frames in self.arrays.items():
                f.create_dataset(dataset, data=np.stack(frames))


def _value(value: float, dtype: str | None) -> Any:
    """A reading's value as the descriptor's dtype says (missing: null)."""
    if value is None or np.isnan(value):
        return None
    if dtype == "integer" and float(value).is_integer():
        return int(value)
    if dtype == "boolean":
        return bool(value)
    return float(value)
