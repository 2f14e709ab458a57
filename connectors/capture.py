"""The capture: an append-only, partitioned reading log under ``<store>/captures/<name>/``.

Layout::

    captures/<name>/_capture.json               name, partition count (fixed at creation)
    captures/<name>/_state/part-0003.json       per-partition bookkeeping (next seq per source)
    captures/<name>/part-0003/<run>-<chunk>.parquet   readings, READING_SCHEMA, arrival order

Plain ``pandas.read_parquet(<store>/captures/<name>)`` returns every reading exactly once:
pyarrow skips names starting with ``_`` or ``.``, which is where bookkeeping and temporary
objects live. A source's readings always land in one partition (a stable crc32 of its id), so
its order is kept and replay can run partitions in parallel.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import re
import secrets
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from obsflow.connectors.dedup import DEFAULT_HORIZON, Deduper
from obsflow.connectors.errors import CaptureExistsError, ConfigError, StoreError
from obsflow.connectors.ids import check_name
from obsflow.connectors.payloads import PAYLOAD_SCHEMA
from obsflow.connectors.schema import READING_SCHEMA, REJECT_SCHEMA
from obsflow.connectors.store import Store

FORMAT_VERSION = 1
DEFAULT_PARTITIONS = 4
MAX_PARTITIONS = 1024
_FILE_RE = re.compile(r"^(?P<run>[A-Za-z0-9_-]+)-(?P<chunk>\d{6})\.parquet$")


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus random hex."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def capture_dir(name: str) -> str:
    return f"captures/{check_name(name, kind='capture name')}"


def part_dir(name: str, part: int) -> str:
    return f"{capture_dir(name)}/part-{part:04d}"


@dataclass(frozen=True)
class CaptureMeta:
    name: str
    partitions: int
    created: str
    format: int = FORMAT_VERSION


def open_capture(
    store: Store, name: str, *, partitions: int | None = None, create: bool = False
) -> CaptureMeta:
    """Read a capture's metadata; with ``create``, make the capture if it is new.

    The partition count is fixed at creation; asking for another count is an error rather
    than a silent reshuffle of where sources live.
    """
    rel = f"{capture_dir(name)}/_capture.json"
    if store.exists(rel):
        meta = CaptureMeta(**store.read_json(rel))
        if partitions is not None and partitions != meta.partitions:
            raise CaptureExistsError(
                f"capture {name!r} has {meta.partitions} partitions, not {partitions}; "
                "leave out --partitions or use a new capture name"
            )
        return meta
    if not create:
        raise StoreError(f"no capture {name!r} in {store.uri()}")
    n = DEFAULT_PARTITIONS if partitions is None else partitions
    if not 1 <= n <= MAX_PARTITIONS:
        raise ConfigError(f"--partitions must be 1..{MAX_PARTITIONS}, not {n}")
    meta = CaptureMeta(name=name, partitions=n, created=datetime.now(UTC).isoformat())
    store.write_json(rel, meta.__dict__)
    return meta


def list_captures(store: Store) -> list[str]:
    return [n for n in store.listdir("captures") if store.exists(f"captures/{n}/_capture.json")]


def partition_of(sources: pa.Array | pa.ChunkedArray, partitions: int) -> np.ndarray:
    """Capture partition of each reading: crc32 of its source id, hashed once per distinct id."""
    encoded = pc.dictionary_encode(sources)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    per_id = np.array(
        [zlib.crc32(s.encode()) % partitions for s in encoded.dictionary.to_pylist()],
        dtype=np.int64,
    )
    return (
        per_id[encoded.indices.to_numpy(zero_copy_only=False)]
        if len(per_id)
        else np.zeros(0, np.int64)
    )


def split_by_partition(table: pa.Table, partitions: int) -> list[tuple[int, pa.Table]]:
    """Split a reading table into per-partition tables, keeping row order inside each."""
    if table.num_rows == 0:
        return []
    parts = partition_of(table.column("source"), partitions)
    present = np.flatnonzero(np.bincount(parts, minlength=partitions))
    if present.size == 1:
        return [(int(present[0]), table)]
    return [(int(p), table.filter(pa.array(parts == p))) for p in present]


def assign_seq(table: pa.Table, next_seq: dict[str, int]) -> pa.Table:
    """Fill null seq numbers in arrival order per source, continuing from ``next_seq``.

    ``next_seq`` is updated in place to one past the largest seq seen per source, including
    seq numbers the input supplied, so numbers never go backwards.
    """
    seq = table.column("seq")
    encoded = pc.dictionary_encode(table.column("source")).combine_chunks()
    ids = encoded.dictionary.to_pylist()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    missing = np.asarray(seq.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    values = seq.fill_null(-1).to_numpy().copy()
    if missing.any():
        idx = np.flatnonzero(missing)
        c = codes[idx]
        order = np.argsort(c, kind="stable")  # stable: keeps arrival order within a source
        in_order = c[order]
        rank = np.empty(idx.size, dtype=np.int64)
        rank[order] = np.arange(idx.size) - np.searchsorted(in_order, in_order, side="left")
        start = np.array([next_seq.get(s, 0) for s in ids], dtype=np.int64)
        values[idx] = start[c] + rank
    top = np.full(len(ids), -1, dtype=np.int64)
    np.maximum.at(top, codes, values)
    for i, s in enumerate(ids):
        next_seq[s] = max(next_seq.get(s, 0), int(top[i]) + 1)
    return table.set_column(table.schema.get_field_index("seq"), "seq", pa.array(values))


ORIGIN_COLUMNS = ("_origin", "_row", "_parent_seq")
"""Where each reading came from (and, for a feature derived from a payload, the payload
reading's seq); travels with readings up to the capture, is not stored."""

CAPTURE_SCHEMA = pa.schema([*READING_SCHEMA, *PAYLOAD_SCHEMA])
"""Capture objects: the reading schema plus payload references (null without a payload).
Every object has every column, so a plain folder read always sees the payload columns."""


def conform(table: pa.Table) -> pa.Table:
    """Readings in ``CAPTURE_SCHEMA``: missing payload columns added as nulls."""
    for column_field in PAYLOAD_SCHEMA:
        if column_field.name not in table.column_names:
            table = table.append_column(column_field, pa.nulls(table.num_rows, column_field.type))
    return table.select(CAPTURE_SCHEMA.names).cast(CAPTURE_SCHEMA)


@dataclass
class WriterState:
    """Everything a capture partition needs to resume exactly (a Bytewax snapshot)."""

    part: int
    run_id: str
    chunk: int
    next_seq: dict[str, int]
    dedup: Deduper
    start_seq: dict[str, int] = field(default_factory=dict)  # next_seq when the run began


@dataclass(frozen=True)
class Appended:
    rows: pa.Table  # READING_SCHEMA: the readings as captured
    conflicts: pa.Table  # REJECT_SCHEMA: same identity as a kept reading, other content
    duplicates: int


class PartitionWriter:
    """Writes one capture partition: dedup, seq numbers, and buffered Parquet objects.

    File names are deterministic per (run, chunk), so a resumed run rewrites exactly the
    objects it had not committed, and ``discard_after`` removes objects written after the
    last snapshot (orphans of a crash). Seq and dedup bookkeeping is also saved under
    ``_state/`` so that a later run of the same capture continues it.
    """

    def __init__(
        self,
        store: Store,
        capture: str,
        part: int,
        run_id: str,
        *,
        horizon: int = DEFAULT_HORIZON,
        resume: WriterState | None = None,
        target_rows: int = 1 << 18,
    ) -> None:
        self.store, self.capture, self.part = store, capture, part
        self.target_rows = target_rows
        if resume is None:
            # A run restarted without a snapshot (it crashed before its first one) must not see
            # its own earlier attempt: roll the bookkeeping back to where that attempt began
            # and remove the objects it wrote.
            next_seq, restarted = self._load_seq(run_id)
            resume = WriterState(
                part, run_id, 0, next_seq, self._load_dedup(horizon, run_id), dict(next_seq)
            )
            if restarted:
                self.state = resume
                self.discard_after(0)
        self.state = resume
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    @property
    def run_id(self) -> str:
        return self.state.run_id

    @property
    def chunk(self) -> int:
        return self.state.chunk

    @property
    def next_seq(self) -> dict[str, int]:
        return self.state.next_seq

    def _state_rel(self, suffix: str) -> str:
        return f"{capture_dir(self.capture)}/_state/part-{self.part:04d}{suffix}"

    def _load_seq(self, run_id: str) -> tuple[dict[str, int], bool]:
        """(next seq per source before ``run_id`` began, whether ``run_id`` already wrote)."""
        rel = self._state_rel(".json")
        if not self.store.exists(rel):
            return {}, False
        state: dict[str, Any] = self.store.read_json(rel)
        mine = state.get("run") == run_id
        seq = state.get("start_seq", {}) if mine else state.get("next_seq", {})
        return {str(k): int(v) for k, v in seq.items()}, mine

    def _load_dedup(self, horizon: int, run_id: str) -> Deduper:
        """The dedup memory of the runs before ``run_id`` (never its own earlier attempt)."""
        if horizon <= 0:
            return Deduper(horizon=horizon)
        for suffix in (".dedup.parquet", ".dedup.prev.parquet"):
            rel = self._state_rel(suffix)
            if self.store.exists(rel):
                table = pq.read_table(io.BytesIO(self.store.read_bytes(rel)))
                meta = table.schema.metadata or {}
                if meta.get(b"run", b"").decode() != run_id:
                    return Deduper.from_table(table, horizon)
        return Deduper(horizon=horizon)

    def append(self, table: pa.Table) -> Appended:
        """Drop duplicates, set conflicts aside, number and buffer the rest."""
        origin = {c: table.column(c) for c in ORIGIN_COLUMNS if c in table.column_names}
        readings = table.drop_columns(list(origin))
        accept, conflict = self.state.dedup.check(readings)
        n_accept, n_conflict = int(accept.sum()), int(conflict.sum())
        conflicts = REJECT_SCHEMA.empty_table()
        if n_conflict:
            conflicts = conflict_rejects(
                readings.filter(pa.array(conflict)),
                {c: v.filter(pa.array(conflict)) for c, v in origin.items()},
            )
        if n_accept < readings.num_rows:
            readings = readings.filter(pa.array(accept))
        if "_parent_seq" in origin:  # a derived feature numbered like its payload reading
            parent = origin["_parent_seq"].filter(pa.array(accept))
            readings = readings.set_column(1, "seq", pc.coalesce(readings.column("seq"), parent))
        rows = conform(assign_seq(readings, self.state.next_seq))
        if rows.num_rows:
            self._buffer.append(rows)
            self._buffered += rows.num_rows
            if self._buffered >= self.target_rows:
                self.flush()
        return Appended(rows, conflicts, table.num_rows - n_accept - n_conflict)

    def flush(self) -> None:
        """Write buffered rows as the next chunk object, then record the seq bookkeeping."""
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer)
        rel = f"{part_dir(self.capture, self.part)}/{self.run_id}-{self.chunk:06d}.parquet"
        self.store.write_parquet(rel, table)
        self.state.chunk += 1
        self._buffer, self._buffered = [], 0
        self.store.write_json(
            self._state_rel(".json"),
            {
                "next_seq": self.state.next_seq,
                "run": self.run_id,
                "start_seq": self.state.start_seq,
            },
        )

    def close(self) -> None:
        """Flush, and save the dedup memory for the next run of this capture."""
        self.flush()
        if self.state.dedup.horizon > 0:
            rel, prev = self._state_rel(".dedup.parquet"), self._state_rel(".dedup.prev.parquet")
            if self.store.exists(rel):
                old = pq.read_table(io.BytesIO(self.store.read_bytes(rel))).schema.metadata or {}
                if old.get(b"run", b"").decode() != self.run_id:  # keep the pre-run memory
                    self.store.copy(rel, prev)
            table = self.state.dedup.to_table().replace_schema_metadata({"run": self.run_id})
            buf = io.BytesIO()
            pq.write_table(table, buf)
            self.store.write_bytes(rel, buf.getvalue())

    def snapshot(self) -> WriterState:
        """Flush (so "chunks below n are durable" is true), then copy the state."""
        self.flush()
        return copy.deepcopy(self.state)

    def discard_after(self, chunk: int) -> int:
        """Delete this run's objects numbered ``chunk`` or later; returns how many."""
        removed = 0
        for name in self.store.listdir(part_dir(self.capture, self.part)):
            m = _FILE_RE.match(name)
            if m and m["run"] == self.run_id and int(m["chunk"]) >= chunk:
                self.store.delete(f"{part_dir(self.capture, self.part)}/{name}")
                removed += 1
        return removed


