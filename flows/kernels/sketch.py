"""Bounded-memory quantiles for many windows at once: exact while small, then binned.

Each window keeps its distinct values with their counts, so its quantiles are *exact* while it
holds at most ``CAP`` distinct values. Past that, the window switches to equal-width bins of
width ``2**level``, with the level chosen from the window's own spread: at most ``CAP/2 + 1``
bins, so memory per window stays under ``CAP`` entries whatever the number of readings. Bins
of different windows nest (their widths are powers of two), so windows merge exactly.

Quantile ``q`` is the element of rank ``⌊q·(n-1)⌋``, i.e. pandas'
``quantile(q, interpolation="lower")``: exactly, or for a binned window within half a bin,
which is at most ``(max - min) / 1024`` of that window. Unlike a relative-error sketch, the bound
follows the data's spread, not its offset: a pressure of 1013 ± 2 hPa stays precise.

Windows' entries live together as sparse (row, value, count) arrays, so adding a batch or
merging windows is a sort and a segmented sum, never a Python loop over values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from obsflow.flows.kernels.partials import order_by

CAP = 2048
EXACT = -(2**20)  # the level of a window that still holds exact values


@dataclass
class Sketches:
    """Entries (``row[j]``, ``val[j]``, ``count[j]``) plus the level of each window row.

    An entry's ``val`` is the value itself (exact window) or its bin's lower edge.
    After ``compact`` entries are sorted by (row, val) and unique.
    """

    row: np.ndarray
    val: np.ndarray
    count: np.ndarray
    level: np.ndarray  # per window row

    @classmethod
    def empty(cls, n_rows: int = 0) -> Sketches:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, np.zeros(0), z.copy(), np.full(n_rows, EXACT, dtype=np.int64))

    @classmethod
    def of_values(cls, rows: np.ndarray, values: np.ndarray, n_rows: int) -> Sketches:
        """One entry per non-missing value; windows 0..n_rows-1 start exact."""
        ok = ~np.isnan(values)
        return cls(
            rows[ok].astype(np.int64),
            values[ok],
            np.ones(int(ok.sum()), dtype=np.int64),
            np.full(n_rows, EXACT, np.int64),
        )

    def __len__(self) -> int:
        return int(self.row.size)

    def to_table(self) -> pa.Table:
        """Entries and levels, exactly (levels as a column of their own length)."""
        return pa.table(
            {
                "row": pa.array(np.r_[self.row, -np.arange(1, self.level.size + 1)]),
                "val": pa.array(np.r_[self.val, np.zeros(self.level.size)]),
                "count": pa.array(np.r_[self.count, self.level]),
            }
        )

    @classmethod
    def from_table(cls, table: pa.Table, n_rows: int) -> Sketches:
        """Inverse of ``to_table`` (rows ``< 0`` carry the levels of windows 0..n_rows-1)."""
        row = table.column("row").to_numpy()
        val = table.column("val").to_numpy()
        count = table.column("count").to_numpy()
        entries = row >= 0
        level = np.full(n_rows, EXACT, np.int64)
        level[-row[~entries] - 1] = count[~entries]
        return cls(row[entries].copy(), val[entries].copy(), count[entries].copy(), level)

    @staticmethod
    def concat(a: Sketches, b: Sketches) -> Sketches:
        """Windows of ``b`` are numbered after those of ``a``."""
        return Sketches(
            np.concatenate([a.row, b.row + a.level.size]),
            np.concatenate([a.val, b.val]),
            np.concatenate([a.count, b.count]),
            np.concatenate([a.level, b.level]),
        )

    @staticmethod
    def concat_all(parts: list[Sketches]) -> Sketches:
        """Windows of each part numbered after those of the parts before it."""
        offsets = np.cumsum([0] + [s.level.size for s in parts])[:-1]
        return Sketches(
            np.concatenate([s.row + o for s, o in zip(parts, offsets, strict=True)]),
            np.concatenate([s.val for s in parts]),
            np.concatenate([s.count for s in parts]),
            np.concatenate([s.level for s in parts]),
        )

    def select(self, keep_rows: np.ndarray) -> Sketches:
        """Only the windows flagged in ``keep_rows``, renumbered 0..k-1 in order."""
        if self.level.size == 0:  # (a view without quantiles keeps no sketches)
            return self
        new_index = np.cumsum(keep_rows) - 1
        mask = keep_rows[self.row]
        return Sketches(
            new_index[self.row[mask]], self.val[mask], self.count[mask], self.level[keep_rows]
        )

    def remap(self, new_row: np.ndarray, n_rows: int) -> Sketches:
        """Merge window ``i`` into window ``new_row[i]`` (0..n_rows-1)."""
        level = np.full(n_rows, EXACT, dtype=np.int64)
        np.maximum.at(level, new_row, self.level)
        row = new_row[self.row]
        return Sketches(row, _floor_to(self.val, level[row]), self.count, level).compact()

    def compact(self) -> Sketches:
        """Merge equal entries, then bin every window that holds more than CAP entries."""
        if len(self) == 0:
            return self
        out = self._merge_equal()
        sizes = np.bincount(out.row, minlength=out.level.size)
        if sizes.max() <= CAP:
            return out
        big = sizes > CAP
        lo = np.full(out.level.size, np.inf)
        hi = np.full(out.level.size, -np.inf)
        np.minimum.at(lo, out.row, out.val)
        np.maximum.at(hi, out.row, out.val)
        level = out.level.copy()
        level[big] = np.maximum(level[big], _level_for(lo[big], hi[big]))
        val = _floor_to(out.val, level[out.row])
        return Sketches(out.row, val, out.count, level)._merge_equal()

    def _merge_equal(self) -> Sketches:
        order = order_by(self.row, self.val)
        row, val = self.row[order], self.val[order]
        starts = np.flatnonzero(np.r_[True, (row[1:] != row[:-1]) | (val[1:] != val[:-1])])
        return Sketches(
            row[starts], val[starts], np.add.reduceat(self.count[order], starts), self.level
        )

    def quantiles(self, q: float) -> np.ndarray:
        """Quantile ``q`` of every window (NaN for a window without values)."""
        n_rows = self.level.size
        out = np.full(n_rows, np.nan)
        if len(self) == 0:
            return out
        totals = np.bincount(self.row, weights=self.count, minlength=n_rows).astype(np.int64)
        cum = np.cumsum(self.count)
        before = np.r_[0, np.cumsum(totals)][:-1]  # entries are sorted by row
        has = totals > 0
        target = before[has] + np.floor(q * (totals[has] - 1)).astype(np.int64)
        idx = np.searchsorted(cum, target, side="right")
        level = self.level[has]
        half_bin = np.where(level == EXACT, 0.0, np.ldexp(0.5, np.maximum(level, -1000)))
        out[has] = self.val[idx] + half_bin
        return out


def _level_for(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Smallest power-of-two bin width giving at most CAP/2 + 1 bins over [lo, hi].

    The width also stays above 2**-52 of the magnitude, so bin numbers stay exact integers
    in a float64.
    """
    tiny = np.finfo(np.float64).tiny
    by_spread = np.ceil(np.log2(np.maximum(hi - lo, tiny) / (CAP // 2)))
    by_size = np.ceil(np.log2(np.maximum(np.abs(lo), np.abs(hi)) + tiny)) - 52
    level: np.ndarray = np.maximum(by_spread, by_size).astype(np.int64)
    return level


def _floor_to(val: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Lower edge of the bin of width ``2**level`` holding each value (exact rows unchanged)."""
    binned = level != EXACT
    if not binned.any():
        return val
    out = val.copy()
    lv = level[binned]
    out[binned] = np.ldexp(np.floor(np.ldexp(val[binned], -lv)), lv)
    return out
