"""Series ids: (source, channel) pairs numbered 0, 1, ... in the order a kernel first sees them.

A batch's ids are found by vectorised lookups, never a Python loop per reading or per series:
the batch's source and channel dictionaries are matched against the names known so far
(Arrow's hash ``index_in``), each (source number, channel number) pair becomes one int64 key,
and keys are looked up in a sorted array of the known pairs (``searchsorted``). A batch's
dictionaries usually repeat the last batch's, so their mapping is cached as a table.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PAIR_TABLE_MAX = 1 << 22  # largest (sources × channels) dictionary product mapped by a table


class Names:
    """Distinct strings numbered in the order added."""

    def __init__(self) -> None:
        self._chunks: list[pa.Array] = []
        self._all: pa.Array = pa.array([], pa.string())
        self.size = 0

    @property
    def array(self) -> pa.Array:
        if self._chunks:  # grown by whole batches of new names, joined when next read
            self._all = pa.concat_arrays([self._all, *self._chunks])
            self._chunks = []
        return self._all

    def numbers(self, names: pa.Array) -> np.ndarray:
        """The number of each of ``names``, adding those not known yet in order."""
        enc = names.cast(pa.string()).dictionary_encode()  # (a dictionary may repeat a name)
        uniq = enc.dictionary
        found = pc.index_in(uniq, value_set=self.array)
        out = np.empty(len(uniq), np.int64)
        known = found.is_valid().to_numpy(zero_copy_only=False)
        out[known] = found.drop_null().to_numpy()
        new = np.flatnonzero(~known)
        if new.size:
            out[new] = self.size + np.arange(new.size)
            self._chunks.append(uniq.take(pa.array(new)))
            self.size += new.size
        numbers: np.ndarray = out[enc.indices.to_numpy(zero_copy_only=False)]
        return numbers


class SeriesIndex:
    """Series numbered 0.. in first-seen order; ``source``/``channel`` give each one's names."""

    def __init__(self) -> None:
        self.sources, self.channels = Names(), Names()
        self.src = np.zeros(0, np.int64)  # per series: its source's number in ``sources``
        self.chan = np.zeros(0, np.int64)
        self._keys = np.zeros(0, np.int64)  # known pair keys, sorted
        self._ids = np.zeros(0, np.int64)  # series id of each sorted key
        self._dicts: tuple[pa.Array, pa.Array] | None = None
        self._table = np.zeros(0, np.int64)  # pair code -> series id (-1: not seen yet)
        self._src_no = self._ch_no = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self.src.size)

    def names(self) -> list[tuple[str, str]]:
        """(source, channel) of every series, in id order (Python objects: not for hot paths)."""
        s = self.source_names(np.arange(len(self))).to_pylist()
        c = self.channel_names(np.arange(len(self))).to_pylist()
        return list(zip(s, c, strict=True))

    def source_names(self, sids: np.ndarray) -> pa.Array:
        return self.sources.array.take(pa.array(self.src[sids], pa.int64()))

    def channel_names(self, sids: np.ndarray) -> pa.Array:
        return self.channels.array.take(pa.array(self.chan[sids], pa.int64()))

    def add(self, sources: pa.Array, channels: pa.Array) -> np.ndarray:
        """Ids of the pairs (``sources[i]``, ``channels[i]``), numbering new ones in order."""
        return self._pairs(self.sources.numbers(sources), self.channels.numbers(channels))

    def _pairs(self, s_no: np.ndarray, c_no: np.ndarray) -> np.ndarray:
        """Series ids of (source number, channel number) pairs; new pairs get the next ids in
        the order of their first appearance."""
        key = (s_no << 32) | c_no
        pos = np.searchsorted(self._keys, key)
        pos_c = np.minimum(pos, max(self._keys.size - 1, 0))
        hit = (pos < self._keys.size) & (self._keys[pos_c] == key) if self._keys.size else None
        ids = np.full(key.size, -1, np.int64)
        if hit is not None:
            ids[hit] = self._ids[pos_c[hit]]
            new_at = np.flatnonzero(~hit)
        else:
            new_at = np.arange(key.size)
        if new_at.size:
            uniq, first = np.unique(key[new_at], return_index=True)
            order = np.argsort(first, kind="stable")  # first-appearance order
            new_keys = uniq[order]
            new_ids = len(self) + np.arange(new_keys.size)
            self.src = np.concatenate([self.src, new_keys >> 32])
            self.chan = np.concatenate([self.chan, new_keys & 0xFFFFFFFF])
            keys = np.concatenate([self._keys, new_keys])
            ids_all = np.concatenate([self._ids, new_ids])
            by = np.argsort(keys, kind="stable")
            self._keys, self._ids = keys[by], ids_all[by]
            ids[new_at] = new_ids[np.argsort(order)][np.searchsorted(uniq, key[new_at])]
        return ids

    def ids(self, source: pa.DictionaryArray, channel: pa.DictionaryArray) -> np.ndarray:
        """Series id of every reading of a batch (its source and channel dictionary arrays);
        pairs first seen here are numbered in ascending (source, channel) dictionary code."""
        width = max(len(channel.dictionary), 1)
        size = max(len(source.dictionary), 1) * width
        pair: np.ndarray = np.multiply(
            source.indices.to_numpy(zero_copy_only=False),
            width,
            dtype=np.int32 if size < 1 << 31 else np.int64,
        )
        pair += channel.indices.to_numpy(zero_copy_only=False)
        cached = self._dicts
        if (
            cached is None
            or not cached[0].equals(source.dictionary)
            or not cached[1].equals(channel.dictionary)
        ):
            self._dicts = None
            self._src_no = self.sources.numbers(source.dictionary)
            self._ch_no = self.channels.numbers(channel.dictionary)
            if size > PAIR_TABLE_MAX:  # too many combinations for a table: look up the pairs
                uniq, inverse = np.unique(pair, return_inverse=True)
                return self._codes(uniq, width)[inverse.ravel()]
            self._table = np.full(size, -1, np.int64)
            self._dicts = (source.dictionary, channel.dictionary)
        sid: np.ndarray = self._table[pair]
        missing = sid < 0
        if missing.any():  # pairs not in the table yet (seen before, or new)
            codes = np.unique(pair[missing])
            self._table[codes] = self._codes(codes, width)
            sid = self._table[pair]
        return sid

    def _codes(self, codes: np.ndarray, width: int) -> np.ndarray:
        """Series ids of ascending pair codes (new series numbered in code order)."""
        codes = codes.astype(np.int64)
        return self._pairs(self._src_no[codes // width], self._ch_no[codes % width])
