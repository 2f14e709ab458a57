"""Bluesky event-model documents as obsflow readings (see docs/decisions/012-bluesky-documents.md).

A ``DocumentStream`` takes the documents of one stream in order (``start``, ``descriptor``,
``event`` / ``event_page``, ``stop``, ...) and gives, per batch of documents:

- readings: one per numeric scalar data key of each event — channel = the data key, time = that
  key's own timestamp, source = the device owning the key (the descriptor's ``object_keys``),
  value, and a ``seq`` that is a 63-bit hash of (run uid, descriptor uid, event seq_num, data
  key): the same event always gives the same readings (re-ingest adds nothing) and two runs
  never share one; with the run uid, stream name and descriptor uid as context columns;
- rejects: documents that cannot become readings, each with a reason (schema-invalid, unknown
  descriptor, event before its run's start);
- the run documents (``start``, ``descriptor``, ``stop``) whole, to be kept with the capture.

Events are taken page-wise (an ``event`` is a page of one), column by column with numpy: the
cost per reading is numpy's, not Python's. Pure: no I/O, no Bytewax.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from obsflow.connectors.dedup import mix

RUN_DOCUMENTS = ("start", "descriptor", "stop")
EVENT_DOCUMENTS = ("event", "event_page")
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
class Reject:
    """A document that gave no readings, and why."""

    name: str
    reason: str  # a code: invalid_document, unknown_descriptor, no_start, not_a_document
    detail: str
    raw: str  # the document as JSON (cut to 4 KiB)


@dataclass(frozen=True)
class Descriptor:
    uid: str
    run_uid: str
    stream: str
    # numeric scalar data key -> the device that owns it
    sources: dict[str, str]


@dataclass
class DocumentBatch:
    readings: pa.Table
    rejects: list[Reject]
    documents: list[tuple[str, dict[str, Any]]]  # run documents, whole, in order
    events: int  # event rows (events and event pages' rows) that gave readings


@dataclass
class DocumentStream:
    """The state of one document stream: the runs started and the descriptors seen."""

    validate: bool = True
    starts: set[str] = field(default_factory=set)
    descriptors: dict[str, Descriptor] = field(default_factory=dict)

    def take(self, pairs: Iterable[tuple[str, Any]]) -> DocumentBatch:
        """Readings, rejects and run documents of ``pairs`` ((name, document), in order)."""
        tables: list[pa.Table] = []
        rejects: list[Reject] = []
        documents: list[tuple[str, dict[str, Any]]] = []
        events = 0
        for name, doc in pairs:
            problem = self._check(name, doc)
            if problem is not None:
                rejects.append(reject(name, doc, *problem))
                continue
            if name == "start":
                self.starts.add(doc["uid"])
            elif name == "descriptor":
                self.descriptors[doc["uid"]] = descriptor_of(doc)
            if name in RUN_DOCUMENTS:
                documents.append((name, doc))
            elif name in EVENT_DOCUMENTS:
                page = as_page(name, doc)
                tables.append(page_readings(page, self.descriptors[page["descriptor"]]))
                events += len(page["seq_num"])
        readings = pa.concat_tables(tables) if tables else READING_SCHEMA.empty_table()
        return DocumentBatch(readings, rejects, documents, events)

    def _check(self, name: str, doc: Any) -> tuple[str, str] | None:
        """(reason, detail) when ``doc`` cannot be taken, else None."""
        if not isinstance(doc, dict):
            return "not_a_document", f"a {name!r} document must be an object"
        if self.validate:
            error = schema_error(name, doc)
            if error is not None:
                return "invalid_document", error
        if name == "descriptor" and doc["run_start"] not in self.starts:
            return "no_start", f"descriptor of run {doc['run_start']!r}, which has no start"
        if name in EVENT_DOCUMENTS and doc["descriptor"] not in self.descriptors:
            return "unknown_descriptor", f"{name} of descriptor {doc['descriptor']!r}, never seen"
        return None


def schema_error(name: str, doc: dict[str, Any]) -> str | None:
    """event-model's JSON-schema verdict on a document: None, or the schema's message."""
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
    for key, spec in doc["data_keys"].items():
        scalar = not spec.get("shape") and not spec.get("external")
        if scalar and spec.get("dtype") in NUMERIC:
            sources[key] = owner.get(key) or spec.get("object_name") or key
    return Descriptor(doc["uid"], doc["run_start"], doc.get("name", "primary"), sources)


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


def page_readings(page: dict[str, Any], desc: Descriptor) -> pa.Table:
    """The readings of an event page: per numeric key present, one per row."""
    seq_num = np.asarray(page["seq_num"], dtype=np.int64)
    n = seq_num.size
    # (run uid, descriptor uid) hashed once; then numpy mixes in the seq_num and the key.
    base = mix(seq_num.astype(np.uint64) ^ np.uint64(_hash(f"{desc.run_uid}\0{desc.uid}")))
    columns: dict[str, list[Any]] = {name: [] for name in READING_SCHEMA.names}
    for key, source in desc.sources.items():
        if key not in page["data"]:
            continue
        values = np.array(page["data"][key], dtype=np.float64)  # None -> NaN (missing)
        stamps = page["timestamps"].get(key, page["time"])
        ns = np.round(np.asarray(stamps, dtype=np.float64) * 1e9).astype(np.int64)
        seq = (mix(base ^ np.uint64(_hash(key))) & _SEQ_MASK).astype(np.int64)
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


def reject(name: str, doc: Any, reason: str, detail: str) -> Reject:
    try:
        raw = json.dumps([name, doc], default=str)
    except (TypeError, ValueError):
        raw = repr(doc)
    return Reject(name, reason, detail, raw[:4096])
