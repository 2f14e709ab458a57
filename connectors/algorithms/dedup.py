"""Reading identity and duplicate detection, vectorized, with bounded state.

A reading's identity is (source, seq) when the input gave a seq, else (source, channel, time):
a *key* (the seq, or the time) in a *key space* ((source, "#seq"), or (source, channel)).
Same identity and same content (time, channel, value) is a *duplicate*; same identity and other
content is a *conflict* (the first reading stays; the later one is rejected).

Readings mostly come in key order, so the common case is decided without looking anything up:
a key above the largest key its space has ever accepted, in a space whose keys rise within
the batch, is new. One stable sort of the batch by key space finds those; only the other
readings (repeats, out of order) are compared — by exact content, not a hash — against the
identities remembered in memory, and, for keys memory may have forgotten, against the
committed capture (``lookup``, ``connectors.datasets.dedup_index``).

Memory is a list of chunks, one per batch, each dropped whole once every key space in it has
moved ``horizon`` ns of event time on (a chunk held mostly by stale spaces is compacted). What
a run saves is one range per key space (first and last key, last time), never the identities:
the capture itself holds those, so after a restart every key inside a range is asked of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_HORIZON = 10 * 60 * 10**9  # 10 minutes of event time
SEQ_SPACE = "#seq"  # the key space name of a source's seq numbers ("#" is no channel id)
_SEQ_SALT = np.uint64(0x9E3779B97F4A7C15)
_TIME_SALT = np.uint64(0xC2B2AE3D27D4EB4F)
_NAN_BITS = np.uint64(0x7FF8000000000000)
_NONE = np.iinfo(np.int64).min  # "no key yet" for a space's ranges
_FAR = np.iinfo(np.int64).max
MAX_CHUNKS = 32
SMALL_CHUNK = 1 << 16
"""Past ``MAX_CHUNKS`` chunks, a batch's identities join the last chunk while it holds fewer
than this many rows (many small batches, as in a live session, still make few chunks)."""

Lookup = Callable[[pa.Table], tuple[np.ndarray, np.ndarray]]
"""(duplicate, conflict) masks of readings whose identity the committed capture holds."""


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a fast, well-spread 64-bit hash of each uint64."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64, copy=True)
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def string_hashes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Stable 64-bit hash of each string (blake2b once per distinct value)."""
    enc = pc.dictionary_encode(column)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    per_value = np.array(
        [
            int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
            for s in enc.dictionary.to_pylist()
        ],
        dtype=np.uint64,
    )
    hashes: np.ndarray = per_value[enc.indices.to_numpy(zero_copy_only=False)]
    return hashes


def content_hashes(table: pa.Table) -> np.ndarray:
    """64-bit hash of each reading's content (time, channel, value): equal content, equal
    hash. (The capture's identity index uses it; memory compares content exactly.)"""
    ch = pc.dictionary_encode(table.column("channel")).combine_chunks()
    c_codes = ch.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    t = table.column("time").combine_chunks().cast(pa.int64()).to_numpy()
    v = table.column("value").combine_chunks().fill_null(np.nan).to_numpy()
    bits = np.where(np.isnan(v), _NAN_BITS, v.view(np.uint64))
    ch_hash = string_hashes(ch.dictionary)[c_codes]
    hashed: np.ndarray = mix(
        mix(t.astype(np.uint64)) ^ mix(ch_hash ^ _SEQ_SALT) ^ mix(bits ^ _TIME_SALT)
    )
    return hashed


