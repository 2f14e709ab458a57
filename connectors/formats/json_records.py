"""Arrow tables as JSON arrays of records, built column by column in Arrow's kernels.

``obsflow serve`` sends view rows as JSON to every client of a live view; building a Python
dict per row (``to_pylist``) made that encoding most of the server's CPU. Here each column
becomes an array of JSON texts (numbers in Arrow's shortest round-trip form, times ISO-8601
UTC with nanoseconds, strings quoted and escaped), the columns are joined into one text per
row (``row_texts``, encoded once per commit and shared by every client), and the rows a client
wants into one array (``json_array``) — no Python object per row.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

_EMPTY = pa.array([], pa.large_string())


def text(literal: str) -> pa.Scalar:
    return pa.scalar(literal, pa.large_string())


def records_json(table: pa.Table) -> str:
    """Rows as a JSON array of objects: times as ISO-8601 UTC with nanoseconds, floats exact
    (shortest round-trip form), NaN and infinities as null (JSON has neither)."""
    return json_array(row_texts(table))


def row_texts(table: pa.Table) -> pa.LargeStringArray:
    """Each row of ``table`` as the text of one JSON object."""
    if table.num_rows == 0:
        return _EMPTY
    parts: list[pa.Array | pa.Scalar] = []
    for i, (name, column) in enumerate(zip(table.column_names, table.columns, strict=True)):
        parts.append(text(("{" if i == 0 else ",") + json.dumps(name) + ":"))
        parts.append(pc.fill_null(json_values(column.combine_chunks()), text("null")))
    parts.append(text("}"))
    return pc.binary_join_element_wise(*parts, text(""))


def json_array(rows: pa.LargeStringArray) -> str:
    """Texts of JSON values as the text of one JSON array."""
    if len(rows) == 0:
        return "[]"
    whole = pa.LargeListArray.from_arrays(pa.array([0, len(rows)], pa.int64()), rows)
    joined: str = pc.binary_join(whole, text(","))[0].as_py()
    return "[" + joined + "]"


def json_values(column: pa.Array) -> pa.Array:
    """Each value of ``column`` as JSON text (large_string); nulls stay null."""
    kind = column.type
    if pa.types.is_timestamp(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind):
        # Times and names repeat (every series has the same windows): each distinct value is
        # formatted once.
        column, kind = column.dictionary_encode(), pa.dictionary(pa.int32(), kind)
    if pa.types.is_dictionary(kind):
        return formatted(column.dictionary).take(column.indices)
    return formatted(column)


def formatted(column: pa.Array) -> pa.Array:
    kind = column.type
    if pa.types.is_timestamp(kind):
        return quoted(pc.strftime(column.cast(pa.timestamp("ns", "UTC")), "%Y-%m-%dT%H:%M:%SZ"))
    if pa.types.is_floating(kind):
        # As doubles (what a JSON reader makes of them): a float32 prints its exact value.
        column = column.cast(pa.float64())
        finite = pc.is_finite(column)
        return pc.if_else(finite, column, pa.scalar(None, pa.float64())).cast(pa.large_string())
    if pa.types.is_integer(kind):
        return column.cast(pa.large_string())
    if pa.types.is_boolean(kind):
        return pc.if_else(column, text("true"), text("false"))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        strings = column.cast(pa.large_string())
        if not pc.all(pc.utf8_is_printable(strings)).as_py():
            return one_by_one(strings)  # control characters (no id may hold them): json's way
        strings = pc.replace_substring(strings, "\\", "\\\\")
        return quoted(pc.replace_substring(strings, '"', '\\"'))
    if pa.types.is_null(kind):
        return pa.nulls(len(column), pa.large_string())
    return one_by_one(column)  # nested or binary columns: not in views; correct, not fast


def quoted(values: pa.Array) -> pa.Array:
    quote = text('"')
    return pc.binary_join_element_wise(quote, values.cast(pa.large_string()), quote, text(""))


def one_by_one(column: pa.Array) -> pa.Array:
    """The slow, general way: Python's json per value (bytes as text, like ``str``)."""
    texts = [None if v is None else json.dumps(v, default=str) for v in column.to_pylist()]
    return pa.array(texts, pa.large_string())


def encode(table: pa.Table) -> bytes:
    """Rows as the UTF-8 bytes of ``records_json``."""
    return records_json(table).encode()
