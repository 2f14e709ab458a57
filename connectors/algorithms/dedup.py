"""Reading identity and duplicate detection, vectorized, with bounded state.

A reading's identity is (source, seq) when the input gave a seq, else (source, channel, time).
Same identity and same content (time, channel, value) is a *duplicate*; same identity and other
content is a *conflict* (the first reading stays; the later one is rejected). Identities are
remembered for ``horizon`` ns of event time per key space, so state is bounded by the readings
of that horizon, never by the length of the input.

Identities are compared exactly; content by a 64-bit hash, so a changed reading is taken for a
duplicate only if its content hash collides with the original's (odds about 2**-64).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_HORIZON = 10 * 60 * 10**9  # 10 minutes of event time
_SEQ_SALT = np.uint64(0x9E3779B97F4A7C15)
_TIME_SALT = np.uint64(0xC2B2AE3D27D4EB4F)
_NAN_BITS = np.uint64(0x7FF8000000000000)


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
    hash."""
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


def _key_spaces(
    table: pa.Table, *, contents: bool = True
) -> tuple[list[tuple[tuple[str, str], np.ndarray]], np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by key space — (source, "#seq") for readings with a seq, (source,
    channel) for the others — each group's rows in arrival order; and per row its key (seq
    or time), content hash (unless ``contents`` is false) and time."""
    src = pc.dictionary_encode(table.column("source")).combine_chunks()
    ch = pc.dictionary_encode(table.column("channel")).combine_chunks()
    s_codes = src.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    c_codes = ch.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    seq_col = table.column("seq").combine_chunks()
    has_seq = ~np.asarray(seq_col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    seq = seq_col.fill_null(0).to_numpy()
    t = table.column("time").combine_chunks().cast(pa.int64()).to_numpy()
    width = len(ch.dictionary) + 1
    space = s_codes * width + np.where(has_seq, len(ch.dictionary), c_codes)
    key = np.where(has_seq, seq, t)
    order = np.argsort(space, kind="stable")
    bounds = np.flatnonzero(np.r_[True, space[order][1:] != space[order][:-1], True])
    sources, channels = src.dictionary.to_pylist(), ch.dictionary.to_pylist()
    groups = []
    for lo, hi in itertools.pairwise(bounds.tolist()):
        rows = order[lo:hi]
        code = int(space[rows[0]])
        is_seq = code % width == len(channels)
        # "#seq" cannot be a channel id, so the two kinds of key space never mix.
        name = (sources[code // width], "#seq" if is_seq else channels[code % width])
        groups.append((name, rows))
    hashes = content_hashes(table) if contents else np.zeros(0, np.uint64)
    return groups, key, hashes, t


@dataclass
class _Keys:
    """Remembered identities of one key space: one source's seq numbers, or one series' times.

    Kept sorted by key; readings mostly arrive in key order, so appending is the common case.
    """

    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    contents: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    times: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def add(self, keys: np.ndarray, contents: np.ndarray, times: np.ndarray) -> None:
        if keys.size == 0:
            return
        if self.keys.size == 0 or (keys[0] > self.keys[-1] and bool(np.all(keys[1:] > keys[:-1]))):
            self.keys = np.concatenate([self.keys, keys])
            self.contents = np.concatenate([self.contents, contents])
            self.times = np.concatenate([self.times, times])
            return
        order = np.argsort(np.concatenate([self.keys, keys]), kind="stable")
        self.keys = np.concatenate([self.keys, keys])[order]
        self.contents = np.concatenate([self.contents, contents])[order]
        self.times = np.concatenate([self.times, times])[order]

    def prune(self, cutoff: int) -> None:
        """Forget identities of readings older than ``cutoff`` (event time)."""
        if self.times.size and self.times[0] < cutoff:
            live = self.times >= cutoff
            if self.times.size and live.all():
                return
            self.keys, self.contents, self.times = (
                self.keys[live],
                self.contents[live],
                self.times[live],
            )


@dataclass
class Deduper:
    """Remembered identities per key space, for ``horizon`` ns of event time.

    Key spaces: (source, "seq") for readings with a seq, (source, channel) for readings
    identified by time. Work is vectorized per key space, so Python runs once per series in a
    batch, never once per reading.
    """

    horizon: int = DEFAULT_HORIZON
    spaces: dict[tuple[str, str], _Keys] = field(default_factory=dict)
    maxt: dict[tuple[str, str], int] = field(default_factory=dict)
    # Identities remembered since ``keep_journal``, for a state saved as a delta; None when
    # not kept (or given up on: more than ``journal_limit`` of them).
    journal: list[tuple[tuple[str, str], _Keys]] | None = None
    journal_rows: int = 0
    journal_limit: int = 0

    def __len__(self) -> int:
        return sum(k.keys.size for k in self.spaces.values())

    def keep_journal(self, limit: int) -> None:
        """Note the identities remembered from now on (up to ``limit`` of them)."""
        self.journal, self.journal_rows, self.journal_limit = [], 0, limit

    def _note(
        self, name: tuple[str, str], keys: np.ndarray, contents: np.ndarray, times: np.ndarray
    ) -> None:
        if self.journal is None or keys.size == 0:
            return
        self.journal_rows += keys.size
        if self.journal_rows > self.journal_limit:
            self.journal = None  # the whole state is cheaper to save now
            return
        self.journal.append((name, _Keys(keys, contents, times)))

    def check(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(accept, conflict) masks in arrival order; the rest are duplicates.

        Accepted readings are remembered; the first reading of an identity wins.
        """
        n = table.num_rows
        accept = np.ones(n, bool)
        conflict = np.zeros(n, bool)
        if n == 0 or self.horizon <= 0:
            return accept, conflict
        groups, key, content, t = _key_spaces(table)
        for name, rows in groups:
            a, c = self._check_space(name, key[rows], content[rows], t[rows])
            accept[rows], conflict[rows] = a, c
        return accept, conflict

    def older_than_memory(self, table: pa.Table) -> np.ndarray:
        """Rows older than what is remembered of their key space: their identity may have
        been forgotten, so only the capture itself can tell
        (``connectors.datasets.dedup_index``)."""
        old = np.zeros(table.num_rows, bool)
        if table.num_rows == 0 or self.horizon <= 0 or not self.maxt:
            return old
        first = pc.min(table.column("time").cast(pa.int64())).as_py()
        if first >= min(self.maxt.values()) - self.horizon:  # the usual stream: nothing old
            return old
        groups, _, _, t = _key_spaces(table, contents=False)
        for name, rows in groups:
            top = self.maxt.get(name)
            if top is not None:
                old[rows] = t[rows] < top - self.horizon
        return old

    def _check_space(
        self, name: tuple[str, str], keys: np.ndarray, contents: np.ndarray, times: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        known = self.spaces.setdefault(name, _Keys())
        top = int(times.max())
        self.maxt[name] = max(self.maxt.get(name, top), top)
        if (
            keys.size
            and bool(np.all(keys[1:] > keys[:-1]))
            and (known.keys.size == 0 or keys[0] > known.keys[-1])
        ):  # the usual stream: new keys, in order: all accepted, nothing to look up
            known.add(keys, contents, times)
            self._note(name, keys, contents, times)
            known.prune(self.maxt[name] - self.horizon)
            return np.ones(keys.size, bool), np.zeros(keys.size, bool)
        uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        kept = contents[first]
        found = np.zeros(uniq.size, bool)
        if known.keys.size and uniq[0] <= known.keys[-1]:  # only then can a key be known
            pos = np.searchsorted(known.keys, uniq)
            inside = pos < known.keys.size
            found[inside] = known.keys[pos[inside]] == uniq[inside]
            kept[found] = known.contents[pos[found]]
        is_first = np.zeros(keys.size, bool)
        is_first[first] = True
        accept = is_first & ~found[inverse]
        conflict = ~accept & (contents != kept[inverse])
        new = np.flatnonzero(accept)
        by_key = new[np.argsort(keys[new], kind="stable")]
        known.add(keys[by_key], contents[by_key], times[by_key])
        self._note(name, keys[by_key], contents[by_key], times[by_key])
        known.prune(self.maxt[name] - self.horizon)
        return accept, conflict

    def to_table(self) -> pa.Table:
        """State for persistence (so a later run of the same capture keeps deduplicating)."""
        return _state_table(list(self.spaces.items()))

    def journal_table(self) -> pa.Table | None:
        """The identities remembered since ``keep_journal``, as ``to_table`` rows (None if
        not kept): this state is the last saved one plus these, pruned."""
        return None if self.journal is None else _state_table(self.journal)

    @classmethod
    def from_table(cls, table: pa.Table, horizon: int) -> Deduper:
        d = cls(horizon=horizon)
        if table.num_rows == 0:
            return d
        df = table.to_pandas()
        for (s, sp), g in df.groupby(["source", "space"], sort=False):
            k = d.spaces[(str(s), str(sp))] = _Keys()
            order = np.argsort(g["key"].to_numpy(), kind="stable")
            k.keys = g["key"].to_numpy()[order]
            k.contents = g["content"].to_numpy().astype(np.uint64)[order]
            k.times = g["time"].to_numpy()[order]
            top = d.maxt[(str(s), str(sp))] = int(k.times.max())
            k.prune(top - horizon)  # a saved state plus deltas: what memory would hold now
        return d


def _state_table(spaces: list[tuple[tuple[str, str], _Keys]]) -> pa.Table:
    """Rows (source, space, key, content, time) of the identities of some key spaces."""
    names = [name for name, _ in spaces]
    parts = [k for _, k in spaces]
    which = np.repeat(np.arange(len(names), dtype=np.int32), [p.keys.size for p in parts])

    def labels(i: int) -> pa.Array:
        return pa.DictionaryArray.from_arrays(
            pa.array(which), pa.array([k[i] for k in names], pa.string())
        ).cast(pa.string())

    def joined(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate([a.astype(dtype) for a in arrays]) if arrays else np.zeros(0, dtype)

    return pa.table(
        {
            "source": labels(0),
            "space": labels(1),
            "key": joined([p.keys for p in parts], np.int64),
            "content": joined([p.contents for p in parts], np.uint64),
            "time": joined([p.times for p in parts], np.int64),
        }
    )
