"""Bluesky event-model documents as obsflow readings (see docs/decisions/012-bluesky-documents.md).

A ``DocumentStream`` takes the documents of one stream in order (``start``, ``descriptor``,
``event`` / ``event_page``, ``resource``, ``datum`` / ``datum_page``, ``stream_resource``,
``stream_datum``, ``stop``) and gives, per batch of documents, a ``DocumentBatch``:

- readings: one per numeric scalar data key of each event — channel = the data key, time = that
  key's own timestamp, source = the device owning the key (the descriptor's ``object_keys``),
  value, and a ``seq`` that is a 63-bit hash of (run uid, descriptor uid, event seq_num, data
  key): the same event always gives the same readings (re-ingest adds nothing) and two runs
  never share one; with the run uid, stream name and descriptor uid as context columns;
- frames: one per array of external data — the datum an event's external key names, or one
  index of a ``stream_datum`` — read from its file (``bluesky_external``), as raw payload bytes
  (``payload``, ``payload_dtype``, ``payload_shape``) with the source, channel, seq and context a
  reading of that key and seq_num would have. An external value that is one real number (a
  streamed sum, a ``()`` array) becomes a reading instead. Frame time: a datum's is its key's
  timestamp in the event; a stream datum's is the time of the event of its seq_num in its
  descriptor, which the RunEngine emits right after it (the frames wait for it), else — no such
  event comes, as in fly scans, where ``collect`` emits none — the descriptor's time, decided
  when a later event or stream datum of that descriptor, or the run's stop, passes the seq_num.
  So the same documents give the same rows however they are batched;
- rejects: documents or external values that give nothing, each with a reason code
  (``Reject.reason``);
- documents: the run and asset documents whole, in order, to be kept with the capture (a stream
  datum when it comes). One whose uid is known already is skipped (``redelivered``).

Counting: an input record is a reading (scalar or frame) or a reject (a document, a datum's
value, or a whole stream datum); ``DocumentBatch.records`` is their sum. Run and asset
documents are metadata, counted apart.

Restart: ``prime`` teaches a fresh stream the run and asset documents stored before, without
emitting them. A stream datum is stored when it comes, and a ``SETTLED`` note with its frames
once their times are known; a primed stream waits again for the stream datums without one, so
frames whose event had not come before a crash are made when it comes again.

Events are taken page-wise (an ``event`` is a page of one), column by column with numpy: the
cost per scalar reading is numpy's, not Python's; a frame costs a file read. ``take`` reads
files, and waits for missing ones at most ``resolver.wait`` seconds per batch. No Bytewax.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from obsflow.connectors.sources.bluesky.events import (
    READING_SCHEMA,
    Descriptor,
    as_page,
    descriptor_of,
    pack_events,
    page_readings,
    same_page,
    schema_error,
    seq_of,
    to_ns,
)
from obsflow.connectors.sources.bluesky.external import (
    ASSET_DOCUMENTS,
    ExternalError,
    ExternalResolver,
)

RUN_DOCUMENTS = ("start", "descriptor", "stop")
SETTLED = "_settled"
"""A stored note (not an event-model document): a stream datum's frames were made. Committed
with the frames, it tells a primed stream which stream datums still wait."""
EVENT_DOCUMENTS = ("event", "event_page")
FRAME_SCHEMA = pa.schema(
    [
        *READING_SCHEMA,
        pa.field("payload", pa.binary()),  # the array's bytes, C order, little-endian
        pa.field("payload_dtype", pa.string()),  # a payload_format.DTYPES name
        pa.field("payload_shape", pa.list_(pa.int64())),
    ]
)


@dataclass(frozen=True)
class Reject:
    """A document, or an external value, that gave no readings, and why."""

    name: str  # the document's name (for an external value: the datum or stream_datum's)
    # a code: invalid_document, unknown_descriptor, no_start, not_a_document, and for external
    # data unsupported_external, missing_file, index_out_of_range, oversize, bad_reference,
    # bad_payload
    reason: str
    detail: str
    raw: str  # the document as JSON (cut to 4 KiB)


@dataclass
class Waiting:
    """A stream datum whose frames wait for the times of their seq_nums.

    Seq_nums below ``decided`` have theirs: the time of their event when ``times`` has it, else
    their descriptor's (no event came). Memory is per event seen, not per seq_num declared.
    """

    doc: dict[str, Any]
    key: str
    decided: int
    times: dict[int, int] = field(default_factory=dict)  # seq_num -> its event's time (ns)
    known: bool = False  # stored before (delivered again, or primed): not stored again

    @property
    def stop(self) -> int:
        return int(self.doc["seq_nums"]["stop"])


@dataclass
class DocumentBatch:
    readings: pa.Table  # READING_SCHEMA: scalar keys, and external values that are one number
    rejects: list[Reject]
    documents: list[tuple[str, dict[str, Any]]]  # run and asset documents, whole, in order
    events: int  # event rows (events and event pages' rows) taken
    frames: pa.Table = field(default_factory=FRAME_SCHEMA.empty_table)  # FRAME_SCHEMA
    redelivered: int = 0  # run and asset documents skipped: their uid was known already

    @property
    def records(self) -> int:
        """Input records: readings (scalar or frame) plus rejects."""
        return int(self.readings.num_rows + self.frames.num_rows) + len(self.rejects)


@dataclass
class DocumentStream:
    """The state of one document stream: runs, descriptors, asset documents, waiting frames.

    ``resolver`` reads the external data (its ``root_map``, ``max_bytes`` and ``wait``).
    """

    validate: bool = True
    resolver: ExternalResolver = field(default_factory=ExternalResolver)
    starts: set[str] = field(default_factory=set)
    descriptors: dict[str, Descriptor] = field(default_factory=dict)
    stops: set[str] = field(default_factory=set)
    waiting: list[Waiting] = field(default_factory=list)
    settled: set[str] = field(default_factory=set)  # stream datums whose frames were made

    def take(self, pairs: Iterable[tuple[str, Any]]) -> DocumentBatch:
        """Readings, frames, rejects and documents of ``pairs`` ((name, document), in order)."""
        out = _Out()
        pending: list[dict[str, Any]] = []  # consecutive events of one descriptor and keys
        with self.resolver.reading():
            for name, doc in pairs:
                if name == "event" and self._check(name, doc, validate=self.validate) is None:
                    if pending and not same_page(pending[0], doc):
                        self._take("event_page", pack_events(pending), out, checked=True)
                        pending = []
                    pending.append(doc)
                    continue
                if pending:
                    self._take("event_page", pack_events(pending), out, checked=True)
                    pending = []
                self._take(name, doc, out)
            if pending:
                self._take("event_page", pack_events(pending), out, checked=True)
        return out.batch()

    def prime(self, pairs: Iterable[tuple[str, Any]]) -> int:
        """Learn the documents stored earlier, emitting nothing; how many were new.

        Events, and documents that do not fit (orphans, non-documents), are passed over. Stream
        datums stored without a ``SETTLED`` note (their frames were not made: their events had
        not come before a crash) wait again; the events come again from the input.
        """
        learned = 0
        streamed: list[dict[str, Any]] = []
        for name, doc in pairs:
            if name == SETTLED and isinstance(doc, dict):
                self.settled.add(str(doc.get("uid")))
                learned += 1
                continue
            if not isinstance(doc, dict) or name not in (*RUN_DOCUMENTS, *ASSET_DOCUMENTS):
                continue
            if self._check(name, doc, validate=False) is not None or self._known(name, doc):
                continue
            try:
                self._learn(name, doc)
            except (ExternalError, KeyError, TypeError):
                continue
            if name == "stream_datum":
                streamed.append(doc)
            learned += 1
        for doc in streamed:
            if doc["uid"] not in self.settled:
                key = self.resolver.stream_resource_of(doc)["data_key"]
                first = int(doc["seq_nums"]["start"])
                self.waiting.append(Waiting(doc, key, decided=first, known=True))
        return learned

    # --- one document ---------------------------------------------------------------------------

    def _take(self, name: str, doc: Any, out: _Out, *, checked: bool = False) -> None:
        problem = None if checked else self._check(name, doc, validate=self.validate)
        if problem is not None:
            out.rejects.append(reject(name, doc, *problem))
            return
        if self._known(name, doc):
            out.redelivered += 1
            if (
                name == "stream_datum"
                and doc["uid"] not in self.settled
                and not any(w.doc["uid"] == doc["uid"] for w in self.waiting)
            ):  # stored, its frames not made yet: they wait again (the document is not stored)
                self._stream_datum(doc, out, known=True)
            return
        if name in EVENT_DOCUMENTS:
            page = as_page(name, doc)
            desc = self.descriptors[page["descriptor"]]
            out.tables.append(page_readings(page, desc))
            out.events += len(page["seq_num"])
            self._datum_values(page, desc, out)
            self._events_pass(page, desc, out)
            return
        if name == "stream_datum":
            self._stream_datum(doc, out)
            return
        try:
            self._learn(name, doc)
        except ExternalError as exc:
            out.rejects.append(reject(name, doc, exc.reason, str(exc)))
            return
        if name == "stop":  # what still waits gets no event
            for w in [w for w in self.waiting if self._run_of(w) == doc["run_start"]]:
                w.decided = w.stop
                self._settle(w, out)
        out.documents.append((name, doc))

    def _check(self, name: str, doc: Any, *, validate: bool) -> tuple[str, str] | None:
        """(reason, detail) when ``doc`` cannot be taken, else None."""
        if not name:
            return "not_a_document", 'a document comes as [name, doc] or {"name": .., "doc": ..}'
        if not isinstance(doc, dict):
            return "not_a_document", f"a {name!r} document must be an object"
        if validate:
            error = schema_error(name, doc)
            if error is not None:
                return "invalid_document", error
        if name not in (*RUN_DOCUMENTS, *EVENT_DOCUMENTS, *ASSET_DOCUMENTS):
            return "invalid_document", f"{name!r} is no document obsflow takes"
        run = doc.get("run_start") if name != "stop" else None
        if run is not None and run != "" and run not in self.starts:
            return "no_start", f"{name} of run {run!r}, which has no start"
        descriptor = doc.get("descriptor") if name in ("stream_datum", *EVENT_DOCUMENTS) else None
        if descriptor is not None and descriptor not in self.descriptors:
            return "unknown_descriptor", f"{name} of descriptor {descriptor!r}, never seen"
        return None

    def _known(self, name: str, doc: dict[str, Any]) -> bool:
        run_documents = {"start": self.starts, "descriptor": self.descriptors, "stop": self.stops}
        if name in run_documents:
            return doc["uid"] in run_documents[name]
        if name == "stream_datum" and any(w.doc["uid"] == doc["uid"] for w in self.waiting):
            return True
        return self.resolver.knows(name, doc)

    def _learn(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            self.starts.add(doc["uid"])
        elif name == "descriptor":
            self.descriptors[doc["uid"]] = descriptor_of(doc)
        elif name == "stop":
            self.stops.add(doc["uid"])
        elif name in ASSET_DOCUMENTS:
            self.resolver.remember(name, doc)

    def _run_of(self, w: Waiting) -> str:
        return self.descriptors[w.doc["descriptor"]].run_uid

    # --- external data --------------------------------------------------------------------------

    def _datum_values(self, page: dict[str, Any], desc: Descriptor, out: _Out) -> None:
        """The frames of the datums an event page's external keys name (and values in place
        of a datum id: an export's, of a file that held one number)."""
        for key, ext in desc.externals.items():
            if key not in page["data"]:
                continue
            stamps = page["timestamps"].get(key, page["time"])
            for row, datum_id in enumerate(page["data"][key]):
                seq_num = page["seq_num"][row]
                where = f"{key!r} of event {seq_num} (descriptor {desc.uid!r})"
                if isinstance(datum_id, int | float) and not isinstance(datum_id, bool):
                    out.add(
                        desc,
                        key,
                        ext.source,
                        seq_num,
                        to_ns(stamps[row]),
                        np.asarray(float(datum_id)),
                    )
                    continue
                if ext.streamed:  # (its frames come by stream datum)
                    continue
                if not isinstance(datum_id, str):
                    ref = {"descriptor": desc.uid, "seq_num": seq_num, "data": {key: datum_id}}
                    detail = f"{where} holds no datum id (filled events are not taken)"
                    out.rejects.append(reject("event", ref, "bad_reference", detail))
                    continue
                try:
                    array = self.resolver.datum_array(datum_id, ext.declared)
                except ExternalError as exc:
                    name, ref = self._datum_document(datum_id, desc, seq_num, key)
                    out.rejects.append(reject(name, ref, exc.reason, f"{where}: {exc}"))
                    continue
                out.add(desc, key, ext.source, seq_num, to_ns(stamps[row]), array)

    def _datum_document(
        self, datum_id: str, desc: Descriptor, seq_num: int, key: str
    ) -> tuple[str, dict[str, Any]]:
        found = self.resolver.datums.get(datum_id)
        if found is None:
            return "event", {"descriptor": desc.uid, "seq_num": seq_num, "data": {key: datum_id}}
        resource, kwargs = found
        return "datum", {"datum_id": datum_id, "resource": resource, "datum_kwargs": kwargs}

    def _stream_datum(self, doc: dict[str, Any], out: _Out, *, known: bool = False) -> None:
        try:
            resource = self.resolver.stream_resource_of(doc)
        except ExternalError as exc:
            out.rejects.append(reject("stream_datum", doc, exc.reason, str(exc)))
            return
        desc = self.descriptors[doc["descriptor"]]
        key = resource["data_key"]
        # (A key the descriptor has by datum may come by stream datum too: an export's frames
        # re-ingested into the capture that holds the original descriptor.)
        if key not in desc.externals:
            detail = f"stream_datum {doc['uid']!r}: {key!r} is no external key of its descriptor"
            out.rejects.append(reject("stream_datum", doc, "bad_reference", detail))
            return
        first = doc["seq_nums"]["start"]
        # The RunEngine emits an event right after its stream datums: seq_nums before this
        # one's first that still wait will get none.
        for w in [w for w in self.waiting if w.doc["descriptor"] == desc.uid]:
            w.decided = max(w.decided, min(first, w.stop))
            self._settle(w, out)
        if not known:  # stored at once: after a crash, a primed stream waits for it again
            self.resolver.remember("stream_datum", doc)
            out.documents.append(("stream_datum", doc))
        w = Waiting(doc, key, decided=first, known=known)
        self.waiting.append(w)
        self._settle(w, out)  # one of no seq_nums at once

    def _events_pass(self, page: dict[str, Any], desc: Descriptor, out: _Out) -> None:
        """Give the stream datums of ``desc`` that wait the times of their seq_nums' events;
        seq_nums an event passes without one of theirs get none (events come in order)."""
        if not any(w.doc["descriptor"] == desc.uid for w in self.waiting):
            return
        for row, seq_num in enumerate(page["seq_num"]):
            for w in [w for w in self.waiting if w.doc["descriptor"] == desc.uid]:
                if seq_num < w.decided:
                    continue
                if seq_num < w.stop:
                    stamps = page["timestamps"].get(w.key, page["time"])
                    w.times[seq_num] = to_ns(stamps[row])
                w.decided = min(seq_num + 1, w.stop)
                self._settle(w, out)

    def _settle(self, w: Waiting, out: _Out) -> None:
        """Once every seq_num of ``w`` has a time: its document, and its frames or a reject."""
        if w.decided < w.stop:
            return
        self.waiting.remove(w)
        self.settled.add(w.doc["uid"])
        out.documents.append(
            (SETTLED, {"uid": w.doc["uid"], "stream_resource": w.doc["stream_resource"]})
        )
        desc = self.descriptors[w.doc["descriptor"]]
        ext = desc.externals[w.key]
        try:
            arrays = self.resolver.stream_arrays(w.doc, ext.declared)
        except ExternalError as exc:
            detail = f"{w.key!r} of seq_nums {w.doc['seq_nums']} (descriptor {desc.uid!r}): {exc}"
            out.rejects.append(reject("stream_datum", w.doc, exc.reason, detail))
            return
        seq_nums = range(w.doc["seq_nums"]["start"], w.stop)
        for seq_num, array in zip(seq_nums, arrays, strict=True):
            out.add(desc, w.key, ext.source, seq_num, w.times.get(seq_num, desc.time_ns), array)


