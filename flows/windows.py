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
per (series, window) partial aggregate). A batch's on-time readings are sorted by (series, time)
and reduced to one partial per run that lands in the same windows: a (series, step) bucket for
tumbling/hopping (fanned out to the bucket's windows), a run of readings less than a gap apart
for sessions. Those few partials are merged with the open windows by (series, window), using
Chan's parallel update for mean and variance on offsets from a reference data value of each
window, so data like 1e9 ± 0.001 keeps its variance. Processing a batch gives exactly what
processing its readings one at a time would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.schema import TIME_TYPE
from obsflow.flows.sketch import Sketches
from obsflow.flows.viewdef import ViewDef

I64_MIN = np.iinfo(np.int64).min
I64_MAX = np.iinfo(np.int64).max
NO_TIME = I64_MIN // 2  # "nothing seen yet"; far from overflow when a lateness is subtracted
PAIR_TABLE_MAX = 1 << 14  # largest (sources × channels) dictionary product mapped by a table


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


def reduce_runs(
    sid: np.ndarray,
    t: np.ndarray,
    seq: np.ndarray | None,
    v: np.ndarray,
    starts: np.ndarray,
    need: frozenset[str],
) -> Partials:
    """One partial per run ``[starts[i], starts[i+1])`` of readings sorted by (series, time),
    equal times in arrival order, so (time, seq) ties resolve as reading by reading would.

    ``start``/``end`` are the run's first and last time; the caller sets them. Only the fields
    in ``need`` are computed ("first_last" (needs ``seq``), "min", "max", "moments" (ref, mu),
    "spread" (m2)); the others are neutral placeholders no view row reads.
    """
    m, g = t.size, starts.size
    lens = np.diff(np.r_[starts, m])
    ends = starts + lens - 1
    ok = ~np.isnan(v)
    all_ok = bool(ok.all())
    if "first_last" not in need:
        seq = None
    if seq is not None and g < m:
        same = np.repeat(np.arange(g), lens)
        tied = (t[1:] == t[:-1]) & (seq[1:] < seq[:-1]) & (same[1:] == same[:-1])
        if tied.any():  # order runs by (time, seq); stable, so exact ties keep arrival order
            perm = np.lexsort((seq, t, same))
            t, seq, v, ok = t[perm], seq[perm], v[perm], ok[perm]
    n = lens.astype(np.int64) if all_ok else np.add.reduceat(ok, starts, dtype=np.int64)
    nan, zero = np.full(g, np.nan), np.zeros(g)
    vmin = np.fmin.reduceat(v, starts) if need & {"min", "moments"} else nan  # NaN: no values
    vmax = np.fmax.reduceat(v, starts) if "max" in need else nan
    ref, mu, m2 = zero, zero, zero
    if "moments" in need:
        # Two passes on offsets from the run's smallest value (a data value): differences of
        # nearby floats are exact, so a large common offset costs no precision.
        ref = np.where(n > 0, vmin, 0.0)
        off = np.repeat(ref, lens)  # in place from here on: fewer big temporaries
        np.subtract(v, off, out=off)
        if not all_ok:
            off[~ok] = 0.0
        mu = np.add.reduceat(off, starts) / np.maximum(n, 1)
        if "spread" in need:
            dev = np.repeat(mu, lens)
            np.subtract(off, dev, out=dev)
            if not all_ok:
                dev[~ok] = 0.0
            m2 = np.add.reduceat(np.square(dev, out=dev), starts)
    lo, hi, z = np.full(g, I64_MIN), np.full(g, I64_MAX), np.zeros(g, np.int64)
    out = Partials(
        sid[starts], t[starts], t[ends], t[ends], n, ref, mu, m2, vmin, vmax, hi, z, nan, lo, z, nan
    )
    if seq is not None:
        first, last = starts, ends
        if not all_ok:  # first and last non-missing position of each run
            pos = np.arange(m)
            first = np.minimum.reduceat(np.where(ok, pos, m - 1), starts)
            last = np.maximum.reduceat(np.where(ok, pos, 0), starts)
        has = n > 0
        out.ft, out.lt = np.where(has, t[first], I64_MAX), np.where(has, t[last], I64_MIN)
        out.fs, out.ls = np.where(has, seq[first], 0), np.where(has, seq[last], 0)
        out.fv, out.lv = np.where(has, v[first], np.nan), np.where(has, v[last], np.nan)
    return out


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


def rising(values: np.ndarray, new_segment: np.ndarray) -> bool:
    """Whether ``values`` never decrease within a segment (segments start where flagged)."""
    return values.size < 2 or bool(((values[1:] >= values[:-1]) | new_segment[1:]).all())


def segment_keys(
    values: np.ndarray, new_segment: np.ndarray
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """(Integer keys ordered like (segment, value), decoder from key back to value).

    Segments are numbered in array order, so a running max of the keys never crosses a
    segment boundary. Keys are seg·span + (value − min) when that cannot overflow, else
    seg·n + the value's rank.
    """
    seg = np.cumsum(new_segment) - 1
    lo = int(values.min())
    span = int(values.max()) - lo + 1
    if (int(seg[-1]) + 1) * span <= I64_MAX:
        off = seg * span
        return off + (values - lo), lambda k: (k - off) + lo
    uniq, rank = np.unique(values, return_inverse=True)
    off = seg * uniq.size
    return off + rank.ravel(), lambda k: np.asarray(uniq[k - off])


def running_max(values: np.ndarray, new_segment: np.ndarray) -> np.ndarray:
    """Running maximum of ``values`` restarting where ``new_segment`` is set (at 0 too)."""
    if rising(values, new_segment):
        return values  # the common case
    keys, decode = segment_keys(values, new_segment)
    return decode(np.maximum.accumulate(keys))


def group_sessions(
    sid: np.ndarray, start: np.ndarray, tmax: np.ndarray, gap: int
) -> tuple[np.ndarray, int]:
    """Group intervals [start, tmax] of each series into sessions (less than ``gap`` apart)."""
    if sid.size == 0:
        return np.zeros(0, np.int64), 0
    order = np.lexsort((start, sid))
    s, st, tm = sid[order], start[order], tmax[order]
    new_series = np.r_[True, s[1:] != s[:-1]]
    reach = running_max(tm, new_series)  # latest time so far in the series
    prev_reach = np.r_[I64_MIN, reach[:-1]]
    brk = new_series | (st >= prev_reach + gap)
    g = np.empty(sid.size, dtype=np.int64)
    g[order] = np.cumsum(brk) - 1
    return g, int(brk.sum())


def _array(col: pa.ChunkedArray) -> pa.Array:
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


_ENCODED: list[tuple[tuple[object, ...], pa.Array, pa.Array]] = []  # (key, array, encoding)
ENCODED_KEEP = 8


def _encode(col: pa.ChunkedArray) -> pa.Array:
    """Dictionary encoding of a string column, shared by the kernels of every view.

    Each view sees the same batches, and hashing the strings was a third of a kernel's time, so
    the last few encodings are kept, found by the identity of the column's buffers. The cache
    holds the array itself: its buffers (immutable) stay alive, so while an entry is kept no
    other array can have the same addresses.
    """
    arr = _array(col)
    key = (
        str(arr.type),
        arr.offset,
        len(arr),
        *((b.address, b.size) if b is not None else None for b in arr.buffers()),
    )
    for k, _, encoded in tuple(_ENCODED):
        if k == key:
            return encoded
    encoded = pc.dictionary_encode(arr)
    _ENCODED.append((key, arr, encoded))
    del _ENCODED[:-ENCODED_KEEP]
    return encoded


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
        aggs = set(view.aggregates)
        self._first_last = bool({"first", "last"} & aggs)
        self._quantiles = view.quantiles
        self._need = frozenset(
            (aggs & {"min", "max"})
            | ({"first_last"} if self._first_last else set())
            | ({"moments"} if aggs & {"sum", "mean", "std", "var"} else set())
            | ({"spread"} if aggs & {"std", "var"} else set())
        )
        # step: width of the buckets a batch is reduced to (every reading of a bucket is in
        # the same windows); fan: windows per bucket.
        self._step = view.step if view.kind == "hopping" else view.size
        self._fan = view.size // view.step if view.kind == "hopping" else 1
        # Series ids of the last batch's dictionaries: entry s·|channels| + c is the id of
        # (source s, channel c), -1 until seen. Batches usually repeat the same dictionaries.
        self._dicts: tuple[pa.Array, pa.Array] | None = None
        self._pair_sid = np.zeros(0, dtype=np.int32)
        self._name_cols: tuple[pa.Array, pa.Array] | None = None

    # series bookkeeping ----------------------------------------------------------------------

    def _series_ids(self, source: pa.ChunkedArray, channel: pa.ChunkedArray) -> np.ndarray:
        src, ch = _encode(source), _encode(channel)
        width = max(len(ch.dictionary), 1)
        size = max(len(src.dictionary), 1) * width
        # (source, channel) pair codes; int32 when they fit a table, to halve the copies
        pair: np.ndarray = np.multiply(
            src.indices.to_numpy(zero_copy_only=False),
            width,
            dtype=np.int32 if size <= PAIR_TABLE_MAX else np.int64,
        )
        pair += ch.indices.to_numpy(zero_copy_only=False)
        cached = self._dicts
        if (
            cached is None
            or not cached[0].equals(src.dictionary)
            or not cached[1].equals(ch.dictionary)
        ):
            self._dicts = None
            if size > PAIR_TABLE_MAX:  # too many combinations for a table: look up each pair
                uniq, inverse = np.unique(pair, return_inverse=True)
                ids = self._lookup(uniq, src.dictionary, ch.dictionary, width)
                return ids[inverse.ravel()]
            channels, get = ch.dictionary.to_pylist(), self.series.get
            known = [get((s, c), -1) for s in src.dictionary.to_pylist() for c in channels]
            self._pair_sid = np.array(known, dtype=np.int32)
            self._dicts = (src.dictionary, ch.dictionary)
        sid: np.ndarray = self._pair_sid[pair]
        missing = sid < 0
        if missing.any():  # series first seen in this batch
            codes = np.unique(pair[missing])
            self._pair_sid[codes] = self._lookup(codes, src.dictionary, ch.dictionary, width)
            sid = self._pair_sid[pair]
        return sid

    def _lookup(
        self, codes: np.ndarray, sources: pa.Array, channels: pa.Array, width: int
    ) -> np.ndarray:
        """Series ids of pair codes (ascending, so new series are numbered in code order)."""
        s_names, c_names = sources.to_pylist(), channels.to_pylist()
        ids = np.empty(codes.size, dtype=np.int64)
        for i, code in enumerate(codes.tolist()):
            ids[i] = self._series_id((s_names[code // width], c_names[code % width]))
        return ids

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

    # lateness ----------------------------------------------------------------------------------

    def _by_series(self, sid: np.ndarray, t: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(order by series, time, arrival — None when that is arrival order; running max of
        time per series at each reading in arrival order)."""
        in_order = t.size < 2 or bool((t[1:] >= t[:-1]).all())
        if in_order and sid.min() == sid.max():
            return None, t  # in time order: the running max is the time itself
        # A stable sort by series keeps arrival order within each; narrow keys sort by radix.
        key = sid.astype(np.uint16) if len(self.names) <= 1 << 16 else sid
        order = np.argsort(key, kind="stable")
        if in_order:
            return order, t
        ts, s = t[order], sid[order]
        new_series = np.r_[True, s[1:] != s[:-1]]
        if rising(ts, new_series):  # in time order within each series
            return order, t
        keys, decode = segment_keys(ts, new_series)
        seen = np.empty_like(t)
        seen[order] = decode(np.maximum.accumulate(keys))
        # Keys order by (series, time); a stable sort keeps arrival order among equal times.
        return order[np.argsort(keys, kind="stable")], seen

    def _late(
        self, sid: np.ndarray, t: np.ndarray, seen: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(late flags, watermark) of each reading at its arrival.

        The watermark includes the reading itself (``seen`` is the series' running max), which
        never makes it late: each of its windows ends after its own time.
        """
        v = self.view
        wm = np.maximum(self.maxt[sid], seen) - v.lateness
        late: np.ndarray
        if v.kind == "session":
            late = (t + v.gap <= wm) | (t < self.closed[sid])
        else:
            latest_end = np.floor_divide(t, self._step) * self._step + v.size
            late = latest_end <= np.maximum(wm, self.closed[sid])
        return late, wm

    def _partly_live(self, s: np.ndarray, t: np.ndarray, wm: np.ndarray) -> np.ndarray | None:
        """Hopping readings (on time) that arrived after one of their windows was final, or None
        when there are none: a reading's earliest-ending window ends where its step bucket ends.
        """
        if self.view.kind != "hopping":
            return None
        partly = (np.floor_divide(t, self._step) + 1) * self._step <= np.maximum(wm, self.closed[s])
        return partly if partly.any() else None

    # batches -----------------------------------------------------------------------------------

    def process(self, batch: pa.Table) -> tuple[pa.Table, pa.Table]:
        """Add a batch of readings; returns (rows of windows now final, late readings)."""
        if batch.num_rows == 0:
            return self._rows(Partials.empty(), Sketches.empty()), batch
        sid = self._series_ids(batch.column("source"), batch.column("channel"))
        t = _array(batch.column("time")).cast(pa.int64()).to_numpy()
        order, seen = self._by_series(sid, t)
        s, ts = (sid, t) if order is None else (sid[order], t[order])
        late_rows, wm = batch.slice(0, 0), None
        if not (seen is t and self._settled(s, ts)):  # the watermark at each arrival
            late, wm = self._late(sid, t, seen)
            np.maximum.at(self.maxt, sid, t)
            if late.any():
                late_rows = batch.filter(pa.array(late))
                order = np.flatnonzero(~late) if order is None else order[~late[order]]
                s, ts = sid[order], t[order]
        if ts.size:
            values = _array(batch.column("value"))
            val = (values.fill_null(np.nan) if values.null_count else values).to_numpy()
            seq = _array(batch.column("seq")).to_numpy()
            by = slice(None) if order is None else order  # (series, time, arrival) order
            x, q = val[by], seq[by] if self._first_last else None
            partly = None if wm is None else self._partly_live(s, ts, wm[by])
            if partly is None:
                self._merge(*self._runs(s, ts, q, x))
            else:  # rare: those readings join only some of their windows
                assert wm is not None
                rest = ~partly
                runs, sketch = self._runs(
                    s[rest], ts[rest], None if q is None else q[rest], x[rest]
                )
                a = np.sort(np.arange(t.size)[by][partly])  # arrival order
                more, more_sketch = self._singles(sid[a], t[a], seq[a], val[a], wm[a])
                self._merge(Partials.concat(runs, more), Sketches.concat(sketch, more_sketch))
        return self._emit(final_only=True), late_rows

    def _settled(self, s: np.ndarray, ts: np.ndarray) -> bool:
        """For readings in time order per series (``s``, ``ts`` sorted by series, time): whether
        none is late or partly live. Both only get less likely with time, so each series' first
        reading decides. If so, advance ``maxt`` as ``_late`` would have."""
        heads = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        hs, ht = s[heads], ts[heads]
        late, wm = self._late(hs, ht, ht)
        if late.any() or self._partly_live(hs, ht, wm) is not None:
            return False
        tails = np.r_[heads[1:], ts.size] - 1  # each series' latest reading
        self.maxt[hs] = np.maximum(self.maxt[hs], ts[tails])
        return True

    def _runs(
        self, s: np.ndarray, t: np.ndarray, seq: np.ndarray | None, x: np.ndarray
    ) -> tuple[Partials, Sketches]:
        """Partials of on-time readings sorted by (series, time, arrival): one per run sharing
        its windows, fanned out to those windows (hopping)."""
        v = self.view
        if t.size == 0:
            return Partials.empty(), Sketches.empty()
        if v.kind == "session":
            brk = t[1:] >= t[:-1] + v.gap
        else:
            b = np.floor_divide(t, self._step)
            brk = b[1:] != b[:-1]
        starts = np.flatnonzero(np.r_[True, brk | (s[1:] != s[:-1])])
        runs = reduce_runs(s, t, seq, x, starts, self._need)
        if v.kind == "session":
            runs.end = runs.tmax + v.gap
        else:
            runs.start = np.floor_divide(runs.start, self._step) * self._step
            runs.end = runs.start + v.size
        k, g = self._fan, len(runs)
        if k > 1:  # a hopping bucket is in k windows, starting 0..k-1 steps before it
            runs = runs.take(np.tile(np.arange(g), k))
            runs.start = runs.start - np.repeat(np.arange(k) * self._step, g)
            runs.end = runs.start + v.size
        if not self._quantiles:
            return runs, Sketches.empty()
        rows = np.repeat(np.arange(g), np.diff(np.r_[starts, t.size]))
        rows = (rows[None, :] + (np.arange(k) * g)[:, None]).ravel()
        return runs, Sketches.of_values(rows, np.tile(x, k), len(runs))

    def _singles(
        self, sid: np.ndarray, t: np.ndarray, seq: np.ndarray, x: np.ndarray, wm: np.ndarray
    ) -> tuple[Partials, Sketches]:
        """Partials of hopping readings in arrival order: one per (reading, window still open at
        its arrival). Listed after the runs, whose tied readings arrived earlier."""
        k, step = self._fan, self._step
        rows = np.tile(np.arange(t.size), k)
        start = (np.floor_divide(t, step) * step - (np.arange(k) * step)[:, None]).ravel()
        live = start + self.view.size > np.maximum(wm, self.closed[sid])[rows]
        rows, start = rows[live], start[live]
        one = reduce_runs(sid[rows], t[rows], seq[rows], x[rows], np.arange(rows.size), self._need)
        one.start, one.end = start, start + self.view.size
        if not self._quantiles:
            return one, Sketches.empty()
        return one, Sketches.of_values(np.arange(rows.size), x[rows], rows.size)

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
        if self._name_cols is None or len(self._name_cols[0]) != len(self.names):
            self._name_cols = (
                pa.array([s for s, _ in self.names], pa.string()),
                pa.array([c for _, c in self.names], pa.string()),
            )
        sids = pa.array(p.sid[order], pa.int64())
        cols: dict[str, pa.Array] = {
            "source": self._name_cols[0].take(sids),
            "channel": self._name_cols[1].take(sids),
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
