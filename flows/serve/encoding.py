"""Rows as responses: JSON records (times ISO-8601 UTC), CSV, or an Arrow IPC stream
(``format=json|csv|arrow``), and JSON documents."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.json_records import records_json
from obsflow.flows.serve.filters import Filters

FORMATS = {
    "json": "application/json",
    "csv": "text/csv",
    "arrow": "application/vnd.apache.arrow.stream",
}


def encode(table: pa.Table, fmt: str) -> bytes:
    """Rows as JSON records (times ISO-8601 UTC), CSV, or an Arrow IPC stream."""
    if fmt == "arrow":
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue()
    if fmt == "csv":
        sink = io.BytesIO()
        pacsv.write_csv(table, sink)
        return sink.getvalue()
    return records_json(table).encode()


def table_response(request: Request, read: Callable[[Filters], pa.Table]) -> Response:
    """The rows ``read`` returns for the request's filters, in its ``format``, at most its
    ``limit`` of them."""
    fmt = request.query_params.get("format", "json")
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r}: use json, csv or arrow")
    filters = Filters.of(request.query_params)
    table = read(filters)
    if filters.limit is not None:
        table = table.slice(0, filters.limit)
    return Response(encode(table, fmt), media_type=FORMATS[fmt])


def json_response(doc: Any) -> Response:
    """``doc`` as JSON, what JSON cannot hold (times) as its text."""
    return JSONResponse(json.loads(json.dumps(doc, default=str)))
