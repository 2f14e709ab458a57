"""An independent oracle for windowed views: a per-reading loop for lateness, pandas for the rest.

It follows the semantics in ``flows/windows.py``'s docstring, written the slow, obvious way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from obsflow.flows.viewdef import ViewDef


def split_late(df: pd.DataFrame, view: ViewDef) -> tuple[pd.DataFrame, pd.Series]:
    """Walk readings in arrival order; return (window memberships of on-time readings, late mask).

    ``df`` has columns source, channel, time (int ns), seq, value, in arrival order.
    """
    maxt: dict[tuple[str, str], int] = {}
    late = np.zeros(len(df), dtype=bool)
    member_rows: list[int] = []
    member_starts: list[int] = []
    for i, (src, ch, t) in enumerate(zip(df["source"], df["channel"], df["time"], strict=True)):
        key = (src, ch)
        maxt[key] = max(maxt.get(key, t), t)
        wm = maxt[key] - view.lateness
        if view.kind == "session":
            late[i] = t + view.gap <= wm
            if not late[i]:
                member_rows.append(i)
                member_starts.append(t)
            continue
        step = view.size if view.kind == "tumbling" else view.step
        first_start = (t // step) * step
        starts = [first_start - j * step for j in range(view.size // step)]
        open_starts = [s for s in starts if s + view.size > wm]
        late[i] = not open_starts
        for s in open_starts:
            member_rows.append(i)
            member_starts.append(s)
    members = df.iloc[member_rows].copy()
    members["window_start"] = member_starts
    return members, pd.Series(late, index=df.index)


def expected_rows(df: pd.DataFrame, view: ViewDef) -> tuple[pd.DataFrame, pd.Series]:
    """(view rows sorted by source, channel, window_start; late mask) for readings ``df``."""
    members, late = split_late(df, view)
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
    keys = ["source", "channel", "window_start", "window_end"]
    members = members.sort_values(["time", "seq"], kind="stable")
    g = members.groupby(keys, sort=True)["value"]
    out = pd.DataFrame(index=g.size().index)
    for agg in view.aggregates:
        if agg == "count":
            out[agg] = g.count()
        elif agg in ("mean", "min", "max", "first", "last", "sum"):
            out[agg] = getattr(g, agg)()
        elif agg in ("std", "var"):
            out[agg] = g.agg(lambda x, a=agg: _moment(x, a))
        else:
            q = float(agg[1:]) / 100
            out[agg] = g.quantile(q, interpolation="lower")
    return out.reset_index(), late


def _moment(x: pd.Series, which: str) -> float:
    v = x.dropna().to_numpy()
    if v.size < 2:
        return float("nan")
    var = float(np.sum((v - v.mean()) ** 2) / (v.size - 1))  # two-pass, exact enough here
    return var if which == "var" else float(np.sqrt(var))
