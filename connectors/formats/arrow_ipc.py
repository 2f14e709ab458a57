"""Arrow IPC streams: a table as the bytes of one stream (HTTP responses, broker messages)."""

from __future__ import annotations

import pyarrow as pa


def encode(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())
