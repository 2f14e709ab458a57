"""Duplicates older than the dedup memory: the committed capture itself is the index.

The in-memory dedup (``connectors.algorithms.dedup``) remembers identities for a horizon of event
time per
key space, so memory stays bounded. A reading older than that horizon — a file ingested again
a day later, an instrument replaying its buffer — would otherwise be captured twice. For those
readings only, a partition writer asks the ``Archive``: the committed capture files of its
partition, pruned by their time statistics (from the table's log) to those that overlap the
readings' times. A file's identities are read once (only the identity and content columns) into
sorted 64-bit hashes, and the few files read last are kept, since readings mostly come in time
order; a batch is then a binary search. So the cost is paid only by readings in time already
captured, and memory is bounded by a few files.

Identity and content are the dedup's: (source, seq) for readings with a seq, else (source,
channel, time); content is the hash of (time, channel, value). Same identity and content is a
duplicate; same identity and other content a conflict. (The footer helpers ``time_span`` and
``ns_of`` live here too; ``capture info`` and replay use them.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.algorithms.dedup import content_hashes, mix, string_hashes
from obsflow.connectors.storage import layout
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import FileEntry

_COLUMNS = ["source", "seq", "time_ns", "channel", "value"]  # (as stored)
_SEQ_KEY = np.uint64(0x243F6A8885A308D3)  # salts: a seq and a time never hash alike
_TIME_KEY = np.uint64(0x13198A2E03707344)


@dataclass
class _Index:
    """The identities of one capture file as sorted 64-bit hashes, with content hashes:
    by (source, seq) and by (source, channel, time)."""

    seq_keys: np.ndarray
    seq_contents: np.ndarray
    time_keys: np.ndarray
    time_contents: np.ndarray

    @classmethod
    def of(cls, table: pa.Table) -> _Index:
        by_seq, by_time = _identity_hashes(table)
        content = content_hashes(table)
        a, b = np.argsort(by_seq), np.argsort(by_time)
        return cls(by_seq[a], content[a], by_time[b], content[b])


def _lookup(
    keys: np.ndarray, contents: np.ndarray, want: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(found, content found) for each of ``want`` in sorted ``keys``."""
    if keys.size == 0 or want.size == 0:
        return np.zeros(want.size, bool), np.zeros(want.size, np.uint64)
    order = np.argsort(want)  # sorted needles: a binary search that walks memory forward
    pos = np.empty(want.size, np.int64)
    pos[order] = np.minimum(np.searchsorted(keys, want[order]), keys.size - 1)
    return keys[pos] == want, contents[pos]


@dataclass
class Archive:
    """The committed files of one capture partition with their event-time spans (from the
    table's statistics), and the identity indexes of the files read lately (readings mostly
    come in time order, so one file serves many batches)."""

    store: Store
    files: list[FileEntry]
    cache: dict[str, _Index] = field(default_factory=dict)
    cache_size: int = 4  # files: bounded memory

    def __post_init__(self) -> None:
        self.spans = [(f.path, *s) for f in self.files if (s := f.span("time_ns")) is not None]

    def _index(self, rel: str) -> _Index:
        if rel not in self.cache:
            if len(self.cache) >= self.cache_size:
                self.cache.pop(next(iter(self.cache)))  # the oldest
            table = self.store.scan([rel], columns=_COLUMNS)
            self.cache[rel] = _Index.of(layout.loaded(table, layout.CAPTURE_SCHEMA))
        return self.cache[rel]

    def check(self, readings: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(duplicate, conflict) masks: readings whose identity the capture already holds,
        with the same content or another."""
        n = readings.num_rows
        dup, conflict = np.zeros(n, bool), np.zeros(n, bool)
        if n == 0 or not self.spans:
            return dup, conflict
        t = readings.column("time").cast(pa.int64())
        lo, hi = pc.min(t).as_py(), pc.max(t).as_py()
        by_seq, by_time = _identity_hashes(readings)
        has_seq = np.asarray(readings.column("seq").is_valid(), dtype=bool)
        content = content_hashes(readings)
        s_rows, t_rows = np.flatnonzero(has_seq), np.flatnonzero(~has_seq)
        for rel, first, last in self.spans:
            if first > hi or last < lo:
                continue
            index = self._index(rel)
            found, held = np.zeros(n, bool), np.zeros(n, np.uint64)
            found[s_rows], held[s_rows] = _lookup(
                index.seq_keys, index.seq_contents, by_seq[s_rows]
            )
            found[t_rows], held[t_rows] = _lookup(
                index.time_keys, index.time_contents, by_time[t_rows]
            )
            new = found & ~dup & ~conflict
            dup |= new & (held == content)
            conflict |= new & (held != content)
        return dup, conflict


def _identity_hashes(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Per row, a 64-bit hash of its (source, seq) and of its (source, channel, time)."""
    src = string_hashes(table.column("source").cast(pa.string()))
    ch = string_hashes(table.column("channel").cast(pa.string()))
    seq = table.column("seq").cast(pa.int64()).fill_null(0).to_numpy().astype(np.uint64)
    t = table.column("time").cast(pa.int64()).to_numpy().astype(np.uint64)
    return mix(src ^ mix(seq ^ _SEQ_KEY)), mix(src ^ mix(ch ^ mix(t ^ _TIME_KEY)))


def group_spans(md: Any, column: str = "time_ns") -> list[tuple[int, int] | None]:
    """(min, max) event time in ns of each row group of a Parquet file, from its footer's
    statistics of ``column`` (None for a row group without them)."""
    col = md.schema.to_arrow_schema().get_field_index(column)
    out: list[tuple[int, int] | None] = []
    for g in range(md.num_row_groups):
        st = md.row_group(g).column(col).statistics if col >= 0 else None
        if st is not None and st.has_min_max:
            out.append((ns_of(st.min), ns_of(st.max)))
        else:
            out.append(None)
    return out


def outside(span: tuple[int, int] | None, start: int | None, until: int | None) -> bool:
    """Whether a row group of this span holds no reading in ``[start, until)`` for certain."""
    return span is not None and (
        (start is not None and span[1] < start) or (until is not None and span[0] >= until)
    )


def time_span(footers: Iterable[Any]) -> tuple[int, int] | None:
    """(min, max) event time in ns of Parquet objects, from their footers' statistics."""
    spans = [s for md in footers for s in group_spans(md) if s is not None]
    if not spans:
        return None
    return min(s[0] for s in spans), max(s[1] for s in spans)


def ns_of(value: object) -> int:
    """A footer statistic of the time column as ns since the epoch."""
    return int(pa.scalar(value, pa.timestamp("ns", tz="UTC")).cast(pa.int64()).as_py())
