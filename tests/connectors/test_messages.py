"""Broker messages as raw batches (``connectors.formats.messages``): every body shape, columnar
where the batch allows, and the broker's time for records without one (through ``normalize``)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from obsflow.connectors.formats.messages import Message, decode
from obsflow.connectors.formats.normalize import normalize
from obsflow.connectors.formats.schema import InputSpec

T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


def msg(body: object, topic: str = "obs.lab.probe1", t: int = T0) -> Message:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Message(raw, topic, t)


def readings(messages: list[Message], spec: InputSpec | None = None) -> tuple[list[tuple], list]:
    spec = spec or InputSpec()
    batch = decode(messages, "json", spec, origin="nats://x", offset=0)
    out = normalize(batch.table, spec, origin="nats://x", offset=0)
    got = [
        (r["source"], r["time"].value, r["value"])
        for r in out.readings.select(["source", "time", "value"]).to_pylist()
    ]
    rejects = batch.rejects.column("reason").to_pylist() + out.rejects.column("reason").to_pylist()
    return got, rejects


@pytest.mark.parametrize("shape", ["objects", "arrays"])
def test_the_usual_batches_are_read_in_one_arrow_call_with_the_same_readings(shape: str) -> None:
    rows = [{"source": f"s{i % 3}", "time": T0 + i, "value": i / 2} for i in range(12)]
    if shape == "objects":
        messages = [msg(r) for r in rows]
    else:
        messages = [msg(rows[i : i + 4]) for i in range(0, 12, 4)]
    got, rejects = readings(messages)
    assert got == [(r["source"], r["time"], r["value"]) for r in rows]
    assert rejects == []


def test_mixed_bodies_are_read_one_by_one_and_nothing_is_lost() -> None:
    messages = [
        msg({"source": "a", "time": T0, "value": 1}),
        msg([{"source": "a", "time": T0 + 1, "value": 2}, {"source": "b", "value": 3}], t=T0 + 9),
        msg(b"21.5", topic="obs.lab.probe7"),
        msg(b"{broken"),
        msg(b'"just text"'),
        msg([1, 2]),
    ]
    spec = InputSpec(mapping={"source": "topic:2"})  # the source from the topic's 3rd level
    got, rejects = readings(messages, spec)
    # With source from the topic, every record's source is its topic's level 2.
    assert got == [
        ("probe1", T0, 1.0),
        ("probe1", T0 + 1, 2.0),
        ("probe1", T0 + 9, 3.0),  # no time: the message's broker time
        ("probe7", T0, 21.5),
    ]
    assert sorted(rejects) == ["malformed"] * 4  # [1, 2]: each element a dead letter of its own


def test_arrow_ipc_messages_keep_their_types() -> None:
    table = pa.table(
        {
            "source": ["a", "b"],
            "time": pa.array([T0, T0 + 5], pa.timestamp("ns", tz="UTC")),
            "value": [1.5, 2.5],
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    messages = [Message(sink.getvalue().to_pybytes(), "obs.x", T0), Message(b"nope", "obs.x", T0)]
    batch = decode(messages, "arrow", InputSpec(), origin="nats://x", offset=0)
    assert batch.table.select(["source", "time", "value"]).equals(table)
    assert batch.rejects.column("reason").to_pylist() == ["malformed"]
    assert "not an Arrow IPC stream" in batch.rejects.column("message")[0].as_py()
