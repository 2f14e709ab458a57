"""A mergeable quantile sketch with relative-error guarantee (the DDSketch idea), vectorized.

Values are counted in logarithmic bins: a bin covers ``(m·γ^(i-1), m·γ^i]`` with
``γ = (1+α)/(1-α)``, so any value in a bin is within relative error ``α`` of the bin's
representative. Quantile ``q`` is answered with the representative of the bin holding the
element of rank ``⌊q·(n-1)⌋`` — so the answer is within ``α`` (1 %) relative of pandas'
``quantile(q, interpolation="lower")``. Values with ``|x| < MIN_VALUE`` share one zero bin.

Memory per window is its number of non-empty bins, at most ``MAX_BINS``: when a window would
exceed it, its lowest bins are merged (only the lowest quantiles then lose the guarantee).
Many windows' sketches are held together as sparse (row, key, count) arrays, so adding a batch
or merging windows is a sort and a segmented sum, never a Python loop over values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALPHA = 0.01
GAMMA = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA = float(np.log(GAMMA))
MIN_VALUE = 1e-9
MAX_BINS = 2048


def bin_keys(values: np.ndarray) -> np.ndarray:
    """Order-preserving integer bin key of each (finite) value; 0 is the zero bin."""
    mag = np.abs(values)
    big = mag >= MIN_VALUE
    idx = np.zeros(values.shape, dtype=np.int64)
    idx[big] = np.ceil(np.log(mag[big] / MIN_VALUE) / _LOG_GAMMA).astype(np.int64) + 1
    return np.where(values < 0, -idx, idx)


def bin_values(keys: np.ndarray) -> np.ndarray:
    """Representative value of each bin key (within ALPHA of every value in the bin)."""
    i = np.abs(keys) - 1
    mag = MIN_VALUE * 2.0 * np.power(GAMMA, i.astype(np.float64)) / (GAMMA + 1.0)
    return np.where(keys == 0, 0.0, np.sign(keys) * mag)


@dataclass
class Sketches:
    """Sparse bin counts of many windows: entry j adds ``count[j]`` to bin ``key[j]`` of
    window ``row[j]``. After ``compact`` entries are sorted by (row, key) and unique."""

    row: np.ndarray
    key: np.ndarray
    count: np.ndarray

    @classmethod
    def empty(cls) -> Sketches:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z.copy(), z.copy())

    @classmethod
    def of_values(cls, rows: np.ndarray, values: np.ndarray) -> Sketches:
        """One entry per non-missing value."""
        ok = ~np.isnan(values)
        return cls(
            rows[ok].astype(np.int64), bin_keys(values[ok]), np.ones(int(ok.sum()), dtype=np.int64)
        )

    def __len__(self) -> int:
        return int(self.row.size)

    def remap(self, new_row: np.ndarray) -> Sketches:
        """Move entries to other window numbers (``new_row[old]``), then merge duplicates."""
        return Sketches(new_row[self.row], self.key, self.count).compact()

    def select(self, keep_rows: np.ndarray) -> Sketches:
        """Only the windows flagged in ``keep_rows``, renumbered 0..k-1 in order."""
        new_index = np.cumsum(keep_rows) - 1
        mask = keep_rows[self.row]
        return Sketches(new_index[self.row[mask]], self.key[mask], self.count[mask])

    @staticmethod
    def concat(a: Sketches, b: Sketches, b_offset: int) -> Sketches:
        return Sketches(
            np.concatenate([a.row, b.row + b_offset]),
            np.concatenate([a.key, b.key]),
            np.concatenate([a.count, b.count]),
        )

    def compact(self) -> Sketches:
        if len(self) == 0:
            return self
        order = np.lexsort((self.key, self.row))
        row, key = self.row[order], self.key[order]
        brk = np.r_[True, (row[1:] != row[:-1]) | (key[1:] != key[:-1])]
        starts = np.flatnonzero(brk)
        out = Sketches(row[starts], key[starts], np.add.reduceat(self.count[order], starts))
        return out._collapse()

    def _collapse(self) -> Sketches:
        """Merge each window's lowest bins so that no window holds more than MAX_BINS."""
        brk = np.r_[True, self.row[1:] != self.row[:-1]]
        first = np.flatnonzero(brk)
        sizes = np.diff(np.r_[first, len(self)])
        if sizes.max() <= MAX_BINS:
            return self
        group = np.cumsum(brk) - 1
        rank = np.arange(len(self)) - first[group]
        excess = (sizes - MAX_BINS)[group]  # >0 only in windows that are too big
        floor_key = self.key[first[group] + np.maximum(excess, 0)]
        key = np.where(rank < excess, floor_key, self.key)
        return Sketches(self.row, key, self.count).compact()

    def quantiles(self, n_rows: int, q: float) -> np.ndarray:
        """Quantile ``q`` of each window 0..n_rows-1 (NaN for an empty window)."""
        out = np.full(n_rows, np.nan)
        if len(self) == 0:
            return out
        totals = np.bincount(self.row, weights=self.count, minlength=n_rows).astype(np.int64)
        cum = np.cumsum(self.count)
        before = np.r_[0, np.cumsum(totals)][:-1]  # entries are sorted by row
        has = totals > 0
        target = before[has] + np.floor(q * (totals[has] - 1)).astype(np.int64)
        idx = np.searchsorted(cum, target, side="right")
        out[has] = bin_values(self.key[idx])
        return out
