"""The broker scheme registry (``SCHEMES``): a new scheme is one class and one table entry.

``fake://`` is a made-up broker in this process (a queue per topic and an acknowledged
position per consumer, at-least-once like the real ones). It is registered with one entry and
read by the ordinary live ingest (``obsflow ingest fake://...``); the oracle is pandas over the
published readings.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from obsflow.connectors.datasets import reads
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.messages import Message
from obsflow.connectors.sources.brokers import (
    SCHEMES,
    BrokerURL,
    Scheme,
    Subscription,
    connect,
    is_broker_url,
    publisher,
)
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main


class FakeBroker:
    """Topics as lists of message bodies, and per (consumer, topic) how far was acknowledged."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.topics: dict[str, list[bytes]] = defaultdict(list)
        self.acked: dict[tuple[str, str], int] = defaultdict(int)

    def append(self, topic: str, bodies: list[bytes]) -> None:
        with self.lock:
            self.topics[topic].extend(bodies)


BROKER = FakeBroker()


class FakeClient:
    """``BrokerClient`` over ``BROKER``: delivers from the acknowledged position on, so what a
    session took and did not acknowledge comes again to the next one."""

    def __init__(self, sub: Subscription) -> None:
        self.topics, self.consumer = sub.topics, sub.consumer
        self.delivered = {t: BROKER.acked[(sub.consumer, t)] for t in sub.topics}
        self.closed = False

    def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        out: list[Message] = []
        with BROKER.lock:
            for topic in self.topics:
                start = self.delivered[topic]
                bodies = BROKER.topics[topic][start : start + max_messages - len(out)]
                for i, body in enumerate(bodies, start):
                    out.append(Message(body, topic, time.time_ns(), (topic, i)))
                self.delivered[topic] = start + len(bodies)
        if not out:
            time.sleep(min(timeout, 0.05))
        return out

    def ack(self, messages: list[Message]) -> None:
        with BROKER.lock:
            for m in messages:
                topic, i = m.token
                key = (self.consumer, topic)
                BROKER.acked[key] = max(BROKER.acked[key], i + 1)

    def drained(self) -> bool:
        with BROKER.lock:
            return all(
                BROKER.acked[(self.consumer, t)] == len(BROKER.topics[t]) for t in self.topics
            )

    def close(self) -> None:
        self.closed = True


class FakePublisher:
    """``BrokerPublisher`` over ``BROKER``."""

    def __init__(self, broker: BrokerURL, topic: str) -> None:
        self.topic = topic

    def publish(self, bodies: list[bytes]) -> None:
        BROKER.append(self.topic, bodies)

    def close(self) -> None:
        pass


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBroker]:
    """``fake://`` registered (one entry) for one test, over an empty broker; unregistered
    after it."""
    global BROKER
    monkeypatch.setitem(SCHEMES, "fake", Scheme(FakeClient, FakePublisher, port=7))
    BROKER = FakeBroker()
    yield BROKER
    BROKER = FakeBroker()


def readings(seed: int = 5) -> pd.DataFrame:
    """3 sources x 400 readings at 10 Hz."""
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2026-03-01T00:00:00Z").value
    return pd.DataFrame(
        {
            "source": np.repeat(["a", "b", "c"], 400),
            "time": t0 + np.tile(np.arange(400) * 100_000_000, 3),
            "value": rng.normal(10, 3, 1200).round(3),
        }
    )


def bodies_of(frame: pd.DataFrame) -> list[bytes]:
    """Messages of up to 7 readings (a JSON array), in a shuffled order, 20 sent twice."""
    records = [
        {"source": s, "time": int(t), "value": float(v)}
        for s, t, v in zip(frame["source"], frame["time"], frame["value"], strict=True)
    ]
    order = np.random.default_rng(1).permutation(len(records))
    bodies = [
        json.dumps([records[j] for j in order[i : i + 7]]).encode() for i in range(0, len(order), 7)
    ]
    return bodies + bodies[:20]


def ingest_args(store: Path, summary: Path) -> list[str]:
    return [
        "ingest",
        "fake://memory",
        "--topic",
        "obs",
        "--consumer",
        "c",
        "--store",
        str(store),
        "--capture",
        "live",
        "--max-batch",
        "50",
        "--flush-interval",
        "100ms",
        "--stop-when-idle",
        "300ms",
        "--summary",
        str(summary),
        "--quiet",
    ]


def test_a_scheme_registered_with_one_entry_is_ingested_live_like_any_broker(
    fake: FakeBroker, tmp_path: Path
) -> None:
    frame = readings()
    bodies = bodies_of(frame)
    assert is_broker_url("fake://memory")
    assert str(BrokerURL.parse("fake://memory")) == "fake://memory:7"  # the entry's port
    out = publisher("fake://memory", "obs")
    out.publish(bodies)
    out.close()

    store, summary = tmp_path / "store", tmp_path / "summary.json"
    assert main(ingest_args(store, summary)) == 0
    doc = json.loads(summary.read_text())
    assert (doc["input"], doc["accepted"], doc["duplicates"]) == (1200 + 140, 1200, 140)
    assert len(doc["cycles"]) >= len(bodies) // 50  # --max-batch 50: many committed cycles
    assert fake.acked[("c", "obs")] == len(bodies)  # every message acknowledged

    capture = reads.read_capture(Store(str(store)), "live").to_pandas()
    got = capture[["source", "time", "value"]].assign(time=capture["time"].astype("int64"))
    pd.testing.assert_frame_equal(
        got.sort_values(["source", "time"]).reset_index(drop=True),
        frame.sort_values(["source", "time"]).reset_index(drop=True),
    )

    # The same command again: everything was acknowledged, nothing is read twice.
    assert main(ingest_args(store, summary)) == 0
    assert json.loads(summary.read_text())["input"] == 0
    assert reads.read_capture(Store(str(store)), "live").num_rows == 1200


def test_a_client_is_made_by_the_entry_and_checked_on_the_way(fake: FakeBroker) -> None:
    client = connect("fake://memory", ["obs"], "c")
    assert isinstance(client, FakeClient)
    client.close()
    with pytest.raises(ConfigError, match="fake:// needs --topic"):
        connect("fake://memory", [], "c")
    with pytest.raises(ConfigError, match="--consumer 'a b'"):
        connect("fake://memory", ["obs"], "a b")


def test_an_unregistered_scheme_is_no_broker_url() -> None:
    """What the fixture registered is gone after it; the error lists the schemes there are."""
    assert "fake" not in SCHEMES
    assert not is_broker_url("fake://memory")
    with pytest.raises(ConfigError) as refused:
        BrokerURL.parse("fake://memory")
    assert str(refused.value) == (
        "fake:// is no broker URL: use nats://, mqtt://, mqtts://, kafka://, ca://, pva://"
    )


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("nats://127.0.0.1:1", "nats:// needs the nats-py package"),
        ("mqtts://127.0.0.1:1", "mqtt:// needs the paho-mqtt package"),
        ("kafka://127.0.0.1:1", "kafka:// needs the confluent-kafka package"),
    ],
)
def test_a_missing_client_library_says_what_to_install(
    url: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = SCHEMES[url.partition(":")[0]].library
    assert library is not None
    monkeypatch.setitem(sys.modules, library, None)  # `import library` fails, as uninstalled
    for make in (lambda: connect(url, ["t"], "c"), lambda: publisher(url, "t")):
        with pytest.raises(ConfigError) as missing:
            make()
        assert str(missing.value) == f"{hint}: pip install 'obsflow[live]'"
