"""Bluesky documents from a Kafka topic (issue 15): msgpack ``[name, doc]`` messages as
bluesky-kafka publishes them, through librdkafka's mock cluster, into a live ingest that is
SIGKILLed twice mid-stream and resumed: the capture holds each reading and frame once, the
run documents are stored once, nothing is rejected.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.plans import scan
from ophyd.sim import det, motor

from obsflow.connectors.sources.bluesky.documents import SETTLED
from obsflow.connectors.sources.bluesky.io import read_documents
from obsflow.connectors.storage.commits import head
from obsflow.connectors.storage.store import Store
from obsflow.flows.explore.explorer import Explorer
from tests.bluesky_runs import (
    Docs,
    blob_scan,
    hdf_oracle,
    npy_count,
    npy_oracle,
    recorded,
    scalar_oracle,
    scan_and_count,
)
from tests.brokers import KafkaMock
from tests.flows.test_live import live_ingest, running, wait_for

pytestmark = pytest.mark.integration  # servers, brokers, child processes (tests/conftest.py)

OBSFLOW = str(Path(sys.executable).parent / "obsflow")
TOPIC = "bluesky.docs"


def documents(where: Path) -> tuple[Docs, Docs, Docs]:
    """Four runs: two 60-point scans (scalars), images by resource/datum, frames by stream;
    (all documents in order, the image run's, the frame run's)."""
    engine = RunEngine({})
    npy = npy_count(where / "npy", num=6)
    hdf = blob_scan(where / "hdf")
    docs = recorded(engine, scan([det], motor, -1, 1, 60)) + npy + hdf
    return docs + recorded(engine, scan([det], motor, -2, 2, 60)), npy, hdf


def commits(store: Path) -> int:
    return head(Store(str(store)), "bl")


def test_kafka_documents_killed_twice_are_captured_exactly_once(tmp_path: Path) -> None:
    docs, npy, hdf = documents(tmp_path / "data")
    bodies = [msgpack.packb([name, doc]) for name, doc in docs]
    kafka = KafkaMock()
    killed = [threading.Event(), threading.Event()]
    sent = threading.Event()

    def publisher() -> None:  # a third, then a third after each kill: kills come mid-stream
        thirds = np.array_split(np.arange(len(bodies)), 3)
        for k, part in enumerate(thirds):
            for i in part:
                kafka.publish([(TOPIC, bodies[i])], key=b"run-engine")
                time.sleep(0.005)
            if k < 2:
                killed[k].wait(120)
        sent.set()

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    store = tmp_path / "store"
    args = [
        OBSFLOW,
        "ingest",
        kafka.url,
        "--format",
        "bluesky",
        "--topic",
        TOPIC,
        "--consumer",
        "obsflow",
        "--store",
        str(store),
        "--capture",
        "bl",
        "--flush-interval",
        "0.2s",
        "--max-batch",
        "25",
        "-q",
    ]
    try:
        for k in range(2):  # kill it once it has committed something new, twice
            before = commits(store)
            proc = subprocess.Popen([*args, "--stop-when-idle", "60s"], stderr=subprocess.PIPE)
            wait_for(lambda b=before: commits(store) > b + 1, 120, "no commit after a start")
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
            killed[k].set()
        assert not sent.is_set(), "the publisher finished before the second kill"
        summary = tmp_path / "summary.json"
        done = subprocess.run(
            [*args, "--stop-when-idle", "3s", "--summary", str(summary)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        thread.join(60)
        assert sent.is_set()
    finally:
        kafka.stop()

    ex = Explorer(str(store))
    got = ex.capture("bl", columns=["source", "seq", "time", "channel", "value", "run_uid"])
    assert not got.duplicated(["source", "seq"]).any()
    assert ex.deadletters().empty
    # Every scalar of every event once, equal to a plain reading of the documents.
    want = scalar_oracle(docs)
    key = ["run_uid", "source", "channel", "time"]
    plain = got[~got["channel"].isin(["img", "energy", "bdet", "bdet-sum"])]
    merged = want.merge(plain, on=key, how="outer", indicator=True)
    assert (merged["_merge"] == "both").all()
    np.testing.assert_array_equal(merged["value_x"], merged["value_y"])
    # Every external value once, at its (key, seq).
    externals = {**npy_oracle(npy), **hdf_oracle(hdf)}
    external = got[got["channel"].isin(["img", "energy", "bdet", "bdet-sum"])]
    assert sorted(zip(external["channel"], external["seq"], strict=True)) == sorted(externals)
    # The run and asset documents once each.
    table = read_documents(Store(str(store)), "bl").to_pandas()
    table = table[table["name"] != SETTLED]  # (obsflow's notes: a stream datum's frames made)
    kept = [(n, d) for n, d in docs if n != "event"]
    assert len(table) == len(kept)
    assert sorted(table["uid"]) == sorted(str(d.get("uid", d.get("datum_id"))) for _, d in kept)
    assert json.loads(summary.read_text())["balanced"]


@pytest.mark.parametrize("kind", ["nats", "mqtt"])
def test_the_same_documents_over_nats_and_mqtt(kind: str, tmp_path: Path) -> None:
    """One document per message, msgpack, on a NATS subject and an MQTT topic: every reading
    of the runs once; a rerun of the same consumer adds nothing."""
    docs = scan_and_count()
    with running(kind, tmp_path) as broker:
        broker.subscribe_first()
        topic = broker.topic("bluesky")
        broker.publish([(topic, msgpack.packb([name, doc])) for name, doc in docs])
        store = tmp_path / "store"
        summary = tmp_path / "summary.json"
        args = [*live_ingest(broker, store, "--format", "bluesky", "--capture", "bl")]
        args += ["--stop-when-idle", "1s", "--summary", str(summary)]
        for _ in range(2):
            done = subprocess.run([OBSFLOW, *args], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            if _ == 0:
                first = json.loads(summary.read_text())
        assert json.loads(summary.read_text())["input"] == 0
    want = scalar_oracle(docs)
    assert first["accepted"] == first["input"] == len(want)
    assert first["documents"] == sum(n != "event" for n, _ in docs)
    got = Explorer(str(store)).capture(
        "bl", columns=["run_uid", "source", "channel", "time", "value"]
    )
    merged = want.merge(
        got, on=["run_uid", "source", "channel", "time"], how="outer", indicator=True
    )
    assert (merged["_merge"] == "both").all()
    np.testing.assert_array_equal(merged["value_x"], merged["value_y"])
