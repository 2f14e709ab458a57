"""Bluesky documents from a real RunEngine (ophyd's simulated devices) as readings."""

from __future__ import annotations

import json
import pickle
from typing import Any

import event_model
import numpy as np
import pandas as pd
import pytest
from bluesky import RunEngine
from bluesky.plans import count, scan
from ophyd.sim import det, det1, det2, motor

from obsflow.connectors.sources.bluesky.documents import DocumentStream
from tests.bluesky_runs import as_written
from tests.bluesky_runs import scalar_oracle as oracle

Docs = list[tuple[str, dict[str, Any]]]


@pytest.fixture(scope="module")
def runs() -> Docs:
    """Two runs of one RunEngine: a scan of a detector over a motor, a count of two."""
    docs: Docs = []
    engine = RunEngine({})
    engine.subscribe(lambda name, doc: docs.append((name, doc)))
    engine(scan([det], motor, -1, 1, 7))
    engine(count([det1, det2], num=5))
    return as_written(docs)


def frame(docs: Docs) -> pd.DataFrame:
    batch = DocumentStream().take(docs)
    assert not batch.rejects
    return batch.readings.to_pandas()


KEY = ["run_uid", "source", "channel", "time"]


def test_every_numeric_value_of_every_event_is_a_reading(runs: Docs) -> None:
    got = frame(runs)
    want = oracle(runs)
    assert len(want) == 7 * 3 + 5 * 2  # det, motor, motor_setpoint; det1, det2
    cols = ["source", "channel", "time", "value", "run_uid", "stream"]
    pd.testing.assert_frame_equal(
        got[cols].sort_values(KEY).reset_index(drop=True),
        want[cols].sort_values(KEY).reset_index(drop=True),
        check_dtype=False,
    )
    assert got["seq"].is_unique  # (source, seq) identifies a reading, across both runs
    assert (got["seq"] >= 0).all()
    assert set(got["source"]) == {"det", "motor", "det1", "det2"}


def test_the_same_documents_give_the_same_readings_and_other_runs_other_seqs(runs: Docs) -> None:
    first, again = frame(runs), frame(runs)
    pd.testing.assert_frame_equal(first, again)  # re-ingest: the same identities
    other: Docs = []
    engine = RunEngine({})
    engine.subscribe(lambda name, doc: other.append((name, doc)))
    engine(scan([det], motor, -1, 1, 7))  # the same plan again: another run
    assert not set(frame(as_written(other))["seq"]) & set(first["seq"])


def test_event_pages_give_what_their_events_give(runs: Docs) -> None:
    """Events packed into pages (as bluesky-kafka and databroker send them)."""
    paged: Docs = []
    pending: list[dict[str, Any]] = []
    for name, doc in [*runs, ("end", {})]:
        if name == "event" and (not pending or pending[0]["descriptor"] == doc["descriptor"]):
            pending.append(doc)
            continue
        if pending:
            page = event_model.pack_event_page(*pending)
            paged.append(("event_page", json.loads(json.dumps(page))))
            pending = [doc] if name == "event" else []
        if name not in ("event", "end"):
            paged.append((name, doc))
    assert sum(n == "event_page" for n, _ in paged) >= 2
    pd.testing.assert_frame_equal(
        frame(paged).sort_values(KEY).reset_index(drop=True),
        frame(runs).sort_values(KEY).reset_index(drop=True),
    )


def test_hostile_documents_are_rejected_with_reasons_and_the_rest_kept(runs: Docs) -> None:
    start = next(d for n, d in runs if n == "start")
    descriptor = next(d for n, d in runs if n == "descriptor")
    event = next(d for n, d in runs if n == "event")
    hostile: Docs = [
        ("event", {**event, "descriptor": "no-such-descriptor"}),  # before anything
        ("descriptor", {**descriptor, "run_start": "no-such-start", "uid": "d-orphan"}),
        ("event", {k: v for k, v in event.items() if k != "data"}),  # schema-invalid
        ("event", "not a document"),  # type: ignore[list-item]
        ("wavelet", {"uid": "x"}),
    ]
    stream = DocumentStream()
    batch = stream.take([*hostile[:2], *runs[:3], *hostile[2:], *runs[3:]])
    reasons = [r.reason for r in batch.rejects]
    assert reasons == [
        "unknown_descriptor",
        "no_start",
        "invalid_document",
        "not_a_document",
        "invalid_document",
    ]
    assert "'data' is a required property" in batch.rejects[2].detail
    assert "wavelet" in batch.rejects[4].detail
    assert batch.rejects[0].raw.startswith('["event", {')
    # Every good event gave its readings; the counts add up.
    assert batch.readings.num_rows == len(oracle(runs))
    events = sum(n == "event" for n, _ in runs)
    assert batch.events == events
    assert [n for n, _ in batch.documents] == [n for n, _ in runs if n != "event"]
    assert start["uid"] in stream.starts


def test_a_missing_value_is_a_missing_reading_not_an_error(runs: Docs) -> None:
    docs = [
        (n, {**d, "data": {**d["data"], "det": None}}) if n == "event" else (n, d)
        for n, d in runs[:6]
    ]
    got = frame(docs)
    assert got.loc[got["channel"] == "det", "value"].isna().all()
    assert np.isfinite(got.loc[got["channel"] == "motor", "value"]).all()


def test_redelivered_run_documents_are_skipped_and_a_primed_stream_knows_them(
    runs: Docs,
) -> None:
    stream = DocumentStream()
    first = stream.take(runs)
    assert first.records == first.readings.num_rows == len(oracle(runs))
    again = stream.take(runs)  # all of it delivered once more
    assert again.documents == []
    assert again.redelivered == len(first.documents) == sum(n != "event" for n, _ in runs)
    # Events still give their readings: the same ones, which dedup finds to be duplicates.
    pd.testing.assert_frame_equal(again.readings.to_pandas(), first.readings.to_pandas())
    # After a restart, a fresh stream learns the stored documents and emits none of them.
    primed = DocumentStream()
    assert primed.prime([("event", runs[2][1]), ("start", "junk"), *first.documents]) == len(
        first.documents
    )
    assert primed.prime(first.documents) == 0
    resumed = primed.take(runs)
    assert resumed.documents == []
    assert not resumed.rejects
    pd.testing.assert_frame_equal(resumed.readings.to_pandas(), first.readings.to_pandas())
    # The state is plain data: it pickles (a snapshot could carry it).
    assert pickle.loads(pickle.dumps(stream)).take(runs).documents == []
