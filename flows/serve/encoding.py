"""Rows as responses: JSON records (times ISO-8601 UTC), CSV, or an Arrow IPC stream
(``format=json|csv|arrow``: ``connectors.formats.registry`` encodes them), a page at a time,
and JSON documents.

A row response is one page (``connectors.datasets.pages``): at most ``limit`` rows
(``DEFAULT_LIMIT`` when not given, ``MAX_LIMIT`` at most), read from ``cursor`` on; when rows
remain, a ``Link: <...>; rel="next"`` header names the next page. The page's rows are encoded
and sent ``CHUNK_ROWS`` at a time, so a response never holds its whole body.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from obsflow.connectors.datasets.pages import Cursor, Paged, read_page
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.json_records import json_array, row_texts
from obsflow.connectors.formats.registry import FORMATS, encoder
from obsflow.connectors.storage.store import Store
from obsflow.flows.serve.filters import DEFAULT_LIMIT, Filters

SERVED = ("json", "csv", "arrow")  # the ``format=`` names a response may ask for
CHUNK_ROWS = 10_000  # rows encoded at a time


def table_response(request: Request, store: Store, paged: Callable[[Filters], Paged]) -> Response:
    """One page of the rows ``paged`` reads for the request's filters, in its ``format``, with
    a ``Link`` to the next page when rows remain."""
    fmt = request.query_params.get("format", "json")
    if fmt not in SERVED:
        raise ConfigError(f"format={fmt!r}: use {', '.join(SERVED[:-1])} or {SERVED[-1]}")
    filters = Filters.of(request.query_params)
    given = request.query_params.get("cursor")
    cursor = Cursor.parse(given) if given else None
    limit = DEFAULT_LIMIT if filters.limit is None else filters.limit
    page = read_page(store, paged(filters), cursor, limit)
    headers = {}
    if page.next is not None:
        # (relative to the origin; never the token: the cookie carries it from here on)
        url = request.url.remove_query_params("token").include_query_params(cursor=page.next.text())
        headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
    return StreamingResponse(
        encoded(page.rows, fmt), media_type=FORMATS[fmt].media_type, headers=headers
    )


def encoded(table: pa.Table, fmt: str) -> Iterator[bytes]:
    """``table`` in format ``fmt``, ``CHUNK_ROWS`` rows at a time: the bytes ``encoder(fmt)``
    makes of the whole table."""
    starts = range(0, table.num_rows, CHUNK_ROWS)
    chunks = (table.slice(i, CHUNK_ROWS) for i in starts)
    if fmt == "json":
        if not table.num_rows:
            yield b"[]"
        for i, chunk in zip(starts, chunks, strict=True):
            text = json_array(row_texts(chunk))[1:-1]
            yield (("[" if i == 0 else ",") + text + ("]" if i == starts[-1] else "")).encode()
    elif fmt == "csv":
        csv = encoder("csv")
        if not table.num_rows:
            yield csv(table)
        for i, chunk in zip(starts, chunks, strict=True):
            body = csv(chunk)
            yield body if i == 0 else body.split(b"\n", 1)[1]  # (the header once)
    else:
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            for chunk in chunks:
                writer.write_table(chunk)
                yield _taken(sink)
        yield _taken(sink)  # (the end-of-stream marker)


def _taken(sink: io.BytesIO) -> bytes:
    data = sink.getvalue()
    sink.seek(0)
    sink.truncate()
    return data


def json_response(doc: Any) -> Response:
    """``doc`` as JSON, what JSON cannot hold (times) as its text."""
    return JSONResponse(json.loads(json.dumps(doc, default=str)))