def conflict_rejects(readings: pa.Table, origin: dict[str, pa.ChunkedArray]) -> pa.Table:
    """Dead-letter rows for readings that conflict with an earlier reading's identity."""
    n = readings.num_rows
    raws = []
    for r in readings.to_pylist():  # rare path: one dict per conflicting reading
        r["time"] = r["time"].isoformat() if r["time"] is not None else None
        raws.append(json.dumps(r, default=str))
    return pa.table(
        {
            "origin": origin["_origin"].cast(pa.string())
            if "_origin" in origin
            else pa.nulls(n, pa.string()),
            "row": origin["_row"] if "_row" in origin else pa.nulls(n, pa.int64()),
            "reason": pa.repeat("conflict", n).cast(pa.string()),
            "message": pa.repeat(
                "same identity as an earlier reading (source and seq, or source, "
                "channel and time) with other content; the first one was kept",
                n,
            ).cast(pa.string()),
            "raw": pa.array(raws, pa.string()),
        },
        schema=REJECT_SCHEMA,
    )


def read_capture(store: Store, name: str, *, payloads: bool = False, **kwargs: Any) -> pa.Table:
    """The whole capture as one table (a plain Parquet read of its folder); with ``payloads``
    the payload reference columns too."""
    schema = CAPTURE_SCHEMA if payloads else READING_SCHEMA
    dataset = ds.dataset(
        store.path(capture_dir(name)),
        filesystem=store.fs,
        format="parquet",
        schema=schema,
        ignore_prefixes=[".", "_"],
    )
    return dataset.to_table(**kwargs)


