"""Decoding Bluesky document messages and files (``connectors.sources.bluesky.io``): msgpack as
bluesky-kafka publishes it (numpy arrays in msgpack-numpy's wire form, decoded without pickle),
JSON pairs and objects, and what is refused."""

from __future__ import annotations

import io

import msgpack
import numpy as np
import pytest

from obsflow.connectors.sources.bluesky.documents import Reject
from obsflow.connectors.sources.bluesky.io import MAX_DOCUMENT_BYTES, file_pairs, message_pair


def nd(array: np.ndarray, kind: bytes = b"") -> dict[bytes, object]:
    """An array as msgpack-numpy encodes it (its wire form, written out here)."""
    return {
        b"nd": True,
        b"type": array.dtype.str,
        b"kind": kind,
        b"shape": list(array.shape),
        b"data": array.tobytes(),
    }


def test_msgpack_numpy_arrays_become_lists_and_pickled_ones_are_refused() -> None:
    image = np.arange(12, dtype="<u2").reshape(3, 4)
    event = {"uid": "e1", "data": {"img": nd(image), "x": 1.5}, "seq_num": 1}
    name, doc = message_pair(msgpack.packb(["event", event]))
    assert name == "event"
    assert doc["data"] == {"img": image.tolist(), "x": 1.5}
    with pytest.raises(ValueError, match="pickled"):
        message_pair(msgpack.packb(["event", {"data": nd(image, kind=b"O")}]))
    bad = nd(image)
    bad[b"shape"] = [300, 400]  # more than the bytes hold
    with pytest.raises(ValueError, match="does not match"):
        message_pair(msgpack.packb(["event", {"data": bad}]))


def test_json_pairs_objects_and_what_is_no_pair() -> None:
    assert message_pair(b'["start", {"uid": "u"}]') == ("start", {"uid": "u"})
    assert message_pair(b'{"name": "stop", "doc": {"uid": "s"}}') == ("stop", {"uid": "s"})
    assert message_pair(b"[1, 2]") == ("", [1, 2])  # the stream rejects it: not_a_document
    with pytest.raises(ValueError, match="msgpack"):
        message_pair(b"\xc1 not msgpack")
    with pytest.raises(ValueError, match="bytes"):
        message_pair(b"[" + b" " * MAX_DOCUMENT_BYTES + b"]")


def test_a_file_goes_on_after_a_bad_line_and_a_msgpack_stream_stops_at_garbage() -> None:
    text = b'["start", {"uid": "u"}]\n{not json\n\n{"name": "stop", "doc": {"uid": "s"}}\n'
    got = list(file_pairs(io.BytesIO(text), "docs.jsonl"))
    assert got[0] == ("start", {"uid": "u"})
    assert isinstance(got[1], Reject)
    assert got[1].reason == "malformed"
    assert "line 2" in got[1].detail
    assert got[2] == ("stop", {"uid": "s"})
    packed = msgpack.packb(["start", {"uid": "u"}]) + b"\xc1\xc1"
    got = list(file_pairs(io.BytesIO(packed), "docs.msgpack"))
    assert got[0] == ("start", {"uid": "u"})
    assert isinstance(got[1], Reject)
    assert got[1].reason == "malformed"
