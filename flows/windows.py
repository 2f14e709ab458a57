"""The event-time window kernel: pure numpy, no Bytewax, tested against pandas.

``WindowKernel`` holds the open windows of every series (source, channel) in one capture
partition and consumes reading batches. Per series, the watermark is the largest event time
seen minus the view's lateness. A reading is *late* when every window it belongs to is already
final; it goes to the late output and changes no window. Windows are epoch-aligned:
tumbling ``[k·size, (k+1)·size)``, hopping ``[k·step, k·step + size)``; a session is a run of
readings less than ``gap`` apart, its window ``[first, last + gap)``.

Finality. A tumbling/hopping window is final once the watermark reaches its end. A session is
final once the watermark reaches its end plus one more gap: until then a reading that is not late
(``time + gap > watermark``) could still extend it. At end of input every window is final.

Everything is computed per batch with sorts and segmented reductions over "partials" (one row
per (series, window) partial aggregate): a batch becomes one partial per reading, merged with
the open windows by (series, window), using Chan's parallel update for mean and variance and a
shift by each window's minimum for precision, so data like 1e9 ± 0.001 keeps its variance.
Processing a batch gives exactly what processing its readings one at a time would.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from connectors.schema import TIME_TYPE
from flows.sketch import Sketches
from flows.viewdef import ViewDef

I64_MIN = np.iinfo(np.int64).min
I64_MAX = np.iinfo(np.int64).max
NO_TIME = I64_MIN // 2  # "nothing seen yet"; far from overflow when a lateness is subtracted


@dataclass
class Partials:
    """Struct of arrays, one row per (series, window) partial aggregate."""

    sid: np.ndarray  # series id
    start: np.ndarray  # window start, ns
    end: np.ndarray  # window end, ns (sessions: last reading + gap)
    tmax: np.ndarray  # latest reading time in the partial (sessions grow from it)
    n: np.ndarray  # non-missing values
    ref: np.ndarray  # a data value of the window (0 when n == 0): the mean is ref + mu
    mu: np.ndarray  # mean minus ref; keeping the two apart keeps full precision at 1e9 ± 1e-3
    m2: np.ndarray  # sum of squared deviations from the mean
    vmin: np.ndarray  # NaN when n == 0
    vmax: np.ndarray
    ft: np.ndarray  # (time, seq) of the first non-missing value; I64_MAX when none
    fs: np.ndarray
    fv: np.ndarray
    lt: np.ndarray  # (time, seq) of the last non-missing value; I64_MIN when none
    ls: np.ndarray
    lv: np.ndarray

    def __len__(self) -> int:
        return int(self.sid.size)

    def take(self, idx: np.ndarray) -> Partials:
        return Partials(*(getattr(self, f.name)[idx] for f in fields(self)))

    @staticmethod
    def concat(a: Partials, b: Partials) -> Partials:
        return Partials(
            *(np.concatenate([getattr(a, f.name), getattr(b, f.name)]) for f in fields(Partials))
        )

    @staticmethod
    def empty() -> Partials:
        i, f = np.zeros(0, np.int64), np.zeros(0, np.float64)
        return Partials(i, i, i, i, i, f, f, f, f, f, i, i, f, i, i, f)


def singletons(
    sid: np.ndarray,
    t: np.ndarray,
    seq: np.ndarray,
    v: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
) -> Partials:
    """One partial per reading (already assigned to a window)."""
    ok = ~np.isnan(v)
    return Partials(
        sid=sid,
        start=start,
        end=end,
        tmax=t,
        n=ok.astype(np.int64),
        ref=np.where(ok, v, 0.0),
        mu=np.zeros(v.size),
        m2=np.zeros(v.size),
        vmin=v,
        vmax=v,
        ft=np.where(ok, t, I64_MAX),
        fs=seq,
        fv=v,
        lt=np.where(ok, t, I64_MIN),
        ls=seq,
        lv=v,
    )


def reduce_groups(p: Partials, group: np.ndarray, n_groups: int, *, first_last: bool) -> Partials:
    """Merge partials with equal ``group`` (0..n_groups-1, any order) into one row each."""
    order = np.argsort(group, kind="stable")
    q = p.take(order)
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    n = np.add.reduceat(q.n, starts)
    vmin = np.fmin.reduceat(q.vmin, starts)
    vmax = np.fmax.reduceat(q.vmax, starts)
    # Chan's merge, computed on offsets from one reference value per group (the smallest
    # partial reference, itself a data value): differences of nearby floats are exact.
    has = q.n > 0
    ref = np.fmin.reduceat(np.where(has, q.ref, np.nan), starts)
    ref = np.where(np.isnan(ref), 0.0, ref)
    offset = np.where(has, (q.ref - ref[g]) + q.mu, 0.0)
    mu = np.add.reduceat(q.n * offset, starts) / np.maximum(n, 1)
    dev = np.where(has, offset - mu[g], 0.0)
    m2 = np.add.reduceat(q.m2, starts) + np.add.reduceat(q.n * dev * dev, starts)
    out = Partials(
        sid=q.sid[starts],
        start=np.minimum.reduceat(q.start, starts),
        end=np.maximum.reduceat(q.end, starts),
        tmax=np.maximum.reduceat(q.tmax, starts),
        n=n,
        ref=ref,
        mu=mu,
        m2=m2,
        vmin=vmin,
        vmax=vmax,
        ft=q.ft[starts],
        fs=q.fs[starts],
        fv=q.fv[starts],
        lt=q.lt[starts],
        ls=q.ls[starts],
        lv=q.lv[starts],
    )
    if first_last:
        ends = np.r_[starts[1:], len(q)] - 1
        f = np.lexsort((q.fs, q.ft, g))[starts]  # smallest (time, seq) per group
        la = np.lexsort((q.ls, q.lt, g))[ends]  # largest (time, seq) per group
        out.ft, out.fs, out.fv = q.ft[f], q.fs[f], q.fv[f]
        out.lt, out.ls, out.lv = q.lt[la], q.ls[la], q.lv[la]
    assert len(out) == n_groups
    return out


def group_by_window(sid: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense group numbers of (series, window start) pairs, ordered by (series, start)."""
    if sid.size == 0:
        return np.zeros(0, np.int64), 0
    order = np.lexsort((start, sid))
    s, w = sid[order], start[order]
    brk = np.r_[True, (s[1:] != s[:-1]) | (w[1:] != w[:-1])]
    g = np.empty(sid.size, dtype=np.int64)
    g[order] = np.cumsum(brk) - 1
    return g, int(brk.sum())