@dataclass(frozen=True)
class CaptureInfo:
    name: str
    partitions: int
    files: int
    rows: int
    bytes: int
    sources: int
    first: str | None
    last: str | None
    created: str


def capture_info(store: Store, name: str) -> CaptureInfo:
    """Summary of a capture from Parquet footers plus one read of the source column."""
    meta = open_capture(store, name)
    files = [
        f
        for f in store.walk_files(capture_dir(name))
        if f.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in f.split("/"))
    ]
    rows = size = 0
    for rel in files:
        with store.fs.open(store.path(rel), "rb") as fh:
            rows += pq.ParquetFile(fh).metadata.num_rows
        size += int(store.fs.size(store.path(rel)))
    first = last = None
    sources = 0
    if rows:
        t = read_capture(store, name, columns=["source", "time"])
        sources = pc.count_distinct(t.column("source")).as_py()
        mm = pc.min_max(t.column("time"))
        first, last = mm["min"].as_py().isoformat(), mm["max"].as_py().isoformat()
    return CaptureInfo(
        name, meta.partitions, len(files), rows, size, sources, first, last, meta.created
    )


# -- inputs already captured ---------------------------------------------------------------


def input_fingerprint(url: str) -> str:
    """sha256 of an input's bytes (of the URL itself for a ``sim://`` input)."""
    from obsflow.connectors.files import open_input  # files imports bytewax sources: keep this lazy

    h = hashlib.sha256()
    if url.startswith("sim://"):
        h.update(url.encode())
        return h.hexdigest()
    try:
        with open_input(url) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except FileNotFoundError:
        raise ConfigError(f"input {url!r} does not exist") from None
    return h.hexdigest()


def captured_inputs(store: Store, capture: str) -> dict[str, dict[str, Any]]:
    """Fingerprint -> record of every input a finished run ingested into ``capture``."""
    folder = f"{capture_dir(capture)}/_inputs"
    return {
        n.removesuffix(".json"): store.read_json(f"{folder}/{n}")
        for n in store.listdir(folder)
        if n.endswith(".json")
    }


def record_inputs(store: Store, capture: str, fingerprints: dict[str, str], run_id: str) -> None:
    """Remember that a finished run ingested these inputs (url -> fingerprint)."""
    for url, fp in fingerprints.items():
        store.write_json(
            f"{capture_dir(capture)}/_inputs/{fp}.json", {"input": url, "run": run_id, "sha256": fp}
        )
