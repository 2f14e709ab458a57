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

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.batch import RawBatch
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.jsonl_files import (
    ARROW_ERRORS,
    CAP_OPTION,
    RecordError,
    arrow_read,
    arrow_safe,
    as_record,
    kind,
    parse,
    records_table,
    refused,
    utf8,
)
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
    if fmt == "arrow":
        table, which, bad = _decode_arrow(bodies)
    else:
        table, which, bad = _decode_json(bodies, spec.max_record_size)
    if table.num_rows:
        times = np.fromiter((m.time_ns for m in messages), np.int64, len(messages))
        table = table.append_column(
            RECEIVED, pa.array(times[which], pa.int64()).cast(pa.timestamp("ns", tz="UTC"))
        )
        table = _topic_fields(table, [m.topic for m in messages], which, spec)
        table = _header_fields(table, messages, which, spec)
    lines = [
        (-1, f"{f'element {k} of ' if k else ''}message on {messages[i].topic}: {why}", raw)
        for i, k, why, raw in bad
    ]
    return RawBatch(origin, offset, table, malformed(origin, lines))


Refused = tuple[int, int, str, str]
"""A dead letter of a batch: (message, its element (1-based; 0: the whole message), why, raw)."""


def _decode_json(bodies: list[bytes], cap: int) -> tuple[pa.Table, np.ndarray, list[Refused]]:
    """(records, the message of each record, what was refused)."""
    fast = _decode_json_columnar(bodies, cap)
    if fast is not None:
        return fast[0], fast[1], []
    records: list[dict[str, str | None]] = []
    which: list[int] = []
    bad: list[Refused] = []
    for i, body in enumerate(bodies):
        got, refused_ = _records_of(body, cap)
        records += got
        which += [i] * len(got)
        bad += [(i, *r) for r in refused_]
    return records_table(records), np.asarray(which, np.int64), bad


def _records_of(
    body: bytes, cap: int
) -> tuple[list[dict[str, str | None]], list[tuple[int, str, str]]]:
    """One message's records (every value as text, as JSON-lines fallbacks read it), and its
    refused parts as (element, why, raw)."""
    if len(body) > cap:
        why = f"{len(body):,} bytes, longer than the record cap of {cap:,} {CAP_OPTION}"
        return [], [(0, *refused(body, why))]
    try:
        doc = parse(body)
    except RecordError as exc:
        # An array too deep as a whole may be one element too deep among good ones.
        spans = array_elements(body) if exc.deep else None
        if spans is None:
            return [], [(0, *refused(body, str(exc)))]
        return _elements(body, spans)
    if isinstance(doc, list):
        return _elements(body, doc)
    try:
        if isinstance(doc, dict):
            return [as_record(doc)], []
        if isinstance(doc, (int, float)) and not isinstance(doc, bool):
            return [{"value": json.dumps(doc)}], []  # a bare number is the value
        raise RecordError(
            f"a message holds a reading object, an array of them, or a number, not {kind(doc)}"
        )
    except RecordError as exc:
        return [], [(0, *refused(body, str(exc)))]


def _elements(
    body: bytes, items: list[Any] | list[bytes]
) -> tuple[list[dict[str, str | None]], list[tuple[int, str, str]]]:
    """The records of an array message, element by element (parsed, or the texts
    ``array_elements`` found): a bad element is a dead letter of its own."""
    records: list[dict[str, str | None]] = []
    bad: list[tuple[int, str, str]] = []
    texts: list[bytes] | None = None
    for k, item in enumerate(items, 1):
        try:
            element = parse(item) if isinstance(item, bytes) else item
            if not isinstance(element, dict):
                raise RecordError(f"a reading is a JSON object, not {kind(element)}")
            records.append(as_record(element))
        except RecordError as exc:
            if texts is None:  # (the element's own text, for its dead letter)
                texts = [i for i in items if isinstance(i, bytes)] or array_elements(body) or []
            text = texts[k - 1] if len(texts) == len(items) else b""
            bad.append((k, *refused(text, str(exc))))
    return records, bad


