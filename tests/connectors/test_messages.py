"""Broker messages as raw batches (``connectors.formats.messages``): every body shape, columnar
where the batch allows, and the broker's time for records without one (through ``normalize``).

And poison (issue 30): a record that is no record — nested too deeply, not UTF-8, over the
record cap, a bad element of an array, a key twice — is a ``malformed`` dead letter beside the
good records around it, in messages and in JSON-lines files (``connectors.formats.jsonl_files``,
whose checks the decoder shares); nothing else is raised, and Arrow's reader never sees text
deep enough to overflow its stack."""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obsflow.connectors.formats import jsonl_files
from obsflow.connectors.formats.jsonl_files import RAW_BYTES, nesting, raw_bytes
from obsflow.connectors.formats.messages import Message, array_elements, decode
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
    messages = [Message(ipc(table), "obs.x", T0), Message(b"nope", "obs.x", T0)]
    batch = decode(messages, "arrow", InputSpec(), origin="nats://x", offset=0)
    assert batch.table.select(["source", "time", "value"]).equals(table)
    assert batch.rejects.column("reason").to_pylist() == ["malformed"]
    assert "not an Arrow IPC stream" in batch.rejects.column("message")[0].as_py()


def ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


# -- poison ------------------------------------------------------------------------------------


def good(i: int) -> dict[str, Any]:
    return {"source": f"g{i}", "time": T0 + i, "value": i + 0.25}


def nested(levels: int, inner: bytes = b"1") -> bytes:
    return b"[" * levels + inner + b"]" * levels


HIDDEN = b"".join(b'["]",' for _ in range(100_000)) + b"[]" + b"]" * 100_000
"""100,000 levels whose every level holds a string "]": counted without regard to strings,
they would look one level deep."""
POISON: dict[str, tuple[bytes, str]] = {
    # name: (body, what its dead letter's message says)
    "deep": (b'{"source":"d","value":' + nested(3_000) + b"}", "nested too deeply"),
    "deep_for_arrow": (b'{"source":"d","value":' + nested(100_000) + b"}", "nested too deeply"),
    "deep_objects": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
    "hidden_depth": (b'{"source":"d","value":' + HIDDEN + b"}", "nested too deeply"),
    "not_utf8": (b'{"source":"s\xff\xfe","time":1,"value":2}', "not UTF-8"),
    "huge": (b'{"source":"h","value":"' + b"x" * (40 << 20) + b'"}', "longer than the record cap"),
    "key_twice": (b'{"source":"k","value":1,"value":2}', "key 'value' given twice"),
    "lone_surrogate": (b'{"source":"\\ud800","value":1}', "lone surrogate"),
    "broken": (b'{"source":"b","value":', "not JSON"),
}


@pytest.mark.parametrize("name", list(POISON))
def test_a_poison_message_among_good_ones_is_one_malformed_dead_letter(name: str) -> None:
    body, why = POISON[name]
    goods = [msg(good(i)) for i in range(19)]
    batch = decode(
        [*goods[:9], msg(body), *goods[9:]], "json", InputSpec(), origin="nats://x", offset=0
    )
    out = normalize(batch.table, InputSpec(), origin="nats://x", offset=0)
    got = out.readings.select(["source", "value"]).to_pylist()
    assert got == [{"source": f"g{i}", "value": i + 0.25} for i in range(19)]
    assert out.rejects.num_rows == 0
    dead = batch.rejects.to_pylist()
    assert [d["reason"] for d in dead] == ["malformed"]
    assert dead[0]["message"].startswith("message on obs.lab.probe1: ")
    assert why in dead[0]["message"]
    if name == "not_utf8":
        assert raw_bytes(dead[0]["raw"]) == body  # escaped, as the message says
    else:
        assert dead[0]["raw"] == body[:RAW_BYTES].decode()  # the text, cut at 4 KiB


@pytest.mark.parametrize("name", list(POISON))
def test_a_poison_line_among_good_ones_is_one_malformed_line(name: str) -> None:
    body, why = POISON[name]
    lines = [json.dumps(good(i)).encode() for i in range(19)]
    data = b"\n".join([*lines[:9], body, *lines[9:]]) + b"\n"
    tables, bad = read_jsonl(data)
    got = normalize(pa.concat_tables(tables), InputSpec(), origin="f", offset=0).readings
    assert got.select(["source", "value"]).to_pylist() == [
        {"source": f"g{i}", "value": i + 0.25} for i in range(19)
    ]
    assert [(line, why in message) for line, message, _ in bad] == [(10, True)]


