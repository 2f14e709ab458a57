"""``records_json`` (columnar JSON encoding) against Python's json over ``to_pylist``."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from obsflow.connectors.formats.json_records import records_json

UTC = dt.UTC


def oracle(table: pa.Table) -> list[dict[str, Any]]:
    """What the records should be: times as ISO-8601 UTC with nanoseconds, non-finite floats
    as None, everything else as Arrow gives it to Python."""
    out = []
    for row in table.to_pylist():
        for name, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                row[name] = None
        out.append(row)
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_timestamp(column.type):
            ns = column.cast(pa.timestamp("ns", "UTC")).cast(pa.int64()).to_pylist()
            for row, v in zip(out, ns, strict=True):
                row[name] = None if v is None else iso(v)
    return out


def iso(ns: int) -> str:
    seconds, frac = divmod(ns, 10**9)
    day = dt.datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{day}.{frac:09d}Z"


texts = st.text(st.characters(codec="utf-8"), max_size=12)
floats = st.floats(allow_nan=True, allow_infinity=True)
times = st.integers(-(2**62), 2**62)


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    n = draw(st.integers(0, 30))

    def column(values: st.SearchStrategy[Any]) -> list[Any]:
        return draw(st.lists(st.one_of(st.none(), values), min_size=n, max_size=n))

    return pa.table(
        {
            "source": pa.array(column(texts), pa.string()),
            "tag": pa.array(column(texts), pa.string()).dictionary_encode(),
            "window_start": pa.array(column(times), pa.int64()).cast(pa.timestamp("ns", "UTC")),
            "count": pa.array(column(st.integers(-(2**63), 2**63 - 1)), pa.int64()),
            "mean": pa.array(column(floats), pa.float64()),
            "low": pa.array(column(st.floats(width=32)), pa.float32()),
            "final": pa.array(column(st.booleans()), pa.bool_()),
            "nothing": pa.nulls(n),
        }
    )


@settings(max_examples=300, deadline=None)
@given(tables())
def test_records_equal_pythons_json_of_the_rows(table: pa.Table) -> None:
    assert json.loads(records_json(table)) == oracle(table)


def test_floats_are_exact_and_strings_escaped() -> None:
    table = pa.table(
        {
            "s": ['a"b\\c', "tab\there", "é✓", "</script>"],
            "x": [0.1, 1 / 3, 5e-324, float("nan")],
        }
    )
    text = records_json(table)
    assert json.loads(text) == [
        {"s": 'a"b\\c', "x": 0.1},
        {"s": "tab\there", "x": 1 / 3},
        {"s": "é✓", "x": 5e-324},
        {"s": "</script>", "x": None},
    ]
    assert "NaN" not in text
    assert '"x":0.1}' in text  # the shortest form


def test_no_rows_is_an_empty_array() -> None:
    assert records_json(pa.table({"a": pa.array([], pa.float64())})) == "[]"
