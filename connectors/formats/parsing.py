"""Whole columns parsed at once: times (text, epochs, timestamps) to int64 ns, numbers to
float64, sequence numbers to int64, ids to dictionary arrays. Each parser returns the parsed
values and a mask of the rows it could not read; none touches a row in Python.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.schema import ID_TYPE, TIME_UNITS

if TYPE_CHECKING:  # pandas is imported where text is parsed: an ingest of typed files, and
    import pandas as pd  # the CLI's start, do without it (it takes half a second to import)

_MAGNITUDES = (1e11, 1e14, 1e17)  # below each: s, ms, us; above the last: ns
_BY_MAGNITUDE = ("s", "ms", "us", "ns")
_I64_MAX = np.iinfo(np.int64).max


def np_bool(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow result as a numpy mask (null counts as false)."""
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _scale_to_ns(raw: np.ndarray, known: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Multiply epoch integers by ``factor``; rows that would overflow int64 ns become invalid."""
    limit = _I64_MAX // factor
    ok = known & (np.abs(np.where(known, raw, 0)) <= limit)
    return np.where(ok, raw, 0) * factor, ok


_DURATION_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``"500ms"``, ``"10s"``, ``"1m"``, ``"1h"``, ``"1d"``; a bare number is seconds."""
    t = text.strip().lower()
    for unit in sorted(_DURATION_UNITS, key=len, reverse=True):
        if t.endswith(unit):
            number = t[: -len(unit)]
            break
    else:
        number, unit = t, "s"
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        raise ConfigError(f"duration {text!r} — use e.g. 500ms, 10s, 1m, 1h, 1d") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"duration {text!r} must be a finite, non-negative length")
    return seconds


def parse_duration_ns(text: str) -> int:
    """``parse_duration`` in nanoseconds."""
    return round(parse_duration(text) * 1e9)