def read_jsonl(
    data: bytes, max_bytes: int = 1 << 20, batch_rows: int = 1000
) -> tuple[list[pa.Table], list[tuple[int, str, str]]]:
    tables, bad = [], []
    for table, refused in jsonl_files.read(io.BytesIO(data), batch_rows, max_bytes=max_bytes):
        tables.append(table)
        bad += refused
    return tables, bad


def test_an_array_with_bad_elements_gives_its_good_readings_and_a_dead_letter_per_bad_one() -> None:
    elements = [good(1), 7, "x", "DEEP", "TWICE", good(2)]
    body = json.dumps(elements).encode()
    body = body.replace(b'"TWICE"', POISON["key_twice"][0])
    body = body.replace(b'"DEEP"', nested(3_000))  # too deep for json: the array as a whole too
    got, _ = readings([msg(good(0)), msg(body, topic="obs.a"), msg(good(3))])
    assert got == [(f"g{i}", T0 + i, i + 0.25) for i in range(4)]
    batch = decode([msg(body, topic="obs.a")], "json", InputSpec(), origin="x", offset=0)
    dead = batch.rejects.to_pylist()
    assert [d["message"][:39] for d in dead] == [
        "element 2 of message on obs.a: a readin",
        "element 3 of message on obs.a: a readin",
        "element 4 of message on obs.a: nested t",
        "element 5 of message on obs.a: key 'val",
    ]
    assert [d["raw"][:8] for d in dead] == ["7", '"x"', "[[[[[[[[", '{"source']
    assert "not a number" in dead[0]["message"]
    assert "not a string" in dead[1]["message"]
    # A null element, in a batch of arrays Arrow's reader would take whole: the same.
    bodies = [msg([good(1), None]), msg([good(2)])]
    batch = decode(bodies, "json", InputSpec(), origin="x", offset=0)
    assert batch.table.num_rows == 2
    assert batch.rejects.column("message").to_pylist() == [
        "element 2 of message on obs.lab.probe1: a reading is a JSON object, not null"
    ]
    # An array whose elements parse, one of them not an object: the same, without re-parsing.
    batch = decode(
        [msg([good(1), 7, good(2)], topic="obs.a")], "json", InputSpec(), origin="x", offset=0
    )
    assert batch.table.num_rows == 2
    assert batch.rejects.column("message").to_pylist() == [
        "element 2 of message on obs.a: a reading is a JSON object, not a number"
    ]
    assert batch.rejects.column("raw").to_pylist() == ["7"]


def test_the_record_cap_is_the_specs_and_refuses_only_what_is_longer() -> None:
    spec = InputSpec.parse_map(None, max_record_size="2KiB")
    pad = '{"source":"p","value":1,"note":"'

    def sized(n: int) -> bytes:
        return (pad + "x" * (n - len(pad) - 2) + '"}').encode()

    batch = decode([msg(sized(2048)), msg(sized(2049))], "json", spec, origin="x", offset=0)
    assert batch.table.num_rows == 1
    assert batch.rejects.column("message").to_pylist() == [
        "message on obs.lab.probe1: 2,049 bytes, longer than the record cap of 2,048 "
        "(--max-record-size)"
    ]
    # A JSON line the same (its line end not counted), whatever ends it or follows it.
    data = sized(2048) + b"\n" + sized(2049) + b"\r\n" + sized(2048)
    tables, bad = read_jsonl(data, max_bytes=2048)
    assert sum(t.num_rows for t in tables) == 2
    assert [(line, message) for line, message, _ in bad] == [
        (2, "longer than the record cap of 2,048 bytes (--max-record-size)")
    ]


class Reads(io.BytesIO):
    """A file that remembers the most bytes one read gave."""

    most = 0

    def readline(self, size: int | None = -1) -> bytes:
        line = super().readline(size)
        self.most = max(self.most, len(line))
        return line

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.most = max(self.most, len(data))
        return data


def test_an_over_long_line_is_read_no_further_than_the_cap() -> None:
    body = POISON["huge"][0]
    f = Reads(json.dumps(good(0)).encode() + b"\n" + body + b"\n" + json.dumps(good(1)).encode())
    got = list(jsonl_files.read(f, 10, max_bytes=1 << 20))
    assert sum(t.num_rows for t, _ in got) == 2
    assert [(line, raw) for _, bad in got for line, _, raw in bad] == [(2, body[:4096].decode())]
    assert f.most <= (1 << 20) + 1  # a 40 MB line: never more than the cap at once


