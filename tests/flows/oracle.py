"""An independent oracle for windowed views over runs: a per-reading loop for lateness and
finality, pandas for the aggregates.

It follows the semantics in ``flows/kernels/windows.py``'s docstring, written the slow, obvious way
(Python integers, so nothing overflows): readings arrive in order, cut into runs. Per series
(source, channel), ``maxt`` is the largest time seen and the frontier ``F`` the watermark
(``maxt - lateness``) at the end of the last run, or the time a ``close`` declared the data
complete up to. A reading arriving with ``wm = max(F, maxt - lateness - hold)`` (its own time
counted in ``maxt``) joins the windows still open under ``wm``; with none left, it is late. A
window is final once its finality time (its end; a session's end plus one gap) is at or before
``max(F, maxt - lateness - hold)``: inside a run the hold keeps windows open longer, and at a
run's end ``F`` catches up with the watermark.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence

import numpy as np
import pandas as pd

from obsflow.flows.kernels import windows
from obsflow.flows.kernels.viewdef import ViewDef

KEYS = ["source", "channel", "window_start", "window_end"]
NEVER = -(2**80)  # a frontier before every time


def hold(view: ViewDef, hold_windows: int | None = None) -> int:
    n = windows.HOLD_WINDOWS if hold_windows is None else hold_windows
    if view.kind == "session":
        return n * view.gap
    return n * (view.step if view.kind == "hopping" else view.size)


class Oracle:
    """Feed runs of readings (DataFrames with source, channel, time (int ns), seq, value, in
    arrival order); ``rows()`` and ``late_readings()`` say what the view holds so far.

    ``feed`` adds readings inside a run, ``end_run`` ends it, ``run`` does both; ``close``
    mirrors ``WindowKernel.close``. ``hold_windows`` defaults to the kernel's constant.
    """

    def __init__(self, view: ViewDef, hold_windows: int | None = None) -> None:
        self.view = view
        self.lag = view.lateness + hold(view, hold_windows)
        self.maxt: dict[tuple[str, str], int] = {}
        self.frontier: dict[tuple[str, str], int] = {}
        self.members: list[pd.DataFrame] = []
        self.late: list[pd.DataFrame] = []

    def done(self, key: tuple[str, str]) -> int:
        """Windows of ``key`` whose finality time is at or before this are final."""
        return max(self.frontier.get(key, NEVER), self.maxt.get(key, NEVER) - self.lag)

    def feed(self, df: pd.DataFrame) -> None:
        v = self.view
        late = np.zeros(len(df), dtype=bool)
        rows: list[int] = []
        starts: list[int] = []
        for i, (src, ch, t) in enumerate(zip(df["source"], df["channel"], df["time"], strict=True)):
            key, t = (src, ch), int(t)
            self.maxt[key] = max(self.maxt.get(key, t), t)
            wm = self.done(key)
            if v.kind == "session":
                late[i] = t + v.gap <= wm
                if not late[i]:
                    rows.append(i)
                    starts.append(t)
                continue
            step = v.size if v.kind == "tumbling" else v.step
            first = (t // step) * step
            live = [s for s in (first - j * step for j in range(v.size // step)) if s + v.size > wm]
            late[i] = not live
            for s in live:
                rows.append(i)
                starts.append(s)
        members = df.iloc[rows].copy()
        members["window_start"] = np.array(starts, dtype=np.int64)
        self.members.append(members)
        self.late.append(df[late])

    def end_run(self) -> None:
        for key, top in self.maxt.items():  # the end of a run: the frontier moves
            self.frontier[key] = max(self.frontier.get(key, NEVER), top - self.view.lateness)

    def run(self, df: pd.DataFrame) -> None:
        self.feed(df)
        self.end_run()

    def close(
        self, series: Collection[tuple[str, str]] | None = None, until: int | None = None
    ) -> None:
        """The data of ``series`` (None: all) is complete up to ``until`` (None: every window
        of theirs becomes final)."""
        rows = self.rows()
        for key in self.maxt:
            if series is not None and key not in series:
                continue
            cut = until
            if cut is None:
                mine = (rows["source"] == key[0]) & (rows["channel"] == key[1])
                cut = max(map(int, self.final_time(rows[mine])), default=NEVER)
            self.frontier[key] = max(self.frontier.get(key, NEVER), cut)

    def final_time(self, rows: pd.DataFrame) -> pd.Series:
        gap = self.view.gap if self.view.kind == "session" else 0
        return rows["window_end"] + gap

    def late_readings(self) -> pd.DataFrame:
        return pd.concat(self.late) if self.late else pd.DataFrame()

    def rows(self) -> pd.DataFrame:
        """Every window's row so far, sorted by (source, channel, window_start), with
        ``final``."""
        out = expected_rows(pd.concat(self.members), self.view) if self.members else None
        if out is None or out.empty:
            return pd.DataFrame(columns=[*KEYS, *self.view.aggregates, "final"])
        done = [self.done(k) for k in zip(out["source"], out["channel"], strict=True)]
        out["final"] = [int(f) <= d for f, d in zip(self.final_time(out), done, strict=True)]
        return out


def expected_rows(members: pd.DataFrame, view: ViewDef) -> pd.DataFrame:
    """View rows (sorted by source, channel, window_start) of window memberships: readings
    with the ``window_start`` of each window they joined (sessions: any value)."""
    members = members.copy()
    if view.kind == "session" and len(members):
        members = members.sort_values(["source", "channel", "time"], kind="stable")
        prev = members.groupby(["source", "channel"])["time"].shift()
        new = prev.isna() | (members["time"] - prev >= view.gap)
        members["session"] = new.cumsum()
        bounds = members.groupby("session")["time"].agg(["min", "max"])
        members["window_start"] = members["session"].map(bounds["min"])
        members["window_end"] = members["session"].map(bounds["max"]) + view.gap
    elif len(members):
        members["window_end"] = members["window_start"] + view.size
    else:
        members["window_end"] = members.get("window_start", pd.Series(dtype=np.int64))
    members = members.sort_values(["time", "seq"], kind="stable")
    g = members.groupby(KEYS, sort=True)["value"]
    out = pd.DataFrame(index=g.size().index)
    if {"std", "var"} & set(view.aggregates):  # two passes: squared deviations from the mean
        dev = (members["value"] - g.transform("mean")) ** 2
        n = g.count()
        var = (dev.groupby([members[k] for k in KEYS]).sum() / (n - 1)).where(n >= 2)
    for agg in view.aggregates:
        if agg == "count":
            out[agg] = g.count()
        elif agg in ("mean", "min", "max", "first", "last", "sum"):
            out[agg] = getattr(g, agg)()
        elif agg in ("std", "var"):
            out[agg] = var if agg == "var" else np.sqrt(var)
        else:
            q = float(agg[1:]) / 100
            out[agg] = g.quantile(q, interpolation="lower")
    return out.reset_index()


def in_runs(df: pd.DataFrame, view: ViewDef, cuts: Sequence[int]) -> Oracle:
    """The oracle after the runs ``df`` is cut into at ``cuts`` (arrival positions)."""
    oracle = Oracle(view)
    bounds = sorted({0, len(df), *[c for c in cuts if 0 < c < len(df)]})
    for lo, hi in itertools.pairwise(bounds):
        oracle.run(df.iloc[lo:hi])
    return oracle


def assert_rows_match(
    got: pd.DataFrame, want: pd.DataFrame, view: ViewDef, values: pd.Series
) -> None:
    """View rows (``as_ns``) equal the oracle's: keys, ``final`` and every aggregate."""
    assert len(got) == len(want)
    for col in ("source", "channel", "window_start", "window_end", "final"):
        assert got[col].tolist() == want[col].tolist(), col
    # Sums of values of either sign cancel: their error is relative to the values' scale.
    scale = max(1.0, float(np.abs(values).max())) if values.notna().any() else 1.0
    for agg in view.aggregates:
        g, w = got[agg].to_numpy(dtype=float), want[agg].to_numpy(dtype=float)
        assert (np.isnan(g) == np.isnan(w)).all(), agg
        g, w = g[~np.isnan(w)], w[~np.isnan(w)]
        if agg in ("count", "min", "max", "first", "last") or agg.startswith("p"):
            assert (g == w).all(), agg  # quantiles are exact below CAP values per window
        else:
            assert np.allclose(g, w, rtol=1e-9, atol=1e-9 * scale), agg
