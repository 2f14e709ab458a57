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

Only the *hot* open windows are merged with each batch. A window the watermark itself has passed
(final at the run's end, or when the hold passes it) moves to the *shelf*
(``flows.kernels.shelf``), which a batch touches only when one of its readings comes back to a
shelved window's series (later than the lateness, inside the hold): those windows are taken
back for the merge. So in-order data costs per batch what the batch's own windows cost, however
many windows the hold keeps open; which set a window is in never changes a row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from obsflow.connectors.formats.schema import TIME_TYPE
from obsflow.flows.kernels.partials import (
    I64_MAX,
    I64_MIN,
    Partials,
    constant_fields,
    group_by_window,
    group_sessions,
    order_by,
    reduce_groups,
    reduce_runs,
    rising,
    segment_keys,
)
from obsflow.flows.kernels.series import SeriesIndex
from obsflow.flows.kernels.shelf import Shelf
from obsflow.flows.kernels.sketch import Sketches
from obsflow.flows.kernels.viewdef import ViewDef

HOLD_WINDOWS = 1024
"""Inside a run, windows stay open until the watermark passes them by this many windows (step
or gap) more than the lateness: the disorder one input may have without late readings."""
NO_TIME = I64_MIN  # "nothing seen yet": before any time (durations are subtracted by _minus)


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

    def behind(self, p: Partials, cut: np.ndarray) -> np.ndarray:
        """Fresh partials that may merge with a shelved window (finality time <= ``cut``)."""
        return p.end <= cut


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

    def behind(self, p: Partials, cut: np.ndarray) -> np.ndarray:
        # A shelved session ends (tmax + gap) at most a gap before ``cut``: a run joins it only
        # by starting before its end.
        return p.start < cut


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
        self.ids = SeriesIndex()
        self.maxt = np.zeros(0, dtype=np.int64)  # largest event time seen, per series
        self.frontier = np.zeros(0, dtype=np.int64)  # windows final up to here, per series
        # Open windows: hot ones (merged with each batch) and shelved ones (past the watermark,
        # not final until the hold or the run's end passes them), each with its sketches.
        self.hot = Partials.empty()
        self.sketch = Sketches.empty()
        self.shelved_to = np.zeros(0, dtype=np.int64)  # per series: shelved windows end by here
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
        self.shelf = Shelf(self.policy.final_time, constant_fields(self._need))

    # series bookkeeping ----------------------------------------------------------------------

    @property
    def names(self) -> list[tuple[str, str]]:
        """(source, channel) of every series, by series id."""
        return self.ids.names()

    @property
    def open(self) -> Partials:
        """Every open window (hot and shelved)."""
        return self._open()[0]

    def _open(self) -> tuple[Partials, Sketches]:
        p, s = self.shelf.all()
        if not len(p):
            return self.hot, self.sketch
        return Partials.concat(self.hot, p), Sketches.concat(self.sketch, s)

    def _series_ids(self, source: pa.ChunkedArray, channel: pa.ChunkedArray) -> np.ndarray:
        sid = self.ids.ids(encoded(source), encoded(channel))
        self._grow()
        return sid

    def _grow(self) -> None:
        """Per-series arrays sized to the series known (one concatenation per batch)."""
        n = len(self.ids)
        for name in ("maxt", "frontier", "shelved_to"):
            a = getattr(self, name)
            if a.size < n:
                setattr(self, name, np.concatenate([a, np.full(n - a.size, NO_TIME, np.int64)]))

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
        return self._take_final(held), late_rows

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
        key = sid.astype(np.uint16) if len(self.ids) <= 1 << 16 else sid
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
        """Merge fresh partials into the hot windows (and, for series a reading came back to,
        their shelved ones); then shelve the windows the watermark has passed."""
        hot, hot_sketch = self.hot, self.sketch
        behind = self.policy.behind(fresh, self.shelved_to[fresh.sid])
        if len(self.shelf) and behind.any():  # rare: readings later than the lateness
            series = np.zeros(len(self.ids), bool)
            series[fresh.sid[behind]] = True
            back, back_sketch = self.shelf.pull(series)
            if len(back):  # in (series, start) order, as the open windows always were
                hot = Partials.concat(hot, back)
                hot_sketch = Sketches.concat(hot_sketch, back_sketch)
                order = order_by(hot.sid, hot.start)
                hot = hot.take(order)
                if self._quantiles:
                    where = np.empty_like(order)
                    where[order] = np.arange(order.size)
                    hot_sketch = hot_sketch.remap(where, order.size)
        both = Partials.concat(hot, fresh)
        group, n = self.policy.group(both)
        merged = reduce_groups(both, group, n, first_last=self._first_last)
        self.policy.settle(merged)
        merged_sketch = Sketches.empty()
        if self._quantiles:
            merged_sketch = Sketches.concat(hot_sketch, sketch).remap(group, n)
        cut = self.watermark()
        ripe = self.policy.final_time(merged) <= cut[merged.sid]
        self.shelved_to = cut
        if ripe.any():
            self.shelf.add(merged.take(ripe), merged_sketch.select(ripe))
            merged, merged_sketch = merged.take(~ripe), merged_sketch.select(~ripe)
        self.hot, self.sketch = merged, merged_sketch

    # finality ------------------------------------------------------------------------------------

    def finalize(self) -> pa.Table:
        """End of a run: windows whose finality time the watermark has passed become final
        (the frontier moves to the watermark); rows of those windows."""
        self.frontier = np.maximum(self.frontier, self.watermark())
        return self._take_final(self.frontier)

    def close(self, series: np.ndarray | None = None, until: int | None = None) -> pa.Table:
        """Declare the data of some series (a boolean mask over series ids; None: all)
        complete up to ``until``: their watermark is taken to be ``until``; without it every
        open window of theirs becomes final. Rows of the windows now final."""
        chosen = np.ones(len(self.ids), bool) if series is None else series
        if until is None:
            cut = self.frontier.copy()
            for p in (self.hot, self.shelf.all()[0]):
                np.maximum.at(cut, p.sid, self.policy.final_time(p))
        else:
            cut = np.full(len(self.ids), until, np.int64)
        self.frontier = np.where(chosen, np.maximum(self.frontier, cut), self.frontier)
        return self._take_final(self.frontier)

    def _take_final(self, upto: np.ndarray) -> pa.Table:
        """Rows of the open windows whose finality time is at or before ``upto`` of their
        series; those windows are closed."""
        final = self.policy.final_time(self.hot) <= upto[self.hot.sid]
        shelved, shelved_sketch = self.shelf.take_final(upto)
        if not final.any() and not len(shelved):
            return self._rows(Partials.empty(), Sketches.empty())
        if not final.any():  # (the hot windows stay as they are: no copies)
            return self._rows(shelved, shelved_sketch)
        done = Partials.concat(self.hot.take(final), shelved)
        done_sketch = Sketches.concat(self.sketch.select(final), shelved_sketch)
        self.hot, self.sketch = self.hot.take(~final), self.sketch.select(~final)
        return self._rows(done, done_sketch)

    def open_rows(self) -> pa.Table:
        """Rows of the windows still open, as they stand (provisional rows)."""
        return self._rows(*self._open())

    # output ----------------------------------------------------------------------------------

    def _rows(self, p: Partials, sketch: Sketches) -> pa.Table:
        """View rows in canonical order (series, window start)."""
        order = order_by(p.sid, p.start)
        n = p.n[order]
        sids = p.sid[order]
        cols: dict[str, pa.Array] = {
            "source": self.ids.source_names(sids),
            "channel": self.ids.channel_names(sids),
            "window_start": pa.array(p.start[order]).cast(TIME_TYPE),
            "window_end": pa.array(p.end[order]).cast(TIME_TYPE),
        }
        smin, smax = p.smin[order], p.smax[order]
        empty, few = n == 0, n < 2

        def var() -> np.ndarray:
            with np.errstate(invalid="ignore", divide="ignore"):
                out: np.ndarray = p.m2[order] / (n - 1)
            return out

        # Computed only for the aggregates the view has (no work or memory for the others).
        values: dict[str, tuple[Callable[[], np.ndarray], np.ndarray | None]] = {
            "sum": (lambda: p.ref[order] * n + p.mu[order] * n, None),
            "mean": (lambda: p.ref[order] + p.mu[order], empty),
            "min": (lambda: p.vmin[order], empty),
            "max": (lambda: p.vmax[order], empty),
            "var": (var, few),
            "std": (lambda: np.sqrt(np.maximum(var(), 0.0)), few),
            "first": (lambda: p.fv[order], empty),
            "last": (lambda: p.lv[order], empty),
        }
        for agg in self.view.aggregates:
            if agg == "count":
                cols[agg] = pa.array(n, pa.int64())
            elif agg in values:
                data, mask = values[agg]
                cols[agg] = pa.array(data(), pa.float64(), mask=mask)
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
        every = np.arange(len(self.ids))
        # Open windows in (series, start) order, as one merged set: the shelf is not saved.
        p, sketch = self._open()
        order = order_by(p.sid, p.start)
        if self._quantiles and order.size:
            where = np.empty_like(order)
            where[order] = np.arange(order.size)
            sketch = sketch.remap(where, order.size)
        return {
            "series": pa.table(
                {
                    "source": self.ids.source_names(every),
                    "channel": self.ids.channel_names(every),
                    "maxt": pa.array(self.maxt, pa.int64()),
                    "frontier": pa.array(self.frontier, pa.int64()),
                }
            ),
            "open": p.take(order).to_table(),
            "sketch": sketch.to_table(),
        }

    @classmethod
    def from_state(cls, view: ViewDef, tables: dict[str, pa.Table]) -> WindowKernel:
        """A kernel continuing where ``state()`` was taken (tables that are missing: empty)."""
        kernel = cls(view)
        series = tables.get("series")
        if series is not None and series.num_rows:
            kernel.ids.add(_array(series.column("source")), _array(series.column("channel")))
            kernel.maxt = series.column("maxt").to_numpy().copy()
            kernel.frontier = series.column("frontier").to_numpy().copy()
            kernel._grow()
        if "open" in tables:  # all hot: the first batch shelves what the watermark passed
            kernel.hot = Partials.from_table(tables["open"])
        if "sketch" in tables and kernel._quantiles:
            kernel.sketch = Sketches.from_table(tables["sketch"], len(kernel.hot))
        return kernel