def test_a_refused_records_raw_keeps_its_bytes_escaped_and_reversibly() -> None:
    body = b'{"source":"s\\\\x41\xff","note":"\\u00e9\xc3\xa9","value":1}'  # a backslash too
    batch = decode([msg(body)], "json", InputSpec(), origin="x", offset=0)
    (dead,) = batch.rejects.to_pylist()
    assert "raw has its bytes escaped" in dead["message"]
    assert raw_bytes(dead["raw"]) == body
    long = b'{"note":"' + "é".encode() * 5000 + b'\xff"}'  # not UTF-8 past the first 4 KiB
    (dead,) = decode([msg(long)], "json", InputSpec(), origin="x", offset=0).rejects.to_pylist()
    assert "escaped" not in dead["message"]
    assert dead["raw"] == long[:4095].decode()  # cut at the last whole character


@given(st.binary(max_size=300))
def test_raw_bytes_reverses_any_refused_bodys_escaping(body: bytes) -> None:
    why, raw = jsonl_files.refused(body, "why")
    assert (raw_bytes(raw) if "escaped" in why else raw.encode()) == body


def test_an_integer_too_long_for_python_is_the_same_reading_in_either_path() -> None:
    huge = b'{"source":"i","time":1,"value":' + b"9" * 5_000 + b"}"
    alone = readings([msg(huge)])  # Arrow's reader: a double, inf
    poisoned = readings([msg(huge), msg(b"{")])  # Python's json, message by message
    assert alone == ([], ["bad_value"])
    assert poisoned == ([], ["malformed", "bad_value"])


def test_arrow_ipc_messages_whose_columns_conflict_are_dead_letters_not_an_error() -> None:
    first = pa.table({"source": ["a"], "time": [T0], "value": [1.0]})
    other = pa.table({"source": ["b"], "time": [T0], "value": pa.array([{"x": 1}])})
    messages = [Message(ipc(first), "obs.x", T0), Message(ipc(other), "obs.y", T0)]
    batch = decode(messages, "arrow", InputSpec(), origin="x", offset=0)
    assert batch.table.column("source").to_pylist() == ["a"]
    assert (
        batch.rejects.column("message")[0]
        .as_py()
        .startswith("message on obs.y: its columns do not fit the batch's")
    )


def test_a_good_batch_takes_the_columnar_path_and_a_poisoned_one_gives_the_same_readings() -> None:
    from obsflow.connectors.formats.messages import _decode_json_columnar

    bodies = [json.dumps(good(i)).encode() for i in range(50)]
    assert _decode_json_columnar(bodies, 1 << 20) is not None
    clean, _ = readings([msg(b) for b in bodies])
    for name in ("deep_for_arrow", "not_utf8", "key_twice"):
        poisoned = [*bodies[:25], POISON[name][0], *bodies[25:]]
        assert _decode_json_columnar(poisoned, 1 << 20) is None
        assert readings([msg(b) for b in poisoned]) == (clean, ["malformed"])


# -- properties --------------------------------------------------------------------------------

GOOD = st.integers(0, 10**6).map(good)
BAD_ELEMENT = st.sampled_from([7, "x", None, True, [1, 2], []])
SMALL_POISON = [POISON[n][0] for n in ("deep", "not_utf8", "key_twice", "lone_surrogate")]
Body = tuple[bytes, list[dict[str, Any]], int]  # (body, its good readings, its dead letters)


@st.composite
def bodies(draw: st.DrawFn) -> Body:
    kind = draw(st.sampled_from(["good", "poison", "array"]))
    if kind == "good":
        r = draw(GOOD)
        return json.dumps(r).encode(), [r], 0
    if kind == "poison":
        return draw(st.sampled_from(SMALL_POISON)), [], 1
    elements = draw(st.lists(st.one_of(GOOD, BAD_ELEMENT), max_size=6))
    return (
        json.dumps(elements).encode(),
        [e for e in elements if isinstance(e, dict)],
        sum(not isinstance(e, dict) for e in elements),
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(bodies(), min_size=1, max_size=12))
def test_any_mix_of_good_and_bad_bodies_adds_up_and_keeps_every_good_value(
    mix: list[Body],
) -> None:
    batch = decode([msg(b) for b, _, _ in mix], "json", InputSpec(), origin="x", offset=0)
    expected = [r for _, rs, _ in mix for r in rs]
    assert batch.table.num_rows == len(expected)
    assert batch.rejects.num_rows == sum(n for _, _, n in mix)
    assert set(batch.rejects.column("reason").to_pylist()) <= {"malformed"}
    out = normalize(batch.table, InputSpec(), origin="x", offset=0)
    assert out.rejects.num_rows == 0
    got = out.readings.select(["source", "time", "value"]).to_pylist()
    assert [(g["source"], g["time"].value, g["value"]) for g in got] == [
        (r["source"], r["time"], r["value"]) for r in expected
    ]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.lists(JSON, max_size=6))
