"""Derived features: scalar channels computed from array payloads at ingest.

Input: a sequence of numpy arrays (payloads) and, for each, the channel it belongs to.
Output: a long table ``row, channel, value`` (``FEATURE_SCHEMA``): for payload ``row`` and each
requested feature ``f`` a reading on channel ``<channel>.<f>``, rows in payload order then
feature order, so ``readings.take(features["row"])`` gives each feature its payload's source,
time and seq. These are ordinary readings and flow into views like any channel.

Features (all computed in float64 over every element; NaN elements are missing and skipped,
as everywhere in obsflow; complex payloads use the magnitude ``|x|``; bool counts as 0/1):
``mean``, ``min``, ``max``, ``sum``, ``std`` and ``var`` (population, ``ddof=0``, as
``numpy.std``), ``rms`` (``sqrt(mean(x**2))``), ``count`` (non-missing elements). An empty or
all-NaN payload gives NaN (``sum`` 0, ``count`` 0). Payloads sharing a shape and dtype are
stacked and reduced together; Python runs per payload group, never per element.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from obsflow.connectors.errors import ConfigError
from obsflow.connectors.ids import check_id

FEATURES = ("mean", "min", "max", "sum", "std", "var", "rms", "count")
DEFAULT_FEATURES = ("mean", "max", "sum", "std", "rms")
FEATURE_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
    ]
)
STACK_BYTES = 32 << 20
"""Most float64 bytes stacked at once; larger groups are reduced in slices."""

Matrix = NDArray[np.float64]
_PLAIN: dict[str, Callable[[Matrix], Matrix]] = {
    "mean": lambda x: x.mean(axis=1),
    "min": lambda x: x.min(axis=1),
    "max": lambda x: x.max(axis=1),
    "sum": lambda x: x.sum(axis=1),
    "std": lambda x: x.std(axis=1),
    "var": lambda x: x.var(axis=1),
    "rms": lambda x: np.sqrt(np.square(x).mean(axis=1)),
    "count": lambda x: np.full(x.shape[0], float(x.shape[1])),
}
_NAN_AWARE: dict[str, Callable[[Matrix], Matrix]] = {
    "mean": lambda x: np.nanmean(x, axis=1),
    "min": lambda x: np.nanmin(x, axis=1),
    "max": lambda x: np.nanmax(x, axis=1),
    "sum": lambda x: np.nansum(x, axis=1),
    "std": lambda x: np.nanstd(x, axis=1),
    "var": lambda x: np.nanvar(x, axis=1),
    "rms": lambda x: np.sqrt(np.nanmean(np.square(x), axis=1)),
    "count": lambda x: (~np.isnan(x)).sum(axis=1).astype(np.float64),
}


def check_features(which: Sequence[str]) -> tuple[str, ...]:
    """The requested feature names, validated (known, no repeats)."""
    names = tuple(which)
    unknown = [w for w in names if w not in FEATURES]
    if unknown or not names or len(set(names)) != len(names):
        raise ConfigError(
            f"features {list(names)} — choose distinct names among {', '.join(FEATURES)}"
        )
    return names


def feature_channels(channel: str, which: Sequence[str] = DEFAULT_FEATURES) -> list[str]:
    """Channel ids ``<channel>.<feature>``, each checked against ``[A-Za-z0-9._:-]{1,128}``."""
    return [check_id(f"{channel}.{f}", kind="channel id") for f in check_features(which)]


def _reduce(x: Matrix, which: tuple[str, ...]) -> Matrix:
    """One row of features per row of ``x`` (payloads of one shape, flattened to float64)."""
    k, n = x.shape
    if n == 0:
        empty = {"sum": 0.0, "count": 0.0}
        return np.array([[empty.get(w, np.nan) for w in which]] * k, dtype=np.float64)
    fns = _NAN_AWARE if np.isnan(x).any() else _PLAIN
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN, as documented
        return np.column_stack([fns[w](x) for w in which])


def _as_float(a: NDArray[Any]) -> NDArray[Any]:
    return np.abs(a) if np.iscomplexobj(a) else a


def feature_matrix(
    payloads: Sequence[NDArray[Any]], which: Sequence[str] = DEFAULT_FEATURES
) -> Matrix:
    """Features of each payload: an array of shape ``(len(payloads), len(which))``."""
    names = check_features(which)
    out = np.empty((len(payloads), len(names)), dtype=np.float64)
    groups: dict[tuple[tuple[int, ...], str], list[int]] = {}
    for i, a in enumerate(payloads):
        groups.setdefault((a.shape, a.dtype.str), []).append(i)
    for idx in groups.values():
        size = payloads[idx[0]].size
        per = max(1, STACK_BYTES // max(1, 8 * size))
        for start in range(0, len(idx), per):
            part = idx[start : start + per]
            x = np.empty((len(part), size), dtype=np.float64)
            for j, i in enumerate(part):
                x[j] = _as_float(payloads[i]).reshape(-1)
            out[part] = _reduce(x, names)
    return out


def derive_features(
    payloads: Sequence[NDArray[Any]],
    channel: str | Sequence[str],
    which: Sequence[str] = DEFAULT_FEATURES,
) -> pa.Table:
    """Scalar readings of each payload as a ``FEATURE_SCHEMA`` table (see module doc).

    ``channel`` is one channel for all payloads or one per payload.
    """
    names = check_features(which)
    channels = [channel] * len(payloads) if isinstance(channel, str) else list(channel)
    if len(channels) != len(payloads):
        raise ValueError(f"{len(channels)} channels for {len(payloads)} payloads")
    ids = {c: feature_channels(c, names) for c in dict.fromkeys(channels)}
    values = feature_matrix(payloads, names)
    rows = np.repeat(np.arange(len(payloads), dtype=np.int64), len(names))
    labels = [name for c in channels for name in ids[c]]
    return pa.Table.from_arrays(
        [pa.array(rows), pa.array(labels, pa.string()), pa.array(values.reshape(-1))],
        schema=FEATURE_SCHEMA,
    )