def _codes(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """(dictionary, per-row code) of an id column."""
    enc = pc.dictionary_encode(column).combine_chunks()
    return enc.dictionary, enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _same_content(
    t: np.ndarray, c: np.ndarray, v: np.ndarray, kt: np.ndarray, kc: np.ndarray, kv: np.ndarray
) -> np.ndarray:
    """Equal time, channel and value (NaN and null equal each other)."""
    same: np.ndarray = (t == kt) & (c == kc) & ((v == kv) | (np.isnan(v) & np.isnan(kv)))
    return same


def _identity(space: np.ndarray, key: np.ndarray) -> np.ndarray:
    return mix(key.view(np.uint64) ^ mix(space.astype(np.uint64) ^ _SEQ_SALT))


@dataclass
class _Chunk:
    """The identities one batch added, in arrival order, with their content; plus, per key
    space in it, its row count, last time and last key (to decide when the chunk can go)."""

    space: np.ndarray  # int32 space ids
    key: np.ndarray  # int64
    time: np.ndarray  # int64 ns
    channel: np.ndarray  # int32 channel ids (content)
    value: np.ndarray  # float64, NaN for null
    spaces: np.ndarray  # distinct space ids
    counts: np.ndarray
    top_time: np.ndarray
    top_key: np.ndarray
    index: tuple[np.ndarray, np.ndarray] | None = None  # (sorted identity hashes, order)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "index": None}  # rebuilt when needed: not worth pickling

    def recall(self, space: np.ndarray, key: np.ndarray) -> np.ndarray:
        """Row of each (space, key) here, or -1. Built on first use: only repeats pay."""
        if self.index is None:
            h = _identity(self.space, self.key)
            order = np.argsort(h)
            self.index = (h[order], order)
        hashes, order = self.index
        if not hashes.size:  # (a batch that added nothing: found nowhere)
            return np.full(space.shape, -1, np.int64)
        pos = np.minimum(np.searchsorted(hashes, _identity(space, key)), hashes.size - 1)
        row = order[pos]
        hit = (self.space[row] == space) & (self.key[row] == key)  # exact, not the hash
        return np.where(hit, row, -1)

    def merged(self, other: _Chunk) -> _Chunk:
        """One chunk of this one's rows and then ``other``'s."""
        both = np.concatenate([self.spaces, other.spaces])
        spaces, at = np.unique(both, return_inverse=True)
        counts = np.bincount(at, np.r_[self.counts, other.counts], spaces.size).astype(np.int64)
        top_time = np.full(spaces.size, _NONE, np.int64)
        top_key = np.full(spaces.size, _NONE, np.int64)
        np.maximum.at(top_time, at, np.r_[self.top_time, other.top_time])
        np.maximum.at(top_key, at, np.r_[self.top_key, other.top_key])
        space, key, time, channel, value = (
            np.concatenate([a, b]) for a, b in zip(self.rows(), other.rows(), strict=True)
        )
        return _Chunk(
            space,
            key,
            time,
            channel,
            value,
            spaces,
            counts,
            top_time,
            top_key,
        )

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per identity: space, key, time, channel, value."""
        return self.space, self.key, self.time, self.channel, self.value

    def keep(self, rows: np.ndarray, spaces: np.ndarray) -> _Chunk:
        """This chunk with only ``rows`` of it, those of ``spaces`` (a mask of ``spaces``)."""
        return _Chunk(
            self.space[rows],
            self.key[rows],
            self.time[rows],
            self.channel[rows],
            self.value[rows],
            self.spaces[spaces],
            self.counts[spaces],
            self.top_time[spaces],
            self.top_key[spaces],
        )


_RANGE_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("space", pa.string()),
        ("first", pa.int64()),
        ("last", pa.int64()),
        ("time", pa.int64()),
    ]
)


@dataclass
class Deduper:
    """Remembered identities, for ``horizon`` ns of event time per key space.

    Key spaces are numbered in order of appearance; per space it keeps the range of keys ever
    accepted (``first``, ``last``), the last event time, and ``forgot``: the largest key that
    memory may no longer hold (so an unknown key at or below it is asked of the capture).
    Sources and channels are numbered too (``sources``, ``channels``: their names), so a
    batch's dictionaries are mapped once, never one id at a time.
    """

    horizon: int = DEFAULT_HORIZON
    sources: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    channels: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    codes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per space
    first: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    last: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    top_time: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    forgot: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    chunks: list[_Chunk] = field(default_factory=list)
    max_chunks: int = MAX_CHUNKS
    _seen: dict[str, tuple[pa.Array, np.ndarray]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        """Identities held in memory."""
        return sum(c.key.size for c in self.chunks)

    def __deepcopy__(self, memo: dict[int, Any]) -> Deduper:
        # Chunks are never changed once made (only replaced), so a snapshot shares them.
        return Deduper(
            self.horizon,
            self.sources,
            self.channels,
            self.codes.copy(),
            self.first.copy(),
            self.last.copy(),
            self.top_time.copy(),
            self.forgot.copy(),
            list(self.chunks),
            self.max_chunks,
        )

    # -- ids -------------------------------------------------------------------------------

    def _ids(self, which: str, names: pa.Array) -> np.ndarray:
        """The number of each of ``names`` among the known sources or channels (new ones are
        added)."""
        # Batches of one input share its dictionaries (partitions keep the whole one): map a
        # dictionary once, not once per batch (comparing it is a memcmp; mapping, a hash each).
        cached = self._seen.get(which)
        if cached is not None and (cached[0] is names or cached[0].equals(names)):
            return cached[1]
        ids = self._map(which, names)
        self._seen[which] = (names, ids)
        return ids

    def _map(self, which: str, names: pa.Array) -> np.ndarray:
        known: pa.Array = getattr(self, which)
        names = names.cast(pa.string())
        at = pc.index_in(names, value_set=known)
        if at.null_count:
            new = pc.unique(names.filter(pc.is_null(at)))
            known = pa.concat_arrays([known, new])
            setattr(self, which, known)
            at = pc.index_in(names, value_set=known)
        ids: np.ndarray = at.to_numpy(zero_copy_only=False).astype(np.int64)
        return ids

    def _space_ids(self, codes: np.ndarray) -> np.ndarray:
        """Space id of each of the distinct space ``codes`` (source id << 32 | channel id + 1,
        or 0 for seq), adding the spaces not seen before."""
        ids = np.full(codes.size, -1, np.int64)
        if self.codes.size:
            order = np.argsort(self.codes, kind="stable")
            pos = np.minimum(np.searchsorted(self.codes[order], codes), order.size - 1)
            ids = np.where(self.codes[order][pos] == codes, order[pos], -1)
        new = ids < 0
        if new.any():
            k = int(new.sum())
            ids[new] = np.arange(self.codes.size, self.codes.size + k)
            self.codes = np.concatenate([self.codes, codes[new]])
            self.first = np.concatenate([self.first, np.full(k, _FAR, np.int64)])
            self.last = np.concatenate([self.last, np.full(k, _NONE, np.int64)])
            self.top_time = np.concatenate([self.top_time, np.full(k, _NONE, np.int64)])
            self.forgot = np.concatenate([self.forgot, np.full(k, _NONE, np.int64)])
        return ids

    def _rows(
        self, table: pa.Table
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per row: batch-local space number (0..k-1, in the smallest int type), key, time,
        channel id and value (NaN for null); and the space id of each local number."""
        s_dict, s_codes = _codes(table.column("source"))
        c_dict, c_codes = _codes(table.column("channel"))
        src, chan = self._ids("sources", s_dict), self._ids("channels", c_dict)
        seq_col = table.column("seq").combine_chunks()
        t = table.column("time").combine_chunks().cast(pa.int64()).to_numpy()
        width = len(c_dict) + 1
        if seq_col.null_count == 0:  # (the usual input: one seq space per source)
            key = seq_col.to_numpy().astype(np.int64)
            local = s_codes * width
        else:
            has_seq = np.asarray(seq_col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            key = np.where(has_seq, seq_col.fill_null(0).to_numpy(), t).astype(np.int64)
            local = s_codes * width + np.where(has_seq, 0, c_codes + 1)
        # The batch's dictionaries are small: number its spaces through a table of their
        # (source code, channel code) pairs instead of sorting the rows' codes.
        if len(s_dict) * width <= 4 * local.size + 4096:
            present = np.zeros(len(s_dict) * width, bool)
            present[local] = True
            used = np.flatnonzero(present)
            dense = np.zeros(present.size, np.int64)
            dense[used] = np.arange(used.size)
            local = dense[local]
        else:
            used, local = np.unique(local, return_inverse=True)
            local = local.reshape(-1)
        sc, cc = used // width, used % width
        codes = (src[sc] << 32) | np.where(cc == 0, 0, chan[np.maximum(cc - 1, 0)] + 1)
        small = np.uint16 if used.size <= 1 << 16 else np.int32  # radix sort when it fits
        v = table.column("value").combine_chunks()
        value = (v.fill_null(np.nan) if v.null_count else v).to_numpy()
        return local.astype(small), key, t, chan[c_codes], value, self._space_ids(codes)

    # -- checking --------------------------------------------------------------------------

    def check(self, table: pa.Table, lookup: Lookup | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(accept, conflict) masks in arrival order; the rest are duplicates.

        Accepted readings are remembered; the first reading of an identity wins. ``lookup``
        answers for keys memory may have forgotten (none: they count as new).
        """
        n = table.num_rows
        accept = np.ones(n, bool)
        conflict = np.zeros(n, bool)
        if n == 0 or self.horizon <= 0:
            return accept, conflict
        local, key, t, chan, value, ids = self._rows(table)
        # Stable sort by space: each space's rows stay in arrival order.
        order = np.argsort(local, kind="stable")
        l_sorted, k_sorted = local[order], key[order]
        bound = l_sorted[1:] != l_sorted[:-1]
        starts = np.flatnonzero(np.r_[True, bound])
        seg = np.r_[0, np.cumsum(bound)]
        spaces = ids[l_sorted[starts]]
        falls = np.flatnonzero((k_sorted[1:] <= k_sorted[:-1]) & ~bound) + 1
        rising = np.ones(spaces.size, bool)
        rising[seg[falls]] = False
        # New: above every key the space ever accepted, in a space whose keys rise here.
        fresh = np.empty(n, bool)
        fresh[order] = rising[seg] & (k_sorted > self.last[spaces][seg])
        space = ids[local]
        if not fresh.all():
            slow = np.flatnonzero(~fresh)
            a, c = self._repeats(table, lookup, slow, space, key, t, chan, value)
            accept[slow], conflict[slow] = a, c
        seg_top_key = np.maximum.reduceat(k_sorted, starts)
        seg_top_time = np.maximum.reduceat(t[order], starts)
        self.last[spaces] = np.maximum(self.last[spaces], seg_top_key)
        self.first[spaces] = np.minimum(self.first[spaces], np.minimum.reduceat(k_sorted, starts))
        self.top_time[spaces] = np.maximum(self.top_time[spaces], seg_top_time)
        rows = slice(None) if accept.all() else np.flatnonzero(accept)
        chunk = _Chunk(
            space[rows].astype(np.int32),
            key[rows],
            t[rows],
            chan[rows].astype(np.int32),
            value[rows],
            spaces,
            np.diff(np.r_[starts, n]),  # (all rows: an upper bound, which is enough)
            seg_top_time,
            seg_top_key,
        )
        if (
            len(self.chunks) >= self.max_chunks
            and self.chunks[-1].key.size + chunk.key.size <= SMALL_CHUNK
        ):
            chunk = self.chunks.pop().merged(chunk)
        self.chunks.append(chunk)
        self._prune()
        return accept, conflict

    def _repeats(
        self,
        table: pa.Table,
        lookup: Lookup | None,
        rows: np.ndarray,
        space: np.ndarray,
        key: np.ndarray,
        t: np.ndarray,
        chan: np.ndarray,
        value: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(accept, conflict) of the readings at ``rows`` (arrival order), which may repeat an
        identity: against each other, memory, and the capture."""
        s, k = space[rows], key[rows]
        rt, rc, rv = t[rows], chan[rows], value[rows]
        by_id = np.lexsort((k, s))  # stable: arrival order within an identity
        s_o, k_o = s[by_id], k[by_id]
        head = np.r_[True, (s_o[1:] != s_o[:-1]) | (k_o[1:] != k_o[:-1])]
        group = np.empty(rows.size, np.int64)
        group[by_id] = np.cumsum(head) - 1
        firsts = by_id[head]  # each identity's first reading here
        fs, fk = s[firsts], k[firsts]
        # The content each identity is held with: the first reading's unless remembered.
        kt, kc, kv = rt[firsts].copy(), rc[firsts].copy(), rv[firsts].copy()
        known = np.zeros(firsts.size, bool)
        for chunk in self.chunks:
            at = chunk.recall(fs, fk)
            hit = (at >= 0) & ~known
            kt[hit], kc[hit], kv[hit] = (
                chunk.time[at[hit]],
                chunk.channel[at[hit]],
                (chunk.value[at[hit]]),
            )
            known |= hit
        same = _same_content(rt, rc, rv, kt[group], kc[group], kv[group])
        is_first = np.zeros(rows.size, bool)
        is_first[firsts] = True
        accept = is_first & ~known[group]
        conflict = ~accept & ~same
        # Keys memory may have forgotten, inside the range ever accepted: ask the capture.
        ask = ~known & (fk <= self.forgot[fs]) & (fk >= self.first[fs])
        if lookup is not None and ask.any():
            asked = np.flatnonzero(ask[group])
            dup, clash = lookup(table.take(pa.array(rows[asked])))
            held = np.zeros(firsts.size, bool)
            held[group[asked[dup | clash]]] = True
            mine = held[group[asked]]  # rows of identities the capture holds: its answer
            accept[asked[mine]] = False
            conflict[asked[mine]] = clash[mine]
        return accept, conflict

    def _prune(self) -> None:
        """Drop the chunks whose every space moved a horizon on (their last keys become
        ``forgot``); compact those whose stale spaces hold most of their rows."""
        kept = []
        cutoff = self.top_time - self.horizon
        for chunk in self.chunks:
            stale = chunk.top_time < cutoff[chunk.spaces]
            if stale.any():
                gone = chunk.spaces[stale]
                self.forgot[gone] = np.maximum(self.forgot[gone], chunk.top_key[stale])
                if stale.all():
                    continue
                if 2 * int(chunk.counts[stale].sum()) >= int(chunk.counts.sum()):
                    drop = np.zeros(self.codes.size, bool)
                    drop[gone] = True
                    chunk = chunk.keep(np.flatnonzero(~drop[chunk.space]), ~stale)
            kept.append(chunk)
        self.chunks = kept

    # -- saving ----------------------------------------------------------------------------

    def to_table(self) -> pa.Table:
        """State for persistence: one range per key space — (source, space, first and last key
        accepted, last event time) — never the identities (the capture holds those)."""
        order = np.argsort(self.codes, kind="stable")  # by source, then space: compresses well
        codes = self.codes[order]
        chan = (codes & 0xFFFFFFFF) - 1
        names = pa.concat_arrays([self.channels, pa.array([SEQ_SPACE], pa.string())])
        chan = np.where(chan < 0, len(self.channels), chan)
        return pa.table(
            {
                "source": self.sources.take(pa.array(codes >> 32)),
                "space": names.take(pa.array(chan)),
                "first": self.first[order],
                "last": self.last[order],
                "time": self.top_time[order],
            },
            schema=_RANGE_SCHEMA,
        )

    @classmethod
    def from_table(cls, table: pa.Table, horizon: int) -> Deduper:
        """A memory from ``to_table`` rows, or from a state of the format before ranges
        (one row per identity: source, space, key, content, time), which is reduced to its
        ranges. Either way memory starts empty: every key in a range is asked of the capture."""
        d = cls(horizon=horizon)
        if "content" in table.column_names:  # (the old format)
            table = table.group_by(["source", "space"], use_threads=False).aggregate(
                [("key", "min"), ("key", "max"), ("time", "max")]
            )
            table = table.rename_columns(["source", "space", "first", "last", "time"])
        if table.num_rows == 0:
            return d
        table = table.select(_RANGE_SCHEMA.names).cast(_RANGE_SCHEMA)
        s_dict, s_codes = _codes(table.column("source"))
        c_dict, c_codes = _codes(table.column("space"))
        src = d._ids("sources", s_dict)[s_codes]
        is_seq = np.asarray(
            pc.equal(table.column("space"), SEQ_SPACE).to_numpy(zero_copy_only=False), bool
        )
        chan = d._ids("channels", c_dict)[c_codes]
        space = d._space_ids((src << 32) | np.where(is_seq, 0, chan + 1))
        d.first[space] = table.column("first").to_numpy()
        d.last[space] = d.forgot[space] = table.column("last").to_numpy()
        d.top_time[space] = table.column("time").to_numpy()
        return d