def test_array_elements_finds_the_elements_json_parses(elements: list[Any]) -> None:
    spans = array_elements(json.dumps(elements).encode())
    assert spans is not None
    assert [json.loads(s) for s in spans] == elements


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


@given(st.lists(JSON, min_size=1, max_size=4))
def test_nesting_is_the_depth_a_parser_reaches(values: list[Any]) -> None:
    texts = [json.dumps(v, ensure_ascii=False).encode() for v in values]
    assert nesting(b"\n".join(texts)) == max(map(depth, values))


def test_nesting_sees_through_strings_and_refuses_what_does_not_close() -> None:
    assert nesting(HIDDEN) == 100_001
    assert nesting(b'"[[[[" \n [1]') == 1
    assert nesting(b'["\\"[[[["]') == 1  # an escaped quote ends no string
    assert nesting(b'"open\n[[[[') > 1000  # a string that does not close: no guess
    assert nesting(b"]]]]]]\n[[[") == 3  # closers too many lower nothing after them


def test_an_object_with_no_fields_is_a_record_missing_them_in_either_path() -> None:
    assert readings([msg(b"{}")]) == ([], ["missing_field"])  # Arrow's reader
    assert readings([msg(b"{}"), msg(b"x")]) == ([], ["malformed", "missing_field"])  # Python
    (table,), bad = read_jsonl(b"{}\n{}\n")
    assert (table.num_rows, table.num_columns, bad) == (2, 0, [])
    out = normalize(table, InputSpec(), origin="f", offset=0)
    assert out.rejects.column("reason").to_pylist() == ["missing_field"] * 2
    assert out.rejects.column("raw").to_pylist() == ["{}"] * 2


def test_a_table_arrow_builds_invalid_is_read_in_python_instead() -> None:
    # Arrow's reader types "m" as a list of nulls, then of booleans, in a struct first seen
    # empty: an invalid array, which would fail or mislead every later step.
    lines = [
        b'{"source":"a","time":1,"value":1,"c":{}}',
        b'{"source":"b","time":2,"value":2,"c":{"m":[null,true]}}',
    ]
    tables, bad = read_jsonl(b"\n".join(lines))
    (table,) = tables
    table.validate(full=True)
    assert (table.column("c").to_pylist(), bad) == (["{}", '{"m": [null, true]}'], [])
    assert readings([msg(line) for line in lines])[0] == [("a", 10**9, 1.0), ("b", 2 * 10**9, 2.0)]


@given(st.lists(st.binary(max_size=60), min_size=1, max_size=6), st.sampled_from(["json", "arrow"]))
def test_any_bytes_at_all_are_records_or_malformed_dead_letters(
    bodies: list[bytes], fmt: str
) -> None:
    batch = decode([msg(b) for b in bodies], fmt, InputSpec(), origin="x", offset=0)
    assert set(batch.rejects.column("reason").to_pylist()) <= {"malformed"}
    assert batch.table.num_rows + batch.rejects.num_rows >= sum(
        not b.strip().startswith(b"[") for b in bodies
    )


def test_a_corrupt_arrow_ipc_stream_is_a_dead_letter() -> None:
    body = bytearray(ipc(pa.table({"source": ["a"], "value": [1.0]})))
    body[body.index(b"value") : body.index(b"value") + 5] = b"\xff\xfeval"  # a name not UTF-8
    batch = decode([Message(bytes(body), "obs.x", T0)], "arrow", InputSpec(), origin="x", offset=0)
    assert batch.table.num_rows == 0
    assert (
        batch.rejects.column("message")[0]
        .as_py()
        .startswith("message on obs.x: not an Arrow IPC stream")
    )