@dataclass
class _Out:
    """What one ``take`` gathers."""

    tables: list[pa.Table] = field(default_factory=list)
    scalars: list[dict[str, Any]] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    documents: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    events: int = 0
    redelivered: int = 0

    def add(
        self, desc: Descriptor, key: str, source: str, seq_num: int, ns: int, array: NDArray[Any]
    ) -> None:
        row: dict[str, Any] = {
            "source": source,
            "seq": seq_of(desc.run_uid, desc.uid, seq_num, key),
            "time": ns,
            "channel": key,
            "value": float("nan"),
            "run_uid": desc.run_uid,
            "stream": desc.stream,
            "descriptor": desc.uid,
        }
        if array.ndim == 0 and array.dtype.kind in "biuf":  # one real number: a reading
            row["value"] = float(array)
            self.scalars.append(row)
            return
        row["payload"] = array.tobytes()
        row["payload_dtype"] = array.dtype.name
        row["payload_shape"] = list(array.shape)
        self.frames.append(row)

    def batch(self) -> DocumentBatch:
        if self.scalars:
            self.tables.append(_table(self.scalars, READING_SCHEMA))
        readings = pa.concat_tables(self.tables) if self.tables else READING_SCHEMA.empty_table()
        frames = _table(self.frames, FRAME_SCHEMA)
        return DocumentBatch(
            readings, self.rejects, self.documents, self.events, frames, self.redelivered
        )


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    columns = {}
    for f in schema:
        values = [r[f.name] for r in rows]
        if f.name == "time":  # ns since the epoch
            columns[f.name] = pa.array(values, pa.int64()).cast(f.type)
        else:
            columns[f.name] = pa.array(values, f.type)
    return pa.table(columns, schema=schema)


def reject(name: str, doc: Any, reason: str, detail: str) -> Reject:
    try:
        raw = json.dumps([name, doc], default=str)
    except (TypeError, ValueError):
        raw = repr(doc)
    return Reject(name, reason, detail, raw[:4096])
