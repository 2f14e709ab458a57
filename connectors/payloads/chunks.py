"""Chunked payloads: reassemble readings that arrive in pieces (Pulsar-style chunking).

Input: Arrow batches of chunk rows ``source, chunk_id, chunk_index, chunk_count, time, data``
(``time`` in int64 ns or a timestamp; any other columns ride along as ``meta``). A chunk set is
identified by ``(source, chunk_id)``; it is complete when all ``chunk_count`` indices arrived,
in any order, and comes out as one ``CompletedSet`` with the chunks' bytes in index order.

Guarantees, all in event time and independent of how rows are cut into batches:

- The watermark is the largest event time seen. A set *expires* when the watermark passes the
  time of its first-arriving chunk plus ``expiry_ns``; it goes out as an ``IncompleteSet``
  (reason ``chunk_expired``) with every chunk it had, for the dead-letter store.
- Memory is bounded: past ``max_pending_sets`` sets or ``max_pending_bytes`` bytes, the oldest
  sets are evicted the same way (reason ``chunk_overflow``); ``drain()`` empties everything at
  end of input. Completed sets are remembered (a 16-byte digest per chunk) until they would
  have expired, so a retried chunk is a duplicate, not the start of a new set.
- Each row first meets the state the previous rows left, then advances the watermark: a chunk
  that completes its set counts even if its own time is past the set's expiry.
- A chunk repeating an index with the same bytes is a *duplicate* (dropped, counted); with
  other bytes a *conflict*, and with another ``chunk_count`` than its set *inconsistent*: both
  are rejected (the first chunk wins) and the set carries on. Malformed rows are rejected as
  ``chunk_invalid``. Each row ends up in exactly one of: a set, ``duplicates``, ``rejected``.

The state is plain data (dicts, lists, bytes): deterministic and picklable for snapshots.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from obsflow.connectors.errors import ConfigError, SchemaError

CHUNK_FIELDS = ("source", "chunk_id", "chunk_index", "chunk_count", "time", "data")
REASON_EXPIRED = "chunk_expired"
REASON_OVERFLOW = "chunk_overflow"
REASON_INVALID = "chunk_invalid"
REASON_CONFLICT = "chunk_conflict"
REASON_INCONSISTENT = "chunk_inconsistent"
MAX_ID_LENGTH = 256

Key = tuple[str, str]


@dataclass(frozen=True, eq=True)
class Chunk:
    """One chunk as it arrived: its index, declared count, event time (ns), bytes, other fields."""

    index: int
    count: int
    time: int
    data: bytes
    meta: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class CompletedSet:
    """A reassembled payload: the chunks' bytes in index order and the fields of chunk 0."""

    source: str
    chunk_id: str
    chunk_count: int
    time: int  # event time of chunk 0
    opened: int  # event time of the first chunk to arrive (the expiry clock starts there)
    data: bytes
    meta: dict[str, Any] = field(hash=False)  # other columns of chunk 0


@dataclass(frozen=True)
class IncompleteSet:
    """A set that expired or was evicted, with every chunk it had (in index order)."""

    source: str
    chunk_id: str
    chunk_count: int
    opened: int
    reason: str  # chunk_expired | chunk_overflow
    chunks: tuple[Chunk, ...]

    @property
    def missing(self) -> list[int]:
        have = {c.index for c in self.chunks}
        return [i for i in range(self.chunk_count) if i not in have]

    @property
    def message(self) -> str:
        missing = self.missing
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        why = "expired" if self.reason == REASON_EXPIRED else "was evicted (pending limits)"
        return (
            f"chunk set {self.source}/{self.chunk_id} {why} with {len(self.chunks)} of "
            f"{self.chunk_count} chunks; missing {shown}"
        )


@dataclass(frozen=True)
class RejectedChunk:
    """A row of the fed batch that was not used: its position, reason code and explanation."""

    row: int
    reason: str
    message: str


@dataclass
class ChunkOutput:
    """What one ``feed`` produced, each list in processing order."""

    completed: list[CompletedSet] = field(default_factory=list)
    expired: list[IncompleteSet] = field(default_factory=list)
    rejected: list[RejectedChunk] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)  # rows of the batch


@dataclass
class _Pending:
    seq: int  # arrival order of the set: tie-breaker for equal times, stale-heap check
    opened: int
    count: int
    chunks: dict[int, Chunk]
    nbytes: int = 0


@dataclass(frozen=True)
class _Done:
    seq: int
    opened: int
    count: int
    digests: tuple[bytes, ...]


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _int_column(batch: pa.Table | pa.RecordBatch, name: str) -> list[Any]:
    col = batch.column(name)
    if pa.types.is_timestamp(col.type):
        unit = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[col.type.unit]
        return [None if v is None else v * unit for v in col.cast(pa.int64()).to_pylist()]
    if not pa.types.is_integer(col.type):
        raise SchemaError(f"chunk column {name!r} is {col.type}, not an integer", field=name)
    return list(col.to_pylist())


