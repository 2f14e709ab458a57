"""Bluesky events as obsflow readings: descriptors, event pages and the seqs of their values
(decision 012; the stream of documents around them is ``bluesky.documents``).

A reading is one numeric scalar data key of one event; its ``seq`` is a 63-bit hash of (run
uid, descriptor uid, event seq_num, data key), so the same event always gives the same
readings and two runs never share one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from obsflow.connectors.algorithms.dedup import mix
from obsflow.connectors.sources.bluesky.external import Declared

NUMERIC = ("number", "integer", "boolean")
CONTEXT = ("run_uid", "stream", "descriptor")
READING_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("seq", pa.int64()),
        pa.field("time", pa.timestamp("ns", "UTC")),
        pa.field("channel", pa.string()),
        pa.field("value", pa.float64()),
        *(pa.field(name, pa.string()) for name in CONTEXT),
    ]
)


_SEQ_MASK = np.uint64(2**63 - 1)


@dataclass(frozen=True)
class External:
    """An external data key of a descriptor."""

    source: str
    declared: Declared
    streamed: bool  # "STREAM:" (stream_datum documents), else datum ids in the events


@dataclass(frozen=True)
class Descriptor:
    uid: str
    run_uid: str
    stream: str
    # numeric scalar data key -> the device that owns it
    sources: dict[str, str]
    externals: dict[str, External] = field(default_factory=dict)
    time_ns: int = 0


def to_ns(seconds: Any) -> int:
    return round(float(seconds) * 1e9)


_EVENT_KEYS = frozenset({"data", "timestamps", "time", "descriptor", "seq_num", "uid"})


def _plainly_valid_event(doc: Any) -> bool:
    """True only for an event the schema certainly accepts (most of them, at a fraction of
    jsonschema's cost); anything else goes to the schema, which has the last word."""
    if not isinstance(doc, dict) or not (_EVENT_KEYS <= doc.keys() <= _EVENT_KEYS | {"filled"}):
        return False
    time, seq_num, filled = doc["time"], doc["seq_num"], doc.get("filled", {})
    return (
        isinstance(doc["data"], dict)
        and isinstance(doc["timestamps"], dict)
        and isinstance(doc["descriptor"], str)
        and isinstance(doc["uid"], str)
        and type(seq_num) is int
        and type(time) in (int, float)
        and isinstance(filled, dict)
        and all(isinstance(v, bool | str) for v in filled.values())
    )


def schema_error(name: str, doc: dict[str, Any]) -> str | None:
    """event-model's JSON-schema verdict on a document: None, or the schema's message."""
    if name == "event" and _plainly_valid_event(doc):
        return None
    from event_model import DocumentNames, schema_validators

    try:
        kind = DocumentNames(name)
    except ValueError:
        return f"{name!r} is no event-model document name"
    errors = list(schema_validators[kind].iter_errors(doc))
    if not errors:
        return None
    first = errors[0]
    where = "/".join(map(str, first.absolute_path)) or "the document"
    return f"{where}: {first.message}"[:500]


def descriptor_of(doc: dict[str, Any]) -> Descriptor:
    owner = {key: device for device, keys in doc.get("object_keys", {}).items() for key in keys}
    sources = {}
    externals = {}
    for key, spec in doc["data_keys"].items():
        source = owner.get(key) or spec.get("object_name") or key
        external = spec.get("external") or ""
        if external:
            streamed = external.startswith("STREAM")
            externals[key] = External(source, Declared.of(spec), streamed)
        elif not spec.get("shape") and spec.get("dtype") in NUMERIC:
            sources[key] = source
    return Descriptor(
        doc["uid"],
        doc["run_start"],
        doc.get("name", "primary"),
        sources,
        externals,
        to_ns(doc.get("time", 0)),
    )


def as_page(name: str, doc: dict[str, Any]) -> dict[str, Any]:
    """An event page (an event is a page of one)."""
    if name == "event_page":
        return doc
    return {
        "descriptor": doc["descriptor"],
        "seq_num": [doc["seq_num"]],
        "time": [doc["time"]],
        "data": {k: [v] for k, v in doc["data"].items()},
        "timestamps": {k: [v] for k, v in doc["timestamps"].items()},
    }


def same_page(first: dict[str, Any], doc: dict[str, Any]) -> bool:
    """Whether ``doc`` can join a page begun by ``first``: one descriptor, the same keys."""
    return bool(
        doc["descriptor"] == first["descriptor"]
        and doc["data"].keys() == first["data"].keys()
        and doc["timestamps"].keys() == first["timestamps"].keys()
    )


def pack_events(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Consecutive events of one descriptor with the same keys as one event page, so that a
    stream of single events is converted column by column like a page (same readings)."""
    first = events[0]
    return {
        "descriptor": first["descriptor"],
        "uid": [e["uid"] for e in events],
        "seq_num": [e["seq_num"] for e in events],
        "time": [e["time"] for e in events],
        "data": {k: [e["data"][k] for e in events] for k in first["data"]},
        "timestamps": {k: [e["timestamps"][k] for e in events] for k in first["timestamps"]},
    }


def seqs(run_uid: str, descriptor_uid: str, seq_num: NDArray[Any], key: str) -> NDArray[np.int64]:
    """The seq of data key ``key`` in the events ``seq_num`` of a descriptor (decision 012)."""
    base = mix(
        np.asarray(seq_num, np.int64).astype(np.uint64)
        ^ np.uint64(_hash(f"{run_uid}\0{descriptor_uid}"))
    )
    out: NDArray[np.int64] = (mix(base ^ np.uint64(_hash(key))) & _SEQ_MASK).astype(np.int64)
    return out


def seq_of(run_uid: str, descriptor_uid: str, seq_num: int, key: str) -> int:
    """The seq of one value: ``seqs`` of one event."""
    return int(seqs(run_uid, descriptor_uid, np.array([seq_num]), key)[0])


def page_readings(page: dict[str, Any], desc: Descriptor) -> pa.Table:
    """The readings of an event page: per numeric key present, one per row."""
    seq_num = np.asarray(page["seq_num"], dtype=np.int64)
    n = seq_num.size
    columns: dict[str, list[Any]] = {name: [] for name in READING_SCHEMA.names}
    for key, source in desc.sources.items():
        if key not in page["data"]:
            continue
        values = np.array(page["data"][key], dtype=np.float64)  # None -> NaN (missing)
        stamps = page["timestamps"].get(key, page["time"])
        ns = np.round(np.asarray(stamps, dtype=np.float64) * 1e9).astype(np.int64)
        seq = seqs(desc.run_uid, desc.uid, seq_num, key)
        columns["source"].append(pa.repeat(pa.scalar(source, pa.string()), n))
        columns["seq"].append(pa.array(seq, pa.int64()))
        columns["time"].append(pa.array(ns, pa.int64()).cast(pa.timestamp("ns", "UTC")))
        columns["channel"].append(pa.repeat(pa.scalar(key, pa.string()), n))
        columns["value"].append(pa.array(values, pa.float64()))
        for name, text in zip(CONTEXT, (desc.run_uid, desc.stream, desc.uid), strict=True):
            columns[name].append(pa.repeat(pa.scalar(text, pa.string()), n))
    if not columns["seq"]:
        return READING_SCHEMA.empty_table()
    return pa.table(
        {name: pa.concat_arrays(parts) for name, parts in columns.items()}, schema=READING_SCHEMA
    )


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