def to_utc(value: object, what: str = "time") -> pd.Timestamp:
    """One time (ISO-8601 text, datetime, Timestamp) as UTC; naive means UTC."""
    import pandas as pd

    try:
        ts = pd.Timestamp(value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise ConfigError(
            f"{what} {value!r} is not a time — use ISO-8601, e.g. 2026-01-01T00:00Z"
        ) from None
    if pd.isna(ts):
        raise ConfigError(f"{what} {value!r} is not a time")
    try:  # pandas reads years 1 to 9999; obsflow's times are int64 ns (1677 to 2262)
        ts = ts.as_unit("ns")
    except (OverflowError, ValueError):
        raise ConfigError(
            f"{what} {value!r} is outside the times obsflow holds (1677-09-21 to 2262-04-11)"
        ) from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


EPOCH_TEXT = r"^(?P<whole>-?[0-9]{1,19})(?:\.(?P<fraction>[0-9]*))?$"
"""An epoch number as text: up to 19 digits, a decimal fraction allowed."""


def parse_time(text: object, what: str) -> int | None:
    """ISO-8601 (naive = UTC) to ns since the epoch; None stays None."""
    return None if text is None else int(to_utc(text, what).value)


def parse_times(column: pa.ChunkedArray, time_unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse any supported time column to (int64 ns since epoch UTC, valid mask).

    Timestamps (naive means UTC), dates, ISO-8601 strings, and integer or float epochs in
    ``time_unit`` are supported; anything unparseable or outside the ns range is invalid.
    """
    typ = column.type
    n = len(column)
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        if pa.types.is_date(typ):
            column = column.cast(pa.timestamp("s"))
            typ = column.type
        known = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        raw = column.cast(pa.int64()).fill_null(0).to_numpy()
        return _scale_to_ns(raw, known, TIME_UNITS[typ.unit])
    if pa.types.is_integer(typ):
        if pa.types.is_unsigned_integer(typ):
            too_big = np_bool(pc.greater(column, _I64_MAX))
            column = pc.if_else(too_big, None, column)
        known = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        raw = column.cast(pa.int64()).fill_null(0).to_numpy()
        return _scale_to_ns(raw, known, TIME_UNITS[time_unit])
    if pa.types.is_floating(typ):
        # Whole units and their fraction apart: seconds x 1e9 in float64 would round the ns
        # (1754006400.25 s is exact in a double; its product with 1e9 is not).
        f = column.cast(pa.float64()).fill_null(np.nan).to_numpy()
        scale = TIME_UNITS[time_unit]
        ok = np.isfinite(f) & (np.abs(f) * scale < 9.2e18)
        f = np.where(ok, f, 0.0)
        whole = np.floor(f)
        ns = whole.astype(np.int64) * scale + np.round((f - whole) * scale).astype(np.int64)
        return np.where(ok, ns, 0), ok
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        column = pc.utf8_trim_whitespace(column.cast(pa.string()))
        digits = np_bool(pc.match_substring_regex(column, EPOCH_TEXT))
        import pandas as pd

        series = pd.Series(column.to_numpy(zero_copy_only=False), dtype=object)
        parsed = pd.to_datetime(
            series.where(~digits, None), utc=True, format="ISO8601", errors="coerce"
        )
        unit = parsed.dt.unit  # pandas may pick s/ms/us/ns resolution
        known = ~parsed.isna().to_numpy()
        ns, ok = _scale_to_ns(_as_int(parsed), known, TIME_UNITS[unit])
        if digits.any():  # text epochs, as CSV and JSON hold them (pandas writes "….0")
            eps, eps_ok = _text_epochs(column, digits, TIME_UNITS[time_unit])
            ns, ok = np.where(digits, eps, ns), np.where(digits, eps_ok, ok)
        return ns, ok
    return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)


def infer_epoch_unit(column: pa.ChunkedArray) -> tuple[str | None, np.ndarray, np.ndarray]:
    """The unit of a time column's epoch numbers from the magnitude of most of its positive
    ones — below 1e11 seconds, 1e14 milliseconds, 1e17 microseconds, else nanoseconds, so any
    time from 1973 to 5138 reads right — and two masks of rows that are ``bad_time`` for it:
    those of another magnitude than that, and 0 or negative numbers (placeholders such as 0
    and -1 more often than times before 1970: they have no magnitude to tell a unit, and do
    not vote). ``(None, none, none)`` when it holds no epoch number."""
    typ, n = column.type, len(column)
    none = np.zeros(n, dtype=bool)
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):  # (only the magnitude matters)
        number = column.cast(pa.float64(), safe=False).fill_null(np.nan).to_numpy()
    elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
        text = pc.utf8_trim_whitespace(column.cast(pa.string()))
        digits = np_bool(pc.match_substring_regex(text, EPOCH_TEXT))
        if not digits.any():  # ISO text, the usual case: nothing to infer
            return None, none, none
        number = np.full(n, np.nan)
        number[digits] = text.filter(pa.array(digits)).cast(pa.float64()).to_numpy()
    else:
        return None, none, none
    known = np.isfinite(number)
    if not known.any():
        return None, none, none
    placeholder = known & (number <= 0)
    voting = known & ~placeholder
    if not voting.any():
        return None, none, placeholder
    magnitude = np.digitize(np.where(voting, number, 0.0), _MAGNITUDES)
    most = int(np.bincount(magnitude[voting], minlength=len(_BY_MAGNITUDE)).argmax())
    return _BY_MAGNITUDE[most], voting & (magnitude != most), placeholder


def _as_int(parsed: pd.Series) -> np.ndarray:
    """Epoch integers (in the series' own unit) of a tz-aware datetime series; NaT -> 0."""
    values = parsed.dt.tz_localize(None).to_numpy()
    return np.where(parsed.isna().to_numpy(), 0, values.view(np.int64))


def _text_epochs(column: pa.Array, digits: np.ndarray, unit: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ns of epoch texts in ``unit`` (ns per unit), a decimal fraction allowed: the
    whole part through ``_digits_to_int``, the fraction's digits as an integer of ns (digits
    past the ns are dropped)."""
    text = pc.if_else(pa.array(digits), column, "0")
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    parts = pc.extract_regex(text, EPOCH_TEXT)
    whole, fraction = pc.struct_field(parts, "whole"), pc.struct_field(parts, "fraction")
    ns, ok = _scale_to_ns(*_digits_to_int(whole, digits), unit)
    places = len(str(unit)) - 1  # digits of a fraction of the unit that are whole ns
    if places and pc.any(pc.greater(pc.utf8_length(fraction), 0)).as_py():
        padded = pc.utf8_rpad(fraction, places, "0")
        part = pc.utf8_slice_codeunits(padded, 0, places).cast(pa.int64()).to_numpy()
        negative = np_bool(pc.starts_with(whole, "-"))
        ns = np.where(ok, ns + np.where(negative, -part, part), 0)
    return ns, ok


def _digits_to_int(column: pa.Array, digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact int64 of strings of up to 19 digits (split in two halves so nothing overflows)."""
    text = pc.if_else(pa.array(digits), column, "0")
    neg = np_bool(pc.starts_with(text, "-"))
    text = pc.utf8_ltrim(text, characters="-")
    length = pc.utf8_length(text).to_numpy(zero_copy_only=False)
    low = pc.utf8_slice_codeunits(text, -9).cast(pa.int64()).to_numpy(zero_copy_only=False)
    head = pc.utf8_slice_codeunits(text, 0, -9)
    high = (
        pc.if_else(pa.array(length > 9), head, "0").cast(pa.int64()).to_numpy(zero_copy_only=False)
    )
    ok = digits & (high <= _I64_MAX // 10**9)
    high = np.where(ok, high, 0)
    value = high * 10**9 + low
    ok &= value >= 0  # the final add can still wrap for the last few values
    return np.where(neg, -value, value), ok


MISSING_TEXT = pa.array(
    [
        *("nan", "-nan", "null", "none", "na", "n/a", "#n/a", "#na", "#n/a n/a"),
        *("-1.#ind", "1.#ind", "-1.#qnan", "1.#qnan"),
    ]
)
"""How a missing value is written as text (lower case; Arrow's CSV reader's null values and
pandas' ``None``): a value NaN, not a bad one."""
DECIMAL_COMMA = r"^\s*[-+]?[0-9]+,[0-9]+\s*$"
"""A number written with a decimal comma (``21,5``), as European exports write them."""


def parse_float(column: pa.ChunkedArray, decimal: str = ".") -> tuple[np.ndarray, np.ndarray]:
    """Values as float64 and a mask of rows whose value is unusable (unparseable or ±inf);
    text with ``decimal`` ``","`` has a decimal comma (``21,5``; a point is then unusable)."""
    values, bad, _absent = parse_values(column, decimal)
    return values, bad


def parse_values(
    column: pa.ChunkedArray, decimal: str = "."
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``parse_float``, and a mask of the rows that hold no value at all: null, or text of
    nothing but spaces (an empty CSV cell). A value written NaN (a float, or ``MISSING_TEXT``)
    is one: a missing value, written."""
    typ = column.type
    n = len(column)
    if pa.types.is_floating(typ) or pa.types.is_integer(typ) or pa.types.is_decimal(typ):
        absent = np_bool(column.is_null())
        values = column.cast(pa.float64()).fill_null(np.nan).to_numpy()
        return values, np.isinf(values), absent
    if pa.types.is_null(typ):
        return np.full(n, np.nan), np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        text = pc.utf8_trim_whitespace(column)
        blank = np_bool(pc.equal(text, "")) | np_bool(text.is_null())
        pointed = np.zeros(n, dtype=bool)
        if decimal == ",":
            pointed = np_bool(pc.match_substring(text, "."))
            text = pc.replace_substring(text, ",", ".")
        import pandas as pd

        series = pd.Series(text.to_numpy(zero_copy_only=False), dtype=object)
        values = pd.to_numeric(series.where(~blank, None), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
        lowered = pc.ascii_lower(text)
        spelled_nan = np_bool(pc.is_in(lowered, MISSING_TEXT))
        bad = (np.isnan(values) & ~blank & ~spelled_nan) | np.isinf(values) | pointed
        return np.where(pointed, np.nan, values), bad, blank
    return np.full(n, np.nan), np.ones(n, dtype=bool), np_bool(column.is_null())


def parse_seq(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Sequence numbers as int64 and a mask of rows whose seq is unusable."""
    if pa.types.is_integer(column.type):
        known = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if pa.types.is_unsigned_integer(column.type):
            # (against a uint64 scalar: a Python int would be cast to the column's type... or
            # the column to int64, which fails on 2**64 - 1)
            known &= ~np_bool(pc.greater(column, pa.scalar(_I64_MAX, pa.uint64())))
        zero = pa.scalar(0, column.type)  # (a Python 0 would cast a uint64 column to int64)
        raw = pc.if_else(pa.array(known), column, zero).cast(pa.int64(), safe=False).to_numpy()
        bad = ~known | (raw < 0)
        return pa.array(np.where(bad, 0, raw)), bad
    s, bad = parse_float(column)
    bad = bad | np.isnan(s) | (s < 0) | (s != np.floor(s)) | (s >= 2.0**63)
    return pa.array(np.where(bad, 0, s).astype(np.int64)), bad


def looks_like_values(column: pa.Array) -> bool:
    """Whether a text column holds measurements (numbers written with a point or an exponent),
    not channel names (plain integers like ``1``, ``2`` may well be channel numbers)."""
    values, bad = parse_float(column)
    known = ~np.isnan(values)
    if not known.any() or bad.any():
        return False
    integers = np_bool(pc.match_substring_regex(column, r"^\s*[-+]?\d+\s*$"))
    return not integers[known].all()


def as_ids(col: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray | None:
    """An id column (text, or integers read as text) as one ``ID_TYPE`` array; None if it is
    neither. Dictionary-encoded once, here: the id check, the partition split, dedup, seq
    numbers and the views all group by ids, and read these codes instead of hashing strings
    again (a Parquet reader hands text over already encoded: ``files.read_parquet``)."""
    typ = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    if pa.types.is_integer(typ):
        col = col.cast(pa.string())
    elif not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        return None
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    if isinstance(col, pa.ChunkedArray):  # (one dictionary for all chunks)
        col = col.combine_chunks()
    ids: pa.DictionaryArray = col.cast(ID_TYPE)
    return ids
