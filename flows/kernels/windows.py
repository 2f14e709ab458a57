"""The event-time window kernel: pure numpy, no Bytewax, no wall clock, tested against pandas.

``WindowKernel`` holds the open windows of every series (source, channel) of one capture
partition for one view. Windows are epoch-aligned: tumbling ``[k·size, (k+1)·size)``, hopping
``[k·step, k·step + size)``; a session is a run of readings less than ``gap`` apart, its window
``[first, last + gap)``. What differs between the kinds is a small policy object
(``FixedWindows``, ``Sessions``): which windows a reading joins, when a window may be final,
how partials merge.

Finality. The watermark of a series is its largest event time minus the view's lateness. A
window becomes final when the watermark passes its finality time (its end; for a session one
gap later, since an on-time reading could still extend it) at the end of a run (``finalize``),
or when the data is declared complete (``close``). Inside a run a window stays open longer:
until the watermark passes it by the view's *hold* as well (1024 windows, or gaps, of event
time), so that disorder inside one input never makes a reading late, while memory stays
bounded per series. The end of a run is not the end of the data: what is still open stays
open, is saved with the view, and the next run continues it. Each series keeps a frontier,
the watermark at its last run end: every window before it is final. A reading all of whose
windows are final when it arrives is *late*: returned apart, it changes nothing.

A batch's on-time readings are sorted by (series, time, arrival) and reduced to one partial per
run that lands in the same windows (a series x step bucket, fanned out to the bucket's
windows; a run of readings less than a gap apart for sessions); those few partials are merged
with the open windows (``flows.kernels.partials``). The result never depends on how readings are cut
into batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from obsflow.connectors.formats.schema import TIME_TYPE
from obsflow.flows.kernels.partials import (
    I64_MAX,
    I64_MIN,
    Partials,
    group_by_window,
    group_sessions,
    reduce_groups,
    reduce_runs,
    rising,
    segment_keys,
)
from obsflow.flows.kernels.sketch import Sketches
from obsflow.flows.kernels.viewdef import ViewDef

HOLD_WINDOWS = 1024
"""Inside a run, windows stay open until the watermark passes them by this many windows (step
or gap) more than the lateness: the disorder one input may have without late readings."""
NO_TIME = I64_MIN  # "nothing seen yet": before any time (durations are subtracted by _minus)
PAIR_TABLE_MAX = 1 << 14  # largest (sources × channels) dictionary product mapped by a table


@dataclass(frozen=True)
class FixedWindows:
    """Tumbling (``step == size``) and hopping windows: each reading is in ``size // step``
    windows, the ones starting 0..k-1 steps before its step bucket."""

    size: int
    step: int

    @property
    def fan(self) -> int:
        return self.size // self.step

    @property
    def hold(self) -> int:
        return HOLD_WINDOWS * self.step

    def late(self, t: np.ndarray, wm: np.ndarray) -> np.ndarray:
        """Readings whose every window ends at or before the watermark at their arrival."""
        ends: np.ndarray = np.floor_divide(t, self.step) * self.step + self.size
        return ends <= wm

    def partly(self, t: np.ndarray, wm: np.ndarray) -> np.ndarray | None:
        """Readings (on time) some of whose windows were final at their arrival, or None when
        there are none: a reading's earliest-ending window ends where its step bucket ends."""
        if self.fan == 1:
            return None
        partly: np.ndarray = (np.floor_divide(t, self.step) + 1) * self.step <= wm
        return partly if partly.any() else None

    def windows_of(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reading index, window start) of every window of every reading."""
        rows = np.tile(np.arange(t.size), self.fan)
        start = (
            np.floor_divide(t, self.step) * self.step - (np.arange(self.fan) * self.step)[:, None]
        )
        return rows, start.ravel()

    def run_breaks(self, t: np.ndarray) -> np.ndarray:
        b = np.floor_divide(t, self.step)
        breaks: np.ndarray = b[1:] != b[:-1]
        return breaks

    def place(self, runs: Partials) -> tuple[Partials, np.ndarray]:
        """Runs fanned out to their windows: (partials, index of the run of each)."""
        runs.start = np.floor_divide(runs.start, self.step) * self.step
        g, k = len(runs), self.fan
        which = np.tile(np.arange(g), k)
        if k > 1:
            runs = runs.take(which)
            runs.start = runs.start - np.repeat(np.arange(k) * self.step, g)
        runs.end = runs.start + self.size
        return runs, which

    def group(self, p: Partials) -> tuple[np.ndarray, int]:
        return group_by_window(p.sid, p.start)

    def settle(self, p: Partials) -> None:
        """Fix derived fields after a merge (nothing for fixed windows)."""

    def final_time(self, p: Partials) -> np.ndarray:
        """The watermark at which each window may become final."""
        return p.end


@dataclass(frozen=True)
class Sessions:
    """Session windows: readings less than ``gap`` apart, window ``[first, last + gap)``."""

    gap: int
    fan: int = 1

    @property
    def hold(self) -> int:
        return HOLD_WINDOWS * self.gap

    def late(self, t: np.ndarray, wm: np.ndarray) -> np.ndarray:
        """A reading at ``t`` could only join sessions final by ``t + gap``."""
        return t + self.gap <= wm

    def partly(self, t: np.ndarray, wm: np.ndarray) -> np.ndarray | None:
        return None

    def windows_of(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.arange(t.size), t

    def run_breaks(self, t: np.ndarray) -> np.ndarray:
        return t[1:] >= t[:-1] + self.gap

    def place(self, runs: Partials) -> tuple[Partials, np.ndarray]:
        runs.end = runs.tmax + self.gap
        return runs, np.arange(len(runs))

    def group(self, p: Partials) -> tuple[np.ndarray, int]:
        return group_sessions(p.sid, p.start, p.tmax, self.gap)

    def settle(self, p: Partials) -> None:
        p.end = p.tmax + self.gap

    def final_time(self, p: Partials) -> np.ndarray:
        return p.end + self.gap


Policy = FixedWindows | Sessions


def policy_for(view: ViewDef) -> Policy:
    if view.kind == "session":
        return Sessions(view.gap)
    return FixedWindows(view.size, view.step if view.kind == "hopping" else view.size)


def _minus(t: np.ndarray, duration: int) -> np.ndarray:
    """``t - duration`` (``duration >= 0``, any size) saturating at the smallest int64: times
    before 1897, "nothing seen yet" and holds of long windows must not wrap around."""
    if duration > I64_MAX:
        return np.full_like(t, I64_MIN)
    out: np.ndarray = np.maximum(t, I64_MIN + duration) - duration
    return out


def _array(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.Array):
        return col
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def encoded(col: pa.ChunkedArray | pa.Array) -> pa.DictionaryArray:
    """A text column as a dictionary array (as is when it already is one)."""
    arr = _array(col)
    if pa.types.is_dictionary(arr.type):
        return arr
    out: pa.DictionaryArray = arr.dictionary_encode()
    return out


class WindowKernel:
    """Open windows, watermarks and frontiers of every series of one partition, for one view.

    ``process(batch)`` adds readings and returns (rows of windows now final, late readings);
    ``finalize`` and ``close`` return rows of windows that became final; ``open_rows`` the
    provisional rows of the windows still open. ``state`` / ``from_state`` save and restore all
    of it exactly.
    """

    def __init__(self, view: ViewDef) -> None:
        self.view = view
        self.policy = policy_for(view)
        self.series: dict[tuple[str, str], int] = {}
        self.names: list[tuple[str, str]] = []
        self.maxt = np.zeros(0, dtype=np.int64)  # largest event time seen, per series
        self.frontier = np.zeros(0, dtype=np.int64)  # windows final up to here, per series
        self.open = Partials.empty()
        self.sketch = Sketches.empty()
        aggs = set(view.aggregates)
        self._first_last = bool({"first", "last"} & aggs)
        self._quantiles = view.quantiles
        self._lag = view.lateness + self.policy.hold
        self._need = frozenset(
            (aggs & {"min", "max"})
            | ({"first_last"} if self._first_last else set())
            | ({"moments"} if aggs & {"sum", "mean", "std", "var"} else set())
            | ({"spread"} if aggs & {"std", "var"} else set())
        )
        # Series ids of the last batch's dictionaries: entry s·|channels| + c is the id of
        # (source s, channel c), -1 until seen. Batches usually repeat the same dictionaries.
        self._dicts: tuple[pa.Array, pa.Array] | None = None
        self._pair_sid = np.zeros(0, dtype=np.int32)

    # series bookkeeping ----------------------------------------------------------------------

    def _series_ids(self, source: pa.ChunkedArray, channel: pa.ChunkedArray) -> np.ndarray:
        src, ch = encoded(source), encoded(channel)
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
            self.frontier = np.r_[self.frontier, NO_TIME]
        return sid

    def watermark(self) -> np.ndarray:
        """Per series: largest event time seen minus the lateness."""
        return _minus(self.maxt, self.view.lateness)

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
            wm = self._watermark_at(sid, seen)
            late = self.policy.late(t, wm)
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
            x, q = val[by], seq[by]
            partly = None if wm is None else self.policy.partly(ts, wm[by])
            if partly is None:
                self._merge(*self._runs(s, ts, q, x))
            else:  # rare: those readings join only some of their windows
                assert wm is not None
                rest = ~partly
                runs, sketch = self._runs(s[rest], ts[rest], q[rest], x[rest])
                a = np.sort(np.arange(t.size)[by][partly])  # arrival order
                more, more_sketch = self._singles(sid[a], t[a], seq[a], val[a], wm[a])
                self._merge(Partials.concat(runs, more), Sketches.concat(sketch, more_sketch))
        held = np.maximum(self.frontier, _minus(self.maxt, self._lag))
        return self._take_final(self.policy.final_time(self.open) <= held[self.open.sid]), late_rows

    def _watermark_at(self, sid: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """What decides finality at each reading's arrival: the frontier, or the series'
        running max (the reading included, which never makes it late) minus lateness and hold."""
        wm: np.ndarray = np.maximum(
            self.frontier[sid], _minus(np.maximum(self.maxt[sid], seen), self._lag)
        )
        return wm

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

    def _settled(self, s: np.ndarray, ts: np.ndarray) -> bool:
        """For readings in time order per series (``s``, ``ts`` sorted by series, time): whether
        none is late or partly live. Both only get less likely with time, so each series' first
        reading decides. If so, advance ``maxt`` as the slow path would have."""
        heads = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        hs, ht = s[heads], ts[heads]
        wm = self._watermark_at(hs, ht)
        if self.policy.late(ht, wm).any() or self.policy.partly(ht, wm) is not None:
            return False
        tails = np.r_[heads[1:], ts.size] - 1  # each series' latest reading
        self.maxt[hs] = np.maximum(self.maxt[hs], ts[tails])
        return True

    def _runs(
        self, s: np.ndarray, t: np.ndarray, seq: np.ndarray, x: np.ndarray
    ) -> tuple[Partials, Sketches]:
        """Partials of on-time readings sorted by (series, time, arrival): one per run sharing
        its windows, placed in those windows (fanned out, for hopping)."""
        if t.size == 0:
            return Partials.empty(), Sketches.empty()
        starts = np.flatnonzero(np.r_[True, self.policy.run_breaks(t) | (s[1:] != s[:-1])])
        runs, which = self.policy.place(reduce_runs(s, t, seq, x, starts, self._need))
        if not self._quantiles:
            return runs, Sketches.empty()
        # One sketch entry per (reading, window it joins): readings repeat per fanned window.
        run_of = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, t.size]))
        k = self.policy.fan
        rows = (run_of[None, :] + (np.arange(k) * starts.size)[:, None]).ravel()
        return runs, Sketches.of_values(rows, np.tile(x, k), which.size)

    def _singles(
        self, sid: np.ndarray, t: np.ndarray, seq: np.ndarray, x: np.ndarray, wm: np.ndarray
    ) -> tuple[Partials, Sketches]:
        """Partials of readings in arrival order: one per (reading, window still open at its
        arrival). Listed after the runs, whose tied readings arrived earlier."""
        rows, start = self.policy.windows_of(t)
        size = self.view.size
        live = start + size > wm[rows]
        rows, start = rows[live], start[live]
        one = reduce_runs(sid[rows], t[rows], seq[rows], x[rows], np.arange(rows.size), self._need)
        one.start, one.end = start, start + size
        if not self._quantiles:
            return one, Sketches.empty()
        return one, Sketches.of_values(np.arange(rows.size), x[rows], rows.size)

    def _merge(self, fresh: Partials, sketch: Sketches) -> None:
        both = Partials.concat(self.open, fresh)
        group, n = self.policy.group(both)
        self.open = reduce_groups(both, group, n, first_last=self._first_last)
        self.policy.settle(self.open)
        if self._quantiles:
            self.sketch = Sketches.concat(self.sketch, sketch).remap(group, n)

    # finality ------------------------------------------------------------------------------------

    def finalize(self) -> pa.Table:
        """End of a run: windows whose finality time the watermark has passed become final
        (the frontier moves to the watermark); rows of those windows."""
        self.frontier = np.maximum(self.frontier, self.watermark())
        return self._take_final(self.policy.final_time(self.open) <= self.frontier[self.open.sid])

    def close(self, series: np.ndarray | None = None, until: int | None = None) -> pa.Table:
        """Declare the data of some series (a boolean mask over series ids; None: all)
        complete up to ``until``: their watermark is taken to be ``until``; without it every
        open window of theirs becomes final. Rows of the windows now final."""
        chosen = np.ones(len(self.names), bool) if series is None else series
        if until is None:
            cut = self.frontier.copy()
            np.maximum.at(cut, self.open.sid, self.policy.final_time(self.open))
        else:
            cut = np.full(len(self.names), until, np.int64)
        self.frontier = np.where(chosen, np.maximum(self.frontier, cut), self.frontier)
        return self._take_final(self.policy.final_time(self.open) <= self.frontier[self.open.sid])

    def _take_final(self, final: np.ndarray) -> pa.Table:
        if not final.any():
            return self._rows(Partials.empty(), Sketches.empty())
        done = self.open.take(final)
        done_sketch = self.sketch.select(final) if self._quantiles else Sketches.empty()
        self.open = self.open.take(~final)
        if self._quantiles:
            self.sketch = self.sketch.select(~final)
        return self._rows(done, done_sketch)

    def open_rows(self) -> pa.Table:
        """Rows of the windows still open, as they stand (provisional rows)."""
        return self._rows(self.open, self.sketch)

    # output ----------------------------------------------------------------------------------

    def _rows(self, p: Partials, sketch: Sketches) -> pa.Table:
        """View rows in canonical order (series, window start)."""
        order = np.lexsort((p.start, p.sid))
        n = p.n[order]
        sids = pa.array(p.sid[order], pa.int64())
        cols: dict[str, pa.Array] = {
            "source": pa.array([s for s, _ in self.names], pa.string()).take(sids),
            "channel": pa.array([c for _, c in self.names], pa.string()).take(sids),
            "window_start": pa.array(p.start[order]).cast(TIME_TYPE),
            "window_end": pa.array(p.end[order]).cast(TIME_TYPE),
        }
        smin, smax = p.smin[order], p.smax[order]
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
        # What the row summarizes: its readings' seq range (null: from state saved before).
        cols["first_seq"] = pa.array(smin, pa.int64(), mask=smin == I64_MAX)
        cols["last_seq"] = pa.array(smax, pa.int64(), mask=smax == I64_MIN)
        return pa.table(cols)

    # saving ----------------------------------------------------------------------------------

    def state(self) -> dict[str, pa.Table]:
        """Everything needed to continue exactly: series, open windows, quantile entries."""
        return {
            "series": pa.table(
                {
                    "source": pa.array([s for s, _ in self.names], pa.string()),
                    "channel": pa.array([c for _, c in self.names], pa.string()),
                    "maxt": pa.array(self.maxt, pa.int64()),
                    "frontier": pa.array(self.frontier, pa.int64()),
                }
            ),
            "open": self.open.to_table(),
            "sketch": self.sketch.to_table(),
        }

    @classmethod
    def from_state(cls, view: ViewDef, tables: dict[str, pa.Table]) -> WindowKernel:
        """A kernel continuing where ``state()`` was taken (tables that are missing: empty)."""
        kernel = cls(view)
        series = tables.get("series")
        if series is not None:
            for src, ch in zip(
                series.column("source").to_pylist(),
                series.column("channel").to_pylist(),
                strict=True,
            ):
                kernel._series_id((src, ch))
            kernel.maxt = series.column("maxt").to_numpy().copy()
            kernel.frontier = series.column("frontier").to_numpy().copy()
        if "open" in tables:
            kernel.open = Partials.from_table(tables["open"])
        if "sketch" in tables and kernel._quantiles:
            kernel.sketch = Sketches.from_table(tables["sketch"], len(kernel.open))
        return kernel
