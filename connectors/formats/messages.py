"""Broker messages as raw batches: the one place where message bodies become tables.

A live source (``connectors.sources.brokers``) hands over ``Message`` objects — body, topic,
broker time. ``decode`` turns a list of them into one ``RawBatch``, column by column:

- ``json``: each body is one reading object, an array of them, or a bare number (the value,
  as MQTT sensors often publish). Bodies that are all objects go through Arrow's JSON reader
  in one call; only a batch holding something else is parsed message by message.
- ``arrow``: each body is an Arrow IPC stream (for high-rate producers).

Every record also gets ``_received`` (``schema.RECEIVED``): its message's broker timestamp,
the reading's time when the record has none; and, when its body has no trace id field, the
message's ``trace_id`` header (NATS header, MQTT v5 user property, Kafka header; the name
``--map trace_id=...`` gives), which every record of the message shares. ``--map
source=topic:1`` reads a field from a topic level (0-based, levels split at ``/`` or ``.``).
A body that is not what the format says becomes a ``malformed`` dead letter with its text,
never an error.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from obsflow.connectors.batch import RawBatch
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.jsonl_files import MAX_LINE_BYTES
from obsflow.connectors.formats.schema import RECEIVED, TRACE, InputSpec
from obsflow.connectors.sources.files import malformed

FORMATS = ("json", "arrow", "bluesky")  # bluesky: connectors.sources.bluesky.io, a stateful decoder
TOPIC_FIELD = re.compile(r"^topic:(\d{1,3})$")


@dataclass(frozen=True)
class Message:
    """One broker message: its body, the topic (subject) it came on, the broker's timestamp
    (or the time it was received) in ns since the epoch, what the client needs to ack it, and
    where it stands on the broker: (source partition key, position), when the broker says."""

    body: bytes
    topic: str
    time_ns: int
    token: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    position: tuple[str, int] | None = None


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: messages are one of {', '.join(FORMATS)}")
    return fmt


def decode(
    messages: Sequence[Message], fmt: str, spec: InputSpec, *, origin: str, offset: int
) -> RawBatch:
    """The records of ``messages`` as one raw batch (see the module docstring)."""
    bodies = [m.body for m in messages]
    table, which, bad = _decode_arrow(bodies) if fmt == "arrow" else _decode_json(bodies)
    if table.num_rows:
        times = np.fromiter((m.time_ns for m in messages), np.int64, len(messages))
        table = table.append_column(
            RECEIVED, pa.array(times[which], pa.int64()).cast(pa.timestamp("ns", tz="UTC"))
        )
        table = _topic_fields(table, [m.topic for m in messages], which, spec)
        table = _header_fields(table, messages, which, spec)
    lines = [(-1, f"message on {messages[i].topic}: {why}", text) for i, why, text in bad]
    return RawBatch(origin, offset, table, malformed(origin, lines))


def _decode_json(bodies: list[bytes]) -> tuple[pa.Table, np.ndarray, list[tuple[int, str, str]]]:
    """(records, the message of each record, [(message, why, text)] of bad bodies)."""
    fast = _decode_json_columnar(bodies)
    if fast is not None:
        return fast[0], fast[1], []
    records: list[dict[str, Any]] = []
    which: list[int] = []
    bad: list[tuple[int, str, str]] = []
    for i, body in enumerate(bodies):
        text = body.decode("utf-8", errors="replace")
        try:
            if len(body) > MAX_LINE_BYTES:
                raise ValueError(f"longer than {MAX_LINE_BYTES} bytes")
            doc = json.loads(text)
        except ValueError as exc:
            bad.append((i, f"not JSON: {exc}"[:300], text[:4096]))
            continue
        if isinstance(doc, dict):
            docs = [doc]
        elif isinstance(doc, list) and all(isinstance(d, dict) for d in doc):
            docs = doc
        elif isinstance(doc, (int, float)) and not isinstance(doc, bool):
            docs = [{"value": doc}]  # a bare number is the value
        else:
            why = "a message holds a reading object, an array of them, or a number"
            bad.append((i, why, text[:4096]))
            continue
        for d in docs:  # every value as text, as JSON-lines fallbacks read it
            records.append(
                {k: v if v is None or isinstance(v, str) else json.dumps(v) for k, v in d.items()}
            )
            which.append(i)
    names = list(dict.fromkeys(k for r in records for k in r))
    table = pa.table({n: pa.array([r.get(n) for r in records], pa.string()) for n in names})
    return table, np.asarray(which, np.int64), bad


def _decode_json_columnar(bodies: list[bytes]) -> tuple[pa.Table, np.ndarray] | None:
    """The usual batches in one Arrow call: every body one object (one record each), or every
    body an array of objects (each wrapped as ``{"r": [...]}`` and flattened). None when the
    batch is anything else, or Arrow cannot read it as one table (mixed types)."""
    if not all(b"\n" not in b and len(b) <= MAX_LINE_BYTES for b in bodies):
        return None
    first = {b.lstrip()[:1] for b in bodies}
    try:
        if first == {b"{"}:
            table = pajson.read_json(io.BytesIO(b"\n".join(bodies)))
            if table.num_rows != len(bodies):
                return None
            return table, np.arange(len(bodies))
        if first == {b"["}:
            wrapped = b"\n".join(b'{"r":' + b + b"}" for b in bodies)
            lists = pajson.read_json(io.BytesIO(wrapped)).column("r").combine_chunks()
            if len(lists) != len(bodies) or not pa.types.is_struct(lists.type.value_type):
                return None
            records = pc.list_flatten(lists)
            which = pc.list_parent_indices(lists).to_numpy()
            table = pa.Table.from_struct_array(records)
            return table, which.astype(np.int64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError):
        return None
    return None


def _decode_arrow(bodies: list[bytes]) -> tuple[pa.Table, np.ndarray, list[tuple[int, str, str]]]:
    tables, which, bad = [], [], []
    for i, body in enumerate(bodies):
        try:
            t = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            bad.append((i, f"not an Arrow IPC stream: {exc}"[:300], body[:256].hex()))
            continue
        tables.append(t)
        which.append(np.full(t.num_rows, i, np.int64))
    if not tables:
        return pa.table({}), np.zeros(0, np.int64), bad
    table = pa.concat_tables(tables, promote_options="permissive")
    return table, np.concatenate(which), bad


def _topic_fields(
    table: pa.Table, topics: list[str], which: np.ndarray, spec: InputSpec
) -> pa.Table:
    """Add a ``topic:N`` column for each ``--map`` field read from a topic level."""
    for column in sorted(set(spec.mapping.values())):
        m = TOPIC_FIELD.match(column)
        if not m or column in table.column_names:
            continue
        level = int(m.group(1))
        per_topic = {t: _level(t, level) for t in set(topics)}
        values = pa.array([per_topic[t] for t in topics], pa.string())  # one per message
        table = table.append_column(column, pc.take(values, pa.array(which)))
    return table


def _header_fields(
    table: pa.Table, messages: Sequence[Message], which: np.ndarray, spec: InputSpec
) -> pa.Table:
    """The trace id header of each record's message, as the column the spec reads it from;
    a record whose body has that field keeps its own."""
    name = spec.column(TRACE)
    if not any(m.headers for m in messages):
        return table
    values = [next((v for k, v in m.headers if k == name), None) for m in messages]
    if all(v is None for v in values):
        return table
    headed = pc.take(pa.array(values, pa.string()), pa.array(which))
    if name not in table.column_names:
        return table.append_column(name, headed)
    i = table.schema.get_field_index(name)
    own = table.column(i)
    if not (pa.types.is_string(own.type) or pa.types.is_integer(own.type)):
        return table  # (not text: normalize says so for each record)
    return table.set_column(i, name, pc.coalesce(own.cast(pa.string()), headed))


def text_headers(pairs: Any) -> tuple[tuple[str, str], ...]:
    """A client's message headers, ``(name, value)`` pairs of text (bytes decoded)."""
    out = []
    for name, value in pairs or ():
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        out.append((str(name), str(value)))
    return tuple(out)


def _level(topic: str, level: int) -> str | None:
    parts = re.split(r"[/.]", topic)
    return parts[level] if level < len(parts) else None
