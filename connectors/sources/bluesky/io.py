"""Bluesky document streams as obsflow input: files, broker messages, and the stored documents.

- Files (``ingest --format bluesky``): JSON lines of ``[name, doc]`` (as suitcase-jsonl writes)
  or ``{"name": ..., "doc": ...}``; ``.msgpack`` / ``.mpk`` files are a stream of msgpack
  ``[name, doc]`` pairs, as bluesky-kafka publishes them (numpy arrays in msgpack-numpy's form
  are decoded without pickle: plain dtypes only).
- Messages: one ``[name, doc]`` pair per body, msgpack or JSON (told apart by the first byte).
- ``raw_batch`` turns a ``DocumentBatch`` (``connectors.sources.bluesky.documents``) into the
``RawBatch`` every
  source emits: readings and frames as typed rows, rejected documents as rejects, run and asset
  documents as ``documents`` rows (``DOCUMENT_SCHEMA``) for the capture's document log.
- ``read_documents`` / ``runs`` read that log back (``documents/<capture>/<run>/...``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.batch import RawBatch
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.schema import DOCUMENT_SCHEMA, REJECT_SCHEMA, TIME_TYPE
from obsflow.connectors.payloads.format import DTYPES
from obsflow.connectors.sources.bluesky.documents import (
    SETTLED,
    DocumentBatch,
    DocumentStream,
    Reject,
    reject,
)
from obsflow.connectors.sources.bluesky.external import DEFAULT_WAIT, ExternalResolver
from obsflow.connectors.storage import layout, tables
from obsflow.connectors.storage.store import Store

MAX_DOCUMENT_BYTES = 64 << 20  # one document (a line, a msgpack object) at most
SLICE_DOCUMENTS = 512  # documents taken at a time at most: fewer while they hold large frames
SLICE_FRAME_BYTES = 16 << 20
MAX_BATCH_BYTES = 64 << 20
MSGPACK_EXTENSIONS = (".msgpack", ".mpk", ".msgpk")
_ND_KEYS = {"nd", "type", "shape", "data", "kind"}


# -- decoding ---------------------------------------------------------------------------------


def _nd_array(obj: dict[str, Any]) -> Any:
    """A msgpack-numpy array (``{"nd": True, "type": "<f8", "shape": [..], "data": b".."}``)
    as a list, when its dtype is a plain number type; object arrays (pickled) are refused."""
    keys = {k.decode() if isinstance(k, bytes) else k for k in obj}
    if not (keys >= {"nd", "type", "shape", "data"} and keys <= _ND_KEYS):
        return obj
    get = {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}
    kind = get.get("kind", b"")
    if not get["nd"] or kind not in (b"", ""):  # "O": a pickled object array
        raise ValueError("a msgpack-numpy array of objects (pickled) is not accepted")
    dtype = np.dtype(str(get["type"]))
    if dtype.newbyteorder("<").name not in DTYPES and dtype.kind != "b":
        raise ValueError(f"msgpack-numpy array of dtype {dtype} is not accepted")
    shape = tuple(int(x) for x in get["shape"])
    data = bytes(get["data"])
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(data):
        raise ValueError(f"msgpack-numpy array of shape {shape} does not match its bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape).tolist()


def _pair(obj: Any) -> tuple[str, Any]:
    """``[name, doc]`` or ``{"name": name, "doc": doc}`` as a pair (anything else: a pair
    the document stream rejects as not a document)."""
    if isinstance(obj, list | tuple) and len(obj) == 2 and isinstance(obj[0], str):
        return obj[0], obj[1]
    if isinstance(obj, dict) and set(obj) == {"name", "doc"} and isinstance(obj["name"], str):
        return obj["name"], obj["doc"]
    return "", obj


def _msgpack() -> Any:
    try:
        import msgpack  # type: ignore[import-untyped,unused-ignore]
    except ImportError:  # pragma: no cover - the bluesky extra holds it
        raise ConfigError(
            "msgpack documents need msgpack: pip install 'obsflow[bluesky]'"
        ) from None
    return msgpack


def message_pair(body: bytes) -> tuple[str, Any]:
    """A broker message's ``(name, doc)``: msgpack (bluesky-kafka) or JSON. Raises ValueError
    for a body that is neither."""
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"a message of {len(body):,} bytes (most {MAX_DOCUMENT_BYTES:,})")
    head = body.lstrip()[:1]
    if head in (b"[", b"{"):
        return _pair(json.loads(body))
    msgpack = _msgpack()
    try:
        obj = msgpack.unpackb(body, raw=False, object_hook=_nd_array, strict_map_key=False)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ValueError(f"not a msgpack document: {exc}") from exc
    return _pair(obj)


def file_pairs(f: BinaryIO, url: str) -> Iterator[tuple[str, Any] | Reject]:
    """The documents of a file in order; a line or object that cannot be decoded is a
    ``malformed`` reject, and the file goes on."""
    if url.lower().split("?")[0].endswith(MSGPACK_EXTENSIONS):
        msgpack = _msgpack()
        unpacker = msgpack.Unpacker(
            f,
            raw=False,
            object_hook=_nd_array,
            strict_map_key=False,
            max_buffer_size=MAX_DOCUMENT_BYTES,
        )
        try:
            for obj in unpacker:
                yield _pair(obj)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            # A msgpack stream has no lines to resynchronize at: the rest is one dead letter.
            yield reject("", None, "malformed", f"{url}: not a msgpack stream from here: {exc}")
        return
    number = 0
    while line := f.readline(MAX_DOCUMENT_BYTES + 1):
        number += 1
        if len(line) > MAX_DOCUMENT_BYTES and not line.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield reject("", None, "malformed", f"line {number}: longer than the document cap")
            continue
        if not line.strip():
            continue
        try:
            yield _pair(json.loads(line))
        except (ValueError, UnicodeDecodeError) as exc:
            text = line[:4096].decode("utf-8", errors="replace")
            yield Reject("", "malformed", f"line {number}: not JSON: {exc}"[:300], text)


# -- to a raw batch ---------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def document_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, default=_json_default, separators=(",", ":"), allow_nan=True)


def _uid(name: str, doc: dict[str, Any]) -> str | None:
    if name == "datum":
        return str(doc.get("datum_id"))
    if name == "datum_page":
        ids = doc.get("datum_id") or [None]
        return None if ids[0] is None else str(ids[0])
    uid = doc.get("uid")
    return None if uid is None else str(uid)


def _run_of(stream: DocumentStream, name: str, doc: dict[str, Any]) -> str | None:
    """The run a stored document belongs to (datums through their resource)."""
    if name == "start":
        return _uid(name, doc)
    if name in ("datum", "datum_page"):
        resource = stream.resolver.resources.get(str(doc.get("resource")), {})
        return resource.get("run_start")
    if name in ("stream_datum", SETTLED):
        found = stream.resolver.stream_resources.get(str(doc.get("stream_resource")), {})
        return found.get("run_start")
    run = doc.get("run_start")
    return None if run is None else str(run)


def raw_batch(stream: DocumentStream, batch: DocumentBatch, origin: str, offset: int) -> RawBatch:
    """The batch as a source emits it: readings then frames as rows (records ``offset`` on),
    then the rejects; the run and asset documents ride along for the document log."""
    table = batch.readings
    if batch.frames.num_rows:
        table = pa.concat_tables([table, batch.frames], promote_options="default")
    rows = table.num_rows
    rejects = pa.table(
        {
            "origin": pa.array([origin] * len(batch.rejects), pa.string()),
            "row": pa.array(range(offset + rows, offset + rows + len(batch.rejects)), pa.int64()),
            "reason": pa.array([r.reason for r in batch.rejects], pa.string()),
            "message": pa.array(
                [f"{r.name or 'record'}: {r.detail}"[:1000] for r in batch.rejects], pa.string()
            ),
            "raw": pa.array([r.raw for r in batch.rejects], pa.string()),
        },
        schema=REJECT_SCHEMA,
    )
    docs = batch.documents
    times = [doc.get("time") for _, doc in docs]
    documents = pa.table(
        {
            "run_uid": pa.array([_run_of(stream, n, d) for n, d in docs], pa.string()),
            "name": pa.array([n for n, _ in docs], pa.string()),
            "uid": pa.array([_uid(n, d) for n, d in docs], pa.string()),
            "time": pa.array(
                [None if not isinstance(t, int | float) else round(t * 1e9) for t in times],
                pa.int64(),
            ).cast(TIME_TYPE),
            "doc": pa.array([document_json(d) for _, d in docs], pa.string()),
        },
        schema=DOCUMENT_SCHEMA,
    )
    return RawBatch(origin, offset, table, rejects, documents)


@dataclass(frozen=True)
class BlueskyInput:
    """How to read Bluesky document streams: the documents stored before (so a stream can
    continue their runs), and where external data lives (``root_map``: databroker's, old
    prefix -> new; ``wait``: seconds a missing file is waited for)."""

    prime: Sequence[tuple[str, dict[str, Any]]] = ()
    root_map: Sequence[tuple[str, str]] = ()
    wait: float = DEFAULT_WAIT
    allowed: Sequence[str] = ()  # directories external files may be read from (empty: any)

    def stream(self) -> DocumentStream:
        resolver = ExternalResolver(
            root_map=dict(self.root_map), wait=self.wait, allowed=tuple(self.allowed)
        )
        stream = DocumentStream(resolver=resolver)
        stream.prime(self.prime)
        return stream

    def batches(self, url: str, f: BinaryIO, batch_rows: int) -> Iterator[RawBatch]:
        """A file's documents as raw batches of about ``batch_rows`` records (fewer when
        frames fill ``MAX_BATCH_BYTES``); offsets count records (readings, frames, rejects)."""
        stream = self.stream()
        offset = 0
        pending: list[DocumentBatch] = []
        items: list[tuple[str, Any] | Reject] = []

        def size(batches: list[DocumentBatch]) -> tuple[int, int]:
            return sum(b.records for b in batches), sum(b.frames.nbytes for b in batches)

        slice_size = SLICE_DOCUMENTS
        for item in file_pairs(f, url):
            items.append(item)
            if len(items) < slice_size:
                continue
            pending.append(take(stream, items))
            items = []
            # Frames make a slice big: take fewer documents at a time while they come.
            nbytes = pending[-1].frames.nbytes
            if nbytes > SLICE_FRAME_BYTES:
                slice_size = max(1, slice_size // 4)
            elif nbytes < SLICE_FRAME_BYTES // 4:
                slice_size = min(SLICE_DOCUMENTS, slice_size * 2)
            records, nbytes = size(pending)
            if records >= batch_rows or nbytes >= MAX_BATCH_BYTES:
                batch = raw_batch(stream, merge(pending), url, offset)
                offset += batch.records
                pending = []
                yield batch
        if items:
            pending.append(take(stream, items))
        if pending:
            yield raw_batch(stream, merge(pending), url, offset)

    def messages(self, stream: DocumentStream, bodies: Iterable[bytes]) -> DocumentBatch:
        """Broker message bodies (one document each) through ``stream``."""
        items: list[tuple[str, Any] | Reject] = []
        for body in bodies:
            try:
                items.append(message_pair(body))
            except (ValueError, UnicodeDecodeError) as exc:
                text = body[:4096].decode("utf-8", errors="replace")
                items.append(Reject("", "malformed", f"not a document: {exc}"[:300], text))
        return take(stream, items)


def take(stream: DocumentStream, items: Sequence[tuple[str, Any] | Reject]) -> DocumentBatch:
    """``stream.take`` of the pairs; the rejects the decoding made join its rejects."""
    batch = stream.take(item for item in items if not isinstance(item, Reject))
    batch.rejects.extend(item for item in items if isinstance(item, Reject))
    return batch


def merge(batches: list[DocumentBatch]) -> DocumentBatch:
    if len(batches) == 1:
        return batches[0]
    return DocumentBatch(
        readings=pa.concat_tables([b.readings for b in batches]),
        rejects=[r for b in batches for r in b.rejects],
        documents=[d for b in batches for d in b.documents],
        events=sum(b.events for b in batches),
        frames=pa.concat_tables([b.frames for b in batches]),
        redelivered=sum(b.redelivered for b in batches),
    )


# -- the stored documents ---------------------------------------------------------------------


def read_documents(store: Store, capture: str, *, run_uid: str | None = None) -> pa.Table:
    """The run and asset documents stored with a capture (each once, in the order they were
    stored), of one Bluesky run or all."""
    from obsflow.connectors.datasets.reads import scan  # (reads imports what imports this module)

    snap = tables.snapshot(store, layout.documents_dir(capture))
    files = [] if snap is None else sorted(snap.files, key=lambda f: f.path)
    expr = pc.field("run_uid") == run_uid if run_uid else None
    table = scan(store, files, layout.DOCUMENT_LOG_SCHEMA, filter=expr)
    if not table.num_rows:
        return table
    # A document is stored once (a redelivered one is skipped), but be robust to a store that
    # holds one twice (two sessions in a race): keep the first.
    keys = pc.binary_join_element_wise(table["name"], pc.fill_null(table["uid"], ""), "\0")
    first = pc.index_in(keys, pc.unique(keys)).to_numpy(zero_copy_only=False)
    keep = np.zeros(table.num_rows, bool)
    keep[np.unique(first, return_index=True)[1]] = True
    return table.filter(pa.array(keep))


def stored_documents(
    store: Store, capture: str, *, run_uid: str | None = None, notes: bool = False
) -> list[tuple[str, dict[str, Any]]]:
    """The stored documents as ``(name, doc)`` pairs; with ``notes`` also obsflow's own
    (``SETTLED``), which a document stream's ``prime`` needs."""
    table = read_documents(store, capture, run_uid=run_uid)
    if not notes:
        table = table.filter(pc.field("name") != SETTLED)
    return [
        (str(n), json.loads(str(d)))
        for n, d in zip(table["name"].to_pylist(), table["doc"].to_pylist(), strict=True)
    ]


RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_uid", pa.string()),
        pa.field("plan_name", pa.string()),
        pa.field("scan_id", pa.int64()),
        pa.field("start", TIME_TYPE),
        pa.field("stop", TIME_TYPE),
        pa.field("exit_status", pa.string()),
        pa.field("streams", pa.string()),
        pa.field("events", pa.int64()),
        pa.field("run", pa.string()),
    ]
)


def runs(store: Store, capture: str) -> pa.Table:
    """One row per Bluesky run of the capture: uid, plan, scan id, start and stop times, exit
    status, streams, events (from the stop document) and the obsflow run that stored its start."""
    table = read_documents(store, capture)
    starts: dict[str, dict[str, Any]] = {}
    for name, doc, run in zip(
        table["name"].to_pylist(), table["doc"].to_pylist(), table["run"].to_pylist(), strict=True
    ):
        d = json.loads(doc)
        if name == "start":
            starts[d["uid"]] = {"doc": d, "run": run, "stop": None, "streams": []}
        elif name == "descriptor" and d.get("run_start") in starts:
            starts[d["run_start"]]["streams"].append(str(d.get("name", "primary")))
        elif name == "stop" and d.get("run_start") in starts:
            starts[d["run_start"]]["stop"] = d
    rows = []
    for uid, info in starts.items():
        start, stop = info["doc"], info["stop"] or {}
        scan_id = start.get("scan_id")
        rows.append(
            {
                "run_uid": uid,
                "plan_name": start.get("plan_name"),
                "scan_id": scan_id if isinstance(scan_id, int) else None,
                "start": _ns(start.get("time")),
                "stop": _ns(stop.get("time")),
                "exit_status": stop.get("exit_status"),
                "streams": ",".join(dict.fromkeys(info["streams"])),
                "events": sum((stop.get("num_events") or {}).values()) if stop else None,
                "run": info["run"],
            }
        )
    columns = {f.name: [r[f.name] for r in rows] for f in RUNS_SCHEMA}
    out = pa.table(
        {
            name: pa.array(values, pa.int64()).cast(TIME_TYPE)
            if name in ("start", "stop")
            else pa.array(values, RUNS_SCHEMA.field(name).type)
            for name, values in columns.items()
        },
        schema=RUNS_SCHEMA,
    )
    return out.sort_by([("start", "ascending"), ("run_uid", "ascending")])


def _ns(seconds: Any) -> int | None:
    return round(seconds * 1e9) if isinstance(seconds, int | float) else None
