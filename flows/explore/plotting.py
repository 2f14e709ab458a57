"""Plots of views and readings over time (UTC) for notebooks; matplotlib is imported lazily."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from obsflow.connectors.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.axes import Axes

CHANNEL_UNITS = {
    "temperature": "°C",
    "pressure": "hPa",
    "salinity": "PSU",
    "sea_water_temperature": "°C",
}
"""Units of the simulator's channels and of the buoy sample, for axis labels."""


class Look(TypedDict, total=False):
    """How ``plot_windows`` and ``plot_readings`` draw: ``by``, the column with a line per value
    (default ``source``); ``ax``, the axes (default: a new figure); ``label``, the lines' name
    (default: the group; with several groups ``label: group``); ``ylabel`` (default: the
    frame's one channel with its unit, else the value column); ``title``; and line properties
    for ``Axes.plot``: the usual ones are typed here, any other ``Line2D`` property is passed
    on as well."""

    by: str
    ax: Axes | None
    label: str | None
    ylabel: str | None
    title: str | None
    color: str | tuple[float, ...]
    marker: str
    linestyle: str
    linewidth: float
    markersize: float
    alpha: float


_LAYOUT = ("by", "ax", "label", "ylabel", "title")  # the rest of a Look styles the lines


def unit_label(channel: str) -> str:
    """``"temperature (°C)"`` for a channel with a known unit, else the channel name."""
    unit = CHANNEL_UNITS.get(channel)
    return f"{channel} ({unit})" if unit else channel


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("plotting needs matplotlib: pip install 'obsflow[notebooks]'") from None
    return plt


def _naive_utc(times: pd.Series) -> pd.Series:
    """UTC times without their zone: matplotlib then shows them as they are, in UTC."""
    naive: pd.Series = times.dt.tz_convert("UTC").dt.tz_localize(None)
    return naive


def _axes(look: Look) -> Axes:
    ax = look.get("ax")
    if ax is not None:
        return ax
    new: Axes = _pyplot().subplots(figsize=(10, 3.5), layout="constrained")[1]
    return new


def _style(look: Look, **defaults: Any) -> dict[str, Any]:
    """The line properties of ``look`` over ``defaults``: what goes to ``Axes.plot``."""
    return {**defaults, **{k: v for k, v in look.items() if k not in _LAYOUT}}


def _groups(frame: pd.DataFrame, look: Look) -> Iterator[tuple[str, pd.DataFrame]]:
    """Each ``by`` group of ``frame``, in order, with the name its line is labelled with."""
    label = look.get("label")
    groups = frame.groupby(look.get("by", "source"), sort=True)
    for key, group in groups:
        if label is None:
            yield str(key), group
        else:
            yield (label if groups.ngroups == 1 else f"{label}: {key}"), group


def _finish(ax: Axes, frame: pd.DataFrame, value: str, look: Look) -> Axes:
    """Axis labels (units, UTC), readable dates, title, legend."""
    import matplotlib.dates as mdates

    channels = sorted(frame["channel"].unique()) if "channel" in frame else []
    ylabel = look.get("ylabel")
    if ylabel is None and not ax.get_ylabel():  # a later plot on the axes keeps its label
        ylabel = unit_label(str(channels[0])) if len(channels) == 1 else value
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    ax.set_xlabel("time (UTC)")
    locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    if (title := look.get("title")) is not None:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return ax


def plot_windows(
    frame: pd.DataFrame,
    *,
    value: str = "mean",
    low: str | None = "min",
    high: str | None = "max",
    **look: Unpack[Look],
) -> Axes:
    """Plot a view's ``value`` over time at window midpoints (UTC), one line per group
    (``Look``: default per source), with a ``low``–``high`` band (default min/max; None: no
    band). Needs matplotlib (``pip install 'obsflow[notebooks]'``)."""
    ax, style = _axes(look), _style(look)
    for name, group in _groups(frame, look):
        group = group.sort_values("window_start")
        start = _naive_utc(group["window_start"]).to_numpy()
        end = _naive_utc(group["window_end"]).to_numpy()
        # Break the line where the next window does not follow on, so gaps stay visible.
        after = np.append(end[:-1] < start[1:], False)
        mid = start + (end - start) / 2
        x, y = _broken(mid, group[value].to_numpy(dtype=np.float64), after)
        (line,) = ax.plot(x, y, label=name, **style)
        if low is None or high is None:
            continue
        lo = group[low].to_numpy(dtype=np.float64)
        hi = group[high].to_numpy(dtype=np.float64)
        if (end[:-1] > start[1:]).any():  # overlapping (hopping) windows: band at midpoints
            bx, blo, bhi = mid, lo, hi
        else:  # each window's band spans exactly the window
            edges = np.column_stack([start, end]).ravel()
            bx, blo = _broken(edges, np.repeat(lo, 2), after, 2)
            _, bhi = _broken(edges, np.repeat(hi, 2), after, 2)
        ax.fill_between(bx, blo, bhi, color=line.get_color(), alpha=0.2, lw=0)
    return _finish(ax, frame, value, look)


def _broken(
    x: NDArray[Any], y: NDArray[np.float64], after: NDArray[np.bool_], per: int = 1
) -> tuple[NDArray[Any], NDArray[np.float64]]:
    """``x`` (times) and ``y`` with a NaT/NaN point after each item (of ``per`` points) flagged
    in ``after``: matplotlib breaks lines and bands there."""
    at = (np.flatnonzero(after) + 1) * per
    return np.insert(x, at, np.datetime64("NaT")), np.insert(y, at, np.nan)


def plot_readings(frame: pd.DataFrame, *, value: str = "value", **look: Unpack[Look]) -> Axes:
    """Plot readings (a capture, late readings) as points over time (UTC), per group
    (``Look``: default per source)."""
    ax, style = _axes(look), _style(look, marker=".", linestyle="none", markersize=3)
    for name, group in _groups(frame, look):
        ax.plot(_naive_utc(group["time"]), group[value], label=name, **style)
    return _finish(ax, frame, value, look)


def mark_windows(
    ax: Axes, windows: pd.DataFrame, *, label: str, color: str = "tab:red", alpha: float = 0.25
) -> Axes:
    """Shade each window ``[window_start, window_end)`` of ``windows`` (gaps, spikes, changes)."""
    starts = _naive_utc(windows["window_start"])
    ends = _naive_utc(windows["window_end"])
    for i, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
        ax.axvspan(lo, hi, color=color, alpha=alpha, lw=0, label=label if i == 0 else None)
    if len(windows):
        ax.legend(fontsize="small")
    return ax