_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(")?|[\[\]{},]', re.DOTALL)
_PAIRS = {b"]": b"[", b"}": b"{"}


def array_elements(doc: bytes) -> list[bytes] | None:
    """The texts of a JSON array's elements, found without parsing them (one nested too deeply
    for ``json`` is still one element), or None when ``doc`` is no array whose brackets and
    strings close. Whatever else an element holds, its own parse finds."""
    opening = re.match(rb"\s*\[", doc)
    if opening is None:
        return None
    out: list[bytes] = []
    begin = opening.end()
    stack: list[bytes] = []
    for m in _TOKEN.finditer(doc, begin):
        token = m.group()[:1]
        if token == b'"':
            if m.group(1) is None:
                return None  # a string that does not close
        elif token in b"[{":
            stack.append(token)
        elif token in b"]}":
            if stack:
                if stack.pop() != _PAIRS[token]:
                    return None
                continue
            if token != b"]" or doc[m.end() :].strip():
                return None
            out.append(doc[begin : m.start()].strip())
            return [] if out == [b""] else out
        elif not stack:  # a comma between elements
            out.append(doc[begin : m.start()].strip())
            begin = m.end()
    return None


def _decode_json_columnar(bodies: list[bytes], cap: int) -> tuple[pa.Table, np.ndarray] | None:
    """The usual batches in one Arrow call: every body one object (one record each), or every
    body an array of objects (each wrapped as ``{"r": [...]}`` and flattened). None when the
    batch is anything else, holds a body Arrow must not see (longer than ``cap``, not UTF-8,
    too deep: ``jsonl_files.arrow_safe``) or Arrow cannot read it as one table (mixed types).
    The checks are passes over the batch in C, a Python step per body at most."""
    lengths = np.fromiter(map(len, bodies), np.int64, len(bodies))
    if not len(bodies) or lengths.min() == 0 or lengths.max() > cap:
        return None
    first = {b[:1] for b in bodies}
    if not first <= {b"{", b"["}:  # (leading blanks, say)
        first = {b.lstrip()[:1] for b in bodies}
    if first == {b"{"}:
        block = b"\n".join(bodies)
    elif first == {b"["}:
        block = b"\n".join(b'{"r":' + b + b"}" for b in bodies)
    else:
        return None
    if not (utf8(block) and arrow_safe(bodies, lengths)):
        return None
    # A body holding a line end is two lines or more to Arrow: two rows, or an error.
    table = arrow_read(block, int(lengths.max()) + 6)
    if table is None:
        return None
    if first == {b"{"}:
        return (table, np.arange(len(bodies))) if table.num_rows == len(bodies) else None
    if table.column_names != ["r"]:
        return None
    lists = table.column("r").combine_chunks()
    if len(lists) != len(bodies) or not pa.types.is_struct(lists.type.value_type):
        return None
    records = pc.list_flatten(lists)
    if records.null_count:  # a null element: no reading (Arrow would make a row of nulls)
        return None
    which = pc.list_parent_indices(lists).to_numpy()
    return pa.Table.from_struct_array(records), which.astype(np.int64)


def _decode_arrow(bodies: list[bytes]) -> tuple[pa.Table, np.ndarray, list[Refused]]:
    tables: list[pa.Table] = []
    which: list[np.ndarray] = []
    bad: list[Refused] = []
    for i, body in enumerate(bodies):
        try:
            t = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
            t.validate(full=True)  # (a stream's offsets may point anywhere: checked, not trusted)
            if len(set(t.column_names)) != t.num_columns:
                raise pa.ArrowInvalid("a column name given twice")
        # (pa.ArrowIOError is an OSError; a column name not UTF-8, a UnicodeDecodeError)
        except (*ARROW_ERRORS, OSError, UnicodeDecodeError) as exc:
            bad.append((i, 0, f"not an Arrow IPC stream: {exc}"[:300], body[:256].hex()))
            continue
        tables.append(t)
        which.append(np.full(t.num_rows, i, np.int64))
    if not tables:
        return pa.table({}), np.zeros(0, np.int64), bad
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except ARROW_ERRORS:
        # Columns whose types no promotion unites (a string and a struct): the types of the
        # first message to bring a column win, a message that conflicts is a dead letter.
        schema, kept = tables[0].schema, [0]
        for n in range(1, len(tables)):
            try:
                schema = pa.unify_schemas([schema, tables[n].schema], promote_options="permissive")
            except ARROW_ERRORS as exc:
                i = int(which[n][0]) if len(which[n]) else -1
                why = f"its columns do not fit the batch's: {exc}"[:300]
                bad.append((i, 0, why, bodies[i][:256].hex()))
                continue
            kept.append(n)
        table = pa.concat_tables([tables[n] for n in kept], promote_options="permissive")
        which = [which[n] for n in kept]
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
    text = pa.types.is_string(own.type) or pa.types.is_large_string(own.type)
    if not (text or pa.types.is_string_view(own.type) or pa.types.is_integer(own.type)):
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
