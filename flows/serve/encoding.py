"""Rows as responses: JSON records (times ISO-8601 UTC), CSV, or an Arrow IPC stream
(``format=json|csv|arrow``: ``connectors.formats.registry`` encodes them), and JSON documents."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.registry import FORMATS, encoder
from obsflow.flows.serve.filters import Filters

SERVED = ("json", "csv", "arrow")  # the ``format=`` names a response may ask for


def table_response(request: Request, read: Callable[[Filters], pa.Table]) -> Response:
    """The rows ``read`` returns for the request's filters, in its ``format``, at most its
    ``limit`` of them."""
    fmt = request.query_params.get("format", "json")
    if fmt not in SERVED:
        raise ConfigError(f"format={fmt!r}: use {', '.join(SERVED[:-1])} or {SERVED[-1]}")
    filters = Filters.of(request.query_params)
    table = read(filters)
    if filters.limit is not None:
        table = table.slice(0, filters.limit)
    return Response(encoder(fmt)(table), media_type=FORMATS[fmt].media_type)


def json_response(doc: Any) -> Response:
    """``doc`` as JSON, what JSON cannot hold (times) as its text."""
    return JSONResponse(json.loads(json.dumps(doc, default=str)))