class ChunkAssembler:
    """Reassembles chunk sets with bounded memory and an event-time expiry. See module doc."""

    def __init__(
        self,
        *,
        max_pending_sets: int = 1024,
        max_pending_bytes: int = 256 << 20,
        expiry_ns: int = 60 * 10**9,
        max_chunk_count: int = 100_000,
        max_done_sets: int = 4096,
        max_done_digests: int = 1 << 16,
    ) -> None:
        limits = (max_pending_sets, max_pending_bytes, max_chunk_count, max_done_digests)
        if min(limits) < 1 or expiry_ns < 0 or max_done_sets < 0:
            raise ConfigError("chunk assembler limits must be positive and expiry_ns >= 0")
        self.max_pending_sets = max_pending_sets
        self.max_pending_bytes = max_pending_bytes
        self.expiry_ns = expiry_ns
        self.max_chunk_count = max_chunk_count
        self.max_done_sets = max_done_sets
        self.max_done_digests = max_done_digests
        self.watermark: int | None = None
        self._pending: dict[Key, _Pending] = {}
        self._heap: list[tuple[int, int, Key]] = []  # (opened, seq, key); stale entries skipped
        self._bytes = 0
        self._seq = 0
        self._done: dict[Key, _Done] = {}  # completion order
        self._done_heap: list[tuple[int, int, Key]] = []  # (opened, seq, key) for expiry
        self._done_digests = 0

    @property
    def pending_sets(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    # feeding -----------------------------------------------------------------------------

    def feed(self, batch: pa.Table | pa.RecordBatch) -> ChunkOutput:
        """Process a batch of chunk rows in row order."""
        missing = [f for f in CHUNK_FIELDS if f not in batch.schema.names]
        if missing:
            raise SchemaError(f"chunk batch lacks column(s) {missing}", field=missing[0])
        data_type = batch.column("data").type
        if not (pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type)):
            raise SchemaError(f"chunk column 'data' is {data_type}, not binary", field="data")
        sources = batch.column("source").to_pylist()
        ids = batch.column("chunk_id").to_pylist()
        indexes = _int_column(batch, "chunk_index")
        counts = _int_column(batch, "chunk_count")
        times = _int_column(batch, "time")
        blobs = batch.column("data").to_pylist()
        extra = {
            n: batch.column(n).to_pylist() for n in batch.schema.names if n not in CHUNK_FIELDS
        }
        out = ChunkOutput()
        for row in range(batch.num_rows):
            source, cid, index, count, t, data = (
                sources[row],
                ids[row],
                indexes[row],
                counts[row],
                times[row],
                blobs[row],
            )
            problem = self._problem(source, cid, index, count, t, data)
            if problem:
                out.rejected.append(RejectedChunk(row, REASON_INVALID, problem))
                continue
            # The row meets the state the previous rows left; then the watermark advances.
            meta = {n: v[row] for n, v in extra.items()}
            self._add(row, (source, cid), Chunk(index, count, t, data, meta), out)
            self.watermark = t if self.watermark is None else max(self.watermark, t)
            self._expire(out)
            self._enforce_limits(out)
        return out

    def drain(self, reason: str = REASON_EXPIRED) -> list[IncompleteSet]:
        """Every pending set, oldest first, as incomplete (end of input)."""
        order = sorted(self._pending.items(), key=lambda kv: (kv[1].opened, kv[1].seq))
        self._pending, self._heap, self._bytes = {}, [], 0
        return [self._incomplete(key, p, reason) for key, p in order]

    # internals ---------------------------------------------------------------------------

    def _problem(
        self, source: Any, cid: Any, index: Any, count: Any, t: Any, data: Any
    ) -> str | None:
        for name, value in (("source", source), ("chunk_id", cid)):
            if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
                return f"{name} {str(value)[:80]!r} is not text of 1 to {MAX_ID_LENGTH} characters"
        if t is None or index is None or count is None or data is None:
            return "time, chunk_index, chunk_count and data are required"
        if not 1 <= count <= self.max_chunk_count:
            return f"chunk_count {count} is not between 1 and {self.max_chunk_count}"
        if not 0 <= index < count:
            return f"chunk_index {index} is not between 0 and chunk_count - 1 ({count - 1})"
        return None

    def _add(self, row: int, key: Key, chunk: Chunk, out: ChunkOutput) -> None:
        done = self._done.get(key)
        if done is not None:
            if chunk.count != done.count:
                self._inconsistent(row, chunk.count, done.count, out)
            else:
                same = _digest(chunk.data) == done.digests[chunk.index]
                self._duplicate_or_conflict(row, same, chunk.index, out)
            return
        pend = self._pending.get(key)
        if pend is None:
            pend = _Pending(self._seq, chunk.time, chunk.count, {})
            self._seq += 1
            self._pending[key] = pend
            heapq.heappush(self._heap, (pend.opened, pend.seq, key))
        elif chunk.count != pend.count:
            self._inconsistent(row, chunk.count, pend.count, out)
            return
        old = pend.chunks.get(chunk.index)
        if old is not None:
            self._duplicate_or_conflict(row, old.data == chunk.data, chunk.index, out)
            return
        pend.chunks[chunk.index] = chunk
        pend.nbytes += len(chunk.data)
        self._bytes += len(chunk.data)
        if len(pend.chunks) == pend.count:
            out.completed.append(self._complete(key, pend))

    @staticmethod
    def _inconsistent(row: int, count: int, expected: int, out: ChunkOutput) -> None:
        why = f"chunk_count {count} differs from {expected} of the set's first chunk"
        out.rejected.append(RejectedChunk(row, REASON_INCONSISTENT, why))

    @staticmethod
    def _duplicate_or_conflict(row: int, same: bool, index: int, out: ChunkOutput) -> None:
        if same:
            out.duplicates.append(row)
        else:
            why = f"chunk_index {index} arrived before with other bytes (the first one is kept)"
            out.rejected.append(RejectedChunk(row, REASON_CONFLICT, why))

    def _expired(self, opened: int) -> bool:
        return self.watermark is not None and self.watermark > opened + self.expiry_ns

    def _complete(self, key: Key, pend: _Pending) -> CompletedSet:
        del self._pending[key]
        self._bytes -= pend.nbytes
        chunks = [pend.chunks[i] for i in range(pend.count)]
        self._remember(
            key, _Done(pend.seq, pend.opened, pend.count, tuple(_digest(c.data) for c in chunks))
        )
        first = chunks[0]
        data = b"".join(c.data for c in chunks)
        return CompletedSet(key[0], key[1], pend.count, first.time, pend.opened, data, first.meta)

    def _remember(self, key: Key, done: _Done) -> None:
        """Remember a completed set; past the limits, forget the earliest completed."""
        self._forget(key)  # a set can complete again after its memory expired
        self._done[key] = done
        self._done_digests += len(done.digests)
        heapq.heappush(self._done_heap, (done.opened, done.seq, key))
        while self._done and (
            len(self._done) > self.max_done_sets or self._done_digests > self.max_done_digests
        ):
            self._forget(next(iter(self._done)))

    def _forget(self, key: Key) -> None:
        old = self._done.pop(key, None)
        if old is not None:
            self._done_digests -= len(old.digests)

    def _forget_expired(self) -> None:
        """Forget completed sets once they would have expired (their heap entries go stale)."""
        heap = self._done_heap
        while heap and self._expired(heap[0][0]):
            _, seq, key = heapq.heappop(heap)
            done = self._done.get(key)
            if done is not None and done.seq == seq:
                self._forget(key)
        if len(heap) > 2 * len(self._done) + 64:
            self._done_heap = [(d.opened, d.seq, k) for k, d in self._done.items()]
            heapq.heapify(self._done_heap)

    def _oldest(self) -> tuple[Key, _Pending] | None:
        """The pending set that opened first (ties: arrived first), dropping stale heap entries."""
        while self._heap:
            _, seq, key = self._heap[0]
            pend = self._pending.get(key)
            if pend is not None and pend.seq == seq:
                return key, pend
            heapq.heappop(self._heap)
        return None

    def _evict(self, key: Key, pend: _Pending, reason: str, out: ChunkOutput) -> None:
        heapq.heappop(self._heap)
        del self._pending[key]
        self._bytes -= pend.nbytes
        out.expired.append(self._incomplete(key, pend, reason))

    def _expire(self, out: ChunkOutput) -> None:
        self._forget_expired()
        while (oldest := self._oldest()) is not None and self._expired(oldest[1].opened):
            self._evict(*oldest, REASON_EXPIRED, out)

    def _enforce_limits(self, out: ChunkOutput) -> None:
        while (
            len(self._pending) > self.max_pending_sets or self._bytes > self.max_pending_bytes
        ) and (oldest := self._oldest()) is not None:
            self._evict(*oldest, REASON_OVERFLOW, out)
        if len(self._heap) > 2 * len(self._pending) + 64:  # completed sets leave stale entries
            self._heap = [(p.opened, p.seq, k) for k, p in self._pending.items()]
            heapq.heapify(self._heap)

    @staticmethod
    def _incomplete(key: Key, pend: _Pending, reason: str) -> IncompleteSet:
        chunks = tuple(pend.chunks[i] for i in sorted(pend.chunks))
        return IncompleteSet(key[0], key[1], pend.count, pend.opened, reason, chunks)
