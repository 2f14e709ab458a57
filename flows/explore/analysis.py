"""Looking for structure in view rows: what a replay changed, gaps, spikes (pandas in and out)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

VIEW_KEYS = ("source", "channel", "window_start", "window_end")


def compare_views(
    before: pd.DataFrame, after: pd.DataFrame, columns: Sequence[str] = ("count", "mean")
) -> pd.DataFrame:
    """Two reads of a view side by side, one row per (series, window) in either.

    Columns: the window keys, ``<col>_before`` and ``<col>_after`` for each of ``columns``,
    and ``change``: ``added``, ``removed``, ``changed`` (a value differs; floats by more than
    1e-9 relative) or ``same``.
    """
    keys = list(VIEW_KEYS)
    cols = list(columns)
    merged = before[keys + cols].merge(
        after[keys + cols], on=keys, how="outer", suffixes=("_before", "_after"), indicator=True
    )
    differs = np.zeros(len(merged), dtype=bool)
    for c in cols:
        a = merged[f"{c}_before"].to_numpy(dtype=np.float64, na_value=np.nan)
        b = merged[f"{c}_after"].to_numpy(dtype=np.float64, na_value=np.nan)
        differs |= ~np.isclose(a, b, rtol=1e-9, atol=0.0, equal_nan=True)
    where = merged.pop("_merge").astype(str).to_numpy()
    merged["change"] = np.select(
        [where == "right_only", where == "left_only", differs],
        ["added", "removed", "changed"],
        default="same",
    )
    return merged.sort_values(keys, kind="stable").reset_index(drop=True)


def find_gaps(frame: pd.DataFrame, expected_count: int) -> pd.DataFrame:
    """Windows of a tumbling view with fewer than ``expected_count`` readings, per series,
    including windows with none at all (a view has no row for those): each series' windows
    are laid on a regular grid from its first window to its last.

    Columns: source, channel, window_start, window_end, count, missing (expected − count).
    """
    out = []
    for (source, channel), g in frame.groupby(["source", "channel"], sort=True):
        size = (g["window_end"] - g["window_start"]).min()
        grid = pd.date_range(g["window_start"].min(), g["window_start"].max(), freq=size)
        counts = g.set_index("window_start")["count"].reindex(grid, fill_value=0)
        short = counts[counts < expected_count]
        out.append(
            pd.DataFrame(
                {
                    "source": source,
                    "channel": channel,
                    "window_start": short.index,
                    "window_end": short.index + size,
                    "count": short.to_numpy(dtype=np.int64),
                    "missing": expected_count - short.to_numpy(dtype=np.int64),
                }
            )
        )
    columns = ["source", "channel", "window_start", "window_end", "count", "missing"]
    if not out:
        return pd.DataFrame(columns=columns)
    return pd.concat(out, ignore_index=True)[columns]


def find_spikes(frame: pd.DataFrame, k: float = 6.0) -> pd.DataFrame:
    """Windows whose max (or min) is more than ``k`` typical standard deviations away from the
    window mean: a few readings far outside the noise. "Typical" is the median of the series'
    window ``std``, so a spike does not hide by inflating its own window's spread.

    Needs the ``mean``, ``min``, ``max`` and ``std`` aggregates; adds ``spike``: high or low.
    """
    typical = frame.groupby(["source", "channel"])["std"].transform("median")
    high = (frame["max"] - frame["mean"]) > k * typical
    low = (frame["mean"] - frame["min"]) > k * typical
    spikes = frame[high | low].copy()
    spikes["spike"] = np.where(high[high | low], "high", "low")
    return spikes.reset_index(drop=True)