def group_sessions(
    sid: np.ndarray, start: np.ndarray, tmax: np.ndarray, gap: int
) -> tuple[np.ndarray, int]:
    """Group intervals [start, tmax] of each series into sessions (less than ``gap`` apart)."""
    if sid.size == 0:
        return np.zeros(0, np.int64), 0
    order = np.lexsort((start, sid))
    s, st, tm = sid[order], start[order], tmax[order]
    new_series = np.r_[True, s[1:] != s[:-1]]
    reach = pd.Series(tm).groupby(s).cummax().to_numpy()  # latest time so far in the series
    prev_reach = np.r_[I64_MIN, reach[:-1]]
    brk = new_series | (st >= prev_reach + gap)
    g = np.empty(sid.size, dtype=np.int64)
    g[order] = np.cumsum(brk) - 1
    return g, int(brk.sum())


class WindowKernel:
    """Open windows and watermarks of every series of one partition, for one view.

    ``process(batch)`` returns (final view rows, late readings); ``finish()`` returns the
    remaining rows at end of input. Series state can be saved (``series_state``) and restored
    so a later run of the same view continues where this one stopped.
    """

    def __init__(self, view: ViewDef) -> None:
        self.view = view
        self.series: dict[tuple[str, str], int] = {}
        self.names: list[tuple[str, str]] = []
        self.maxt = np.zeros(0, dtype=np.int64)  # largest event time seen, per series
        self.closed = np.zeros(0, dtype=np.int64)  # windows ending at or before are final
        self.open = Partials.empty()
        self.sketch = Sketches.empty()
        self._first_last = bool({"first", "last"} & set(view.aggregates))
        self._quantiles = view.quantiles

    # series bookkeeping ----------------------------------------------------------------------

    def _series_ids(self, source: pa.ChunkedArray, channel: pa.ChunkedArray) -> np.ndarray:
        src = pc.dictionary_encode(source).combine_chunks()
        ch = pc.dictionary_encode(channel).combine_chunks()
        s_codes = src.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        c_codes = ch.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        pair = s_codes * max(len(ch.dictionary), 1) + c_codes
        uniq, inverse = np.unique(pair, return_inverse=True)
        s_names, c_names = src.dictionary.to_pylist(), ch.dictionary.to_pylist()
        width = max(len(c_names), 1)
        ids = np.empty(uniq.size, dtype=np.int64)
        for i, code in enumerate(uniq.tolist()):  # once per distinct series in the batch
            ids[i] = self._series_id((s_names[code // width], c_names[code % width]))
        return ids[inverse]

    def _series_id(self, key: tuple[str, str]) -> int:
        sid = self.series.get(key)
        if sid is None:
            sid = self.series[key] = len(self.names)
            self.names.append(key)
            self.maxt = np.r_[self.maxt, NO_TIME]
            self.closed = np.r_[self.closed, NO_TIME]
        return sid

    def restore_series(self, table: pa.Table) -> None:
        """Continue from ``series_state()`` of an earlier run of the same view."""
        for src, ch, maxt, closed in zip(
            *(table.column(c).to_pylist() for c in ("source", "channel", "maxt", "closed")),
            strict=True,
        ):
            sid = self._series_id((src, ch))
            self.maxt[sid], self.closed[sid] = maxt, closed

    def series_state(self) -> pa.Table:
        return pa.table(
            {
                "source": [s for s, _ in self.names],
                "channel": [c for _, c in self.names],
                "maxt": pa.array(self.maxt, pa.int64()),
                "closed": pa.array(self.closed, pa.int64()),
            }
        )

    # windows ----------------------------------------------------------------------------------

    def _assign(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row index, window start, window end) of every window of every reading."""
        v = self.view
        rows = np.arange(t.size)
        if v.kind == "tumbling":
            start = np.floor_divide(t, v.size) * v.size
            return rows, start, start + v.size
        if v.kind == "hopping":
            k = v.size // v.step
            last = np.floor_divide(t, v.step) * v.step
            start = (last[None, :] - (np.arange(k) * v.step)[:, None]).ravel()
            return np.tile(rows, k), start, start + v.size
        return rows, t, t + v.gap  # session: a reading starts as its own session

    def _late(self, sid: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(late flags, watermark) of each reading at its arrival, in arrival order.

        The watermark includes the reading itself, which never makes it late: each of its
        windows ends after its own time.
        """
        v = self.view
        seen = pd.Series(t).groupby(sid).cummax().to_numpy()
        wm = np.maximum(self.maxt[sid], seen) - v.lateness
        late: np.ndarray
        if v.kind == "session":
            late = (t + v.gap <= wm) | (t < self.closed[sid])
        else:
            step = v.size if v.kind == "tumbling" else v.step
            latest_end = np.floor_divide(t, step) * step + v.size
            late = latest_end <= np.maximum(wm, self.closed[sid])
        return late, wm

    def process(self, batch: pa.Table) -> tuple[pa.Table, pa.Table]:
        """Add a batch of readings; returns (rows of windows now final, late readings)."""
        if batch.num_rows == 0:
            return self._rows(Partials.empty(), Sketches.empty()), batch
        sid = self._series_ids(batch.column("source"), batch.column("channel"))
        t = batch.column("time").combine_chunks().cast(pa.int64()).to_numpy()
        late, wm = self._late(sid, t)
        np.maximum.at(self.maxt, sid, t)
        keep = ~late
        late_rows = batch.filter(pa.array(late)) if late.any() else batch.slice(0, 0)
        if keep.any():
            seq = batch.column("seq").combine_chunks().to_numpy()
            val = batch.column("value").combine_chunks().fill_null(np.nan).to_numpy()
            sid, t, seq, val, wm = sid[keep], t[keep], seq[keep], val[keep], wm[keep]
            rows, start, end = self._assign(t)
            if self.view.kind == "hopping":  # skip the windows that were final at arrival
                live = end > np.maximum(wm, self.closed[sid])[rows]
                rows, start, end = rows[live], start[live], end[live]
            fresh = singletons(sid[rows], t[rows], seq[rows], val[rows], start, end)
            sketch = (
                Sketches.of_values(np.arange(rows.size), val[rows], rows.size)
                if self._quantiles
                else Sketches.empty()
            )
            self._merge(fresh, sketch)
        return self._emit(final_only=True), late_rows

    def finish(self) -> pa.Table:
        """End of input: every open window is final."""
        return self._emit(final_only=False)

    def _merge(self, fresh: Partials, sketch: Sketches) -> None:
        both = Partials.concat(self.open, fresh)
        if self.view.kind == "session":
            group, n = group_sessions(both.sid, both.start, both.tmax, self.view.gap)
        else:
            group, n = group_by_window(both.sid, both.start)
        self.open = reduce_groups(both, group, n, first_last=self._first_last)
        if self.view.kind == "session":
            self.open.end = self.open.tmax + self.view.gap
        if self._quantiles:
            self.sketch = Sketches.concat(self.sketch, sketch).remap(group, n)

    def _emit(self, *, final_only: bool) -> pa.Table:
        p = self.open
        if final_only:
            wm = self.maxt[p.sid] - self.view.lateness
            if self.view.kind == "session":
                final = p.end + self.view.gap <= wm
            else:
                final = p.end <= np.maximum(wm, self.closed[p.sid])
        else:
            final = np.ones(len(p), dtype=bool)
        if not final.any():
            return self._rows(Partials.empty(), Sketches.empty())
        done = p.take(final)
        done_sketch = self.sketch.select(final) if self._quantiles else Sketches.empty()
        self.open = p.take(~final)
        if self._quantiles:
            self.sketch = self.sketch.select(~final)
        np.maximum.at(self.closed, done.sid, done.end)
        return self._rows(done, done_sketch)

    def _rows(self, p: Partials, sketch: Sketches) -> pa.Table:
        """View rows in canonical order (series, window start)."""
        order = np.lexsort((p.start, p.sid))
        n = p.n[order]
        cols: dict[str, pa.Array] = {
            "source": pa.array([self.names[s][0] for s in p.sid[order]], pa.string()),
            "channel": pa.array([self.names[s][1] for s in p.sid[order]], pa.string()),
            "window_start": pa.array(p.start[order]).cast(TIME_TYPE),
            "window_end": pa.array(p.end[order]).cast(TIME_TYPE),
        }
        empty, few = n == 0, n < 2
        with np.errstate(invalid="ignore", divide="ignore"):
            var = p.m2[order] / (n - 1)
        ref, mu = p.ref[order], p.mu[order]
        values = {
            "sum": (ref * n + mu * n, None),
            "mean": (ref + mu, empty),
            "min": (p.vmin[order], empty),
            "max": (p.vmax[order], empty),
            "var": (var, few),
            "std": (np.sqrt(np.maximum(var, 0.0)), few),
            "first": (p.fv[order], empty),
            "last": (p.lv[order], empty),
        }
        for agg in self.view.aggregates:
            if agg == "count":
                cols[agg] = pa.array(n, pa.int64())
            elif agg in values:
                data, mask = values[agg]
                cols[agg] = pa.array(data, pa.float64(), mask=mask)
            else:
                q = sketch.quantiles(self._quantiles[agg])[order]
                cols[agg] = pa.array(q, pa.float64(), mask=empty)
        return pa.table(cols)
