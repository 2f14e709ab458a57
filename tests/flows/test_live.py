"""Live ingest from brokers (issue 13), against real brokers started here: NATS JetStream
(``nats-server``) and Mosquitto. Each test runs against each broker (``Broker``).

The oracle for views and late readings is pandas over the published readings, cut where the
capture's commit log says each live cycle ended: a reading is late when its window ends at or
before (latest time of its series in earlier commits) - lateness (decision 003).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import pytest

from obsflow.connectors.datasets import reads, views
from obsflow.connectors.sources.brokers import connect
from obsflow.connectors.sources.simulator import SimSpec, generate
from obsflow.connectors.storage import commits, tables
from obsflow.connectors.storage.store import Store
from obsflow.flows.explore.explorer import open_store
from tests.brokers import KafkaMock, MosquittoServer, NatsServer, mqtt_publish, publish
from tests.delta import capture_commits

pytestmark = pytest.mark.integration  # servers, brokers, child processes (tests/conftest.py)

OBSFLOW = str(Path(sys.executable).parent / "obsflow")
SECOND = 10**9
# Messages a killed run took come again after the ack wait: 3 s, not 30, in these tests.
ACK_WAIT = {"OBSFLOW_NATS_ACK_WAIT": "3"}
VIEWS = """
[[view]]
name = "live_1s"
size = "1s"
lateness = "1s"
aggregates = ["count", "mean", "min", "max"]
"""


@dataclass
class Broker:
    """A broker under test: how to publish to it and which topics to use."""

    kind: str
    server: NatsServer | MosquittoServer | KafkaMock

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def sep(self) -> str:
        return "/" if self.kind == "mqtt" else "."

    def topic(self, *levels: str) -> str:
        return self.sep.join(("obs", *levels))

    @property
    def topic_filter(self) -> str:
        return {"nats": "obs.>", "mqtt": "obs/#", "kafka": "^obs\\..*"}[self.kind]

    def subscribe_first(self) -> None:
        """Create the consumer before anything is published: an MQTT broker keeps messages
        only for sessions that exist (a JetStream stream keeps them regardless)."""
        with mock.patch.dict(os.environ, ACK_WAIT):  # the consumer keeps the ack wait it got
            connect(self.url, [self.topic_filter], "obsflow").close()

    def publish(self, messages: list[tuple[str, bytes]]) -> None:
        if self.kind == "nats":
            publish(self.url, "OBS", ["obs.>"], messages)
        elif self.kind == "mqtt":
            mqtt_publish(self.url, messages)
        else:
            assert isinstance(self.server, KafkaMock)
            self.server.publish(messages)


def start_broker(kind: str, tmp_path: Path) -> NatsServer | MosquittoServer | KafkaMock:
    if kind == "kafka":
        return KafkaMock()
    server = NatsServer(tmp_path / "jetstream") if kind == "nats" else MosquittoServer(tmp_path)
    return server.start()


@contextlib.contextmanager
def running(kind: str, tmp_path: Path) -> Iterator[Broker]:
    with served(kind, start_broker(kind, tmp_path / "broker")) as b:
        yield b


@contextlib.contextmanager
def served(kind: str, server: NatsServer | MosquittoServer | KafkaMock) -> Iterator[Broker]:
    """A started broker under test (a JetStream stream made first), stopped at the end."""
    try:
        b = Broker(kind, server)
        if kind == "nats":
            b.publish([])  # the stream, before anyone reads it
        yield b
    finally:
        server.stop()


@pytest.fixture(params=["nats", "mqtt", "kafka"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    with running(request.param, tmp_path) as b:
        yield b


@pytest.fixture(params=["nats", "mqtt"])
def restartable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """The brokers that run as servers here (Kafka is a mock inside this process)."""
    with running(request.param, tmp_path) as b:
        yield b


def obsflow(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **ACK_WAIT}
    return subprocess.Popen(
        [OBSFLOW, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def live_ingest(broker: Broker, store: Path, *extra: str) -> list[str]:
    return [
        "ingest",
        broker.url,
        "--topic",
        broker.topic_filter,
        "--consumer",
        "obsflow",
        "--store",
        str(store),
        "--capture",
        "live",
        *extra,
    ]


def test_messages_of_every_shape_are_captured_once_and_a_rerun_adds_nothing(
    broker: Broker, tmp_path: Path
) -> None:
    received_before = time.time_ns()
    a, b, probe = broker.topic("a"), broker.topic("b"), broker.topic("probe7")
    messages = [
        (a, json.dumps({"source": "a", "time": "2026-01-01T00:00:00Z", "value": 1})),
        (a, json.dumps([{"source": "a", "time": "2026-01-01T00:00:01Z", "value": 2}] * 2)),
        (b, json.dumps({"source": "b", "value": 3.5})),  # no time: the broker's (or receipt)
        (probe, "21.5"),  # a bare number: the value; the source from the topic
        (a, "{not json"),
        (a, json.dumps({"source": "a", "time": "2026-01-01T00:00:02Z", "value": "x"})),
    ]
    broker.subscribe_first()
    broker.publish([(t, body.encode()) for t, body in messages])
    store = tmp_path / "store"
    summary = tmp_path / "summary.json"
    args = live_ingest(broker, store, "--stop-when-idle", "1s", "--summary", str(summary))
    args += ["--map", "source=topic:1"]
    done = subprocess.run([OBSFLOW, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(summary.read_text())
    # 6 messages: 7 records (an array of 2), the two readings of the array are one reading.
    assert (doc["input"], doc["accepted"], doc["rejected"], doc["duplicates"]) == (7, 4, 2, 1)
    capture = reads.read_capture(Store(str(store)), "live").to_pandas()
    got = sorted(zip(capture["source"], capture["value"], strict=True))
    assert got == [("a", 1.0), ("a", 2.0), ("b", 3.5), ("probe7", 21.5)]
    stamped = capture[capture["source"].isin(["b", "probe7"])]["time"]
    assert (stamped.astype("int64") >= received_before).all()  # the broker's time, captured
    dead = reads.read_deadletters(Store(str(store))).to_pandas()
    assert sorted(dead["reason"]) == ["bad_value", "malformed"]
    assert f"message on {a}: not JSON" in " ".join(dead["message"])

    # The same consumer again: every message was acknowledged, nothing comes twice.
    done = subprocess.run([OBSFLOW, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(summary.read_text())["input"] == 0
    assert reads.read_capture(Store(str(store)), "live").num_rows == 4


def published_readings(seed: int = 13) -> tuple[pd.DataFrame, list[list[dict[str, Any]]]]:
    """100,000 readings (20 sources at 100 Hz for 50 s), in arrival order with up to 3 s of
    disorder, 2 % of them sent again a little later; as messages of 10 readings."""
    rng = np.random.default_rng(seed)
    n_src, per = 20, 5_000
    t0 = pd.Timestamp("2026-05-01T00:00:00Z").value
    frame = pd.DataFrame(
        {
            "source": np.repeat([f"s{i:02d}" for i in range(n_src)], per),
            "time": t0 + np.tile(np.arange(per) * 10_000_000, n_src),
            "value": rng.normal(20, 2, n_src * per).round(4),
        }
    )
    arrival = frame["time"].to_numpy() + rng.uniform(0, 3 * SECOND, len(frame))
    again = rng.random(len(frame)) < 0.02
    resent = frame[again].assign(_at=arrival[again] + rng.uniform(0, 5 * SECOND, again.sum()))
    stream = pd.concat([frame.assign(_at=arrival), resent]).sort_values("_at", kind="stable")
    records = [
        {"source": s, "time": int(t), "value": v}
        for s, t, v in zip(stream["source"], stream["time"], stream["value"], strict=True)
    ]
    return frame, [records[i : i + 10] for i in range(0, len(records), 10)]


def assert_captured_once(store: Path, frame: pd.DataFrame) -> None:
    """The capture holds each published reading exactly once."""
    capture = reads.read_capture(Store(str(store)), "live").to_pandas()
    got = capture[["source", "time", "value"]].assign(time=capture["time"].astype("int64"))
    pd.testing.assert_frame_equal(
        got.sort_values(["source", "time"]).reset_index(drop=True),
        frame.sort_values(["source", "time"]).reset_index(drop=True),
    )


def commit_count(store: Path) -> int:
    return commits.head(Store(str(store)), "live")


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# MQTT and Kafka are killed five times over in test_live_resume.py: here only NATS in `make test`.
@pytest.mark.parametrize(
    "broker",
    [
        "nats",
        pytest.param("mqtt", marks=pytest.mark.slow),
        pytest.param("kafka", marks=pytest.mark.slow),
    ],
    indirect=True,
)
def test_killed_twice_the_capture_holds_each_published_reading_once_and_views_equal_pandas(
    broker: Broker, tmp_path: Path
) -> None:
    frame, messages = published_readings()
    broker.subscribe_first()
    sent = threading.Event()
    killed = [threading.Event(), threading.Event()]
    topic = broker.topic("sim")

    def publisher() -> None:  # messages all along, whatever a restart takes on this broker
        chunks = range(0, len(messages), 500)
        for n, i in enumerate(chunks):
            broker.publish([(topic, json.dumps(m).encode()) for m in messages[i : i + 500]])
            for k, at in enumerate((len(chunks) // 3, 2 * len(chunks) // 3)):
                if n == at:  # hold the rest back until that kill happened: kills come mid-stream
                    killed[k].wait(120)
            time.sleep(0.3)
        sent.set()

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    store = tmp_path / "store"
    view_file = tmp_path / "views.toml"
    view_file.write_text(VIEWS)
    args = live_ingest(broker, store, "--views", str(view_file), "-q")

    kills = 0
    while kills < 2:  # kill it once it has committed something new, twice
        before = commit_count(store)
        proc = obsflow(*args, "--stop-when-idle", "30s")
        wait_for(lambda b=before: commit_count(store) > b, 60, "no commit after a start")
        time.sleep(np.random.default_rng(kills).uniform(0, 0.8))  # somewhere in a cycle
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        killed[kills].set()
        kills += 1
    assert not sent.is_set(), "the publisher finished before the second kill: too fast"
    summary = tmp_path / "summary.json"
    proc = obsflow(*args, "--stop-when-idle", "3s", "--summary", str(summary))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    thread.join()

    assert_captured_once(store, frame)  # duplicates, redeliveries and kills included
    st = Store(str(store))

    # The oracle: the readings in the order the commit log gives, late when their window
    # ends at or before what earlier commits saw of their series, minus the lateness.
    rows = capture_commits(store, "live", ["source", "time", "value", "commit"])
    seen = pd.concat(rows, ignore_index=True)
    last = seen.groupby(["source", "commit"])["time"].max().groupby("source").cummax()
    before = last.groupby("source").shift(1).rename("before")
    seen = seen.join(before, on=["source", "commit"]).reset_index(drop=True)
    end = (seen["time"] // SECOND + 1) * SECOND
    late = end <= seen["before"] - SECOND
    expected_late = seen[late][["source", "time"]]
    assert 0 < len(expected_late) < len(frame), len(expected_late)  # the oracle can tell
    got_late = reads.read_late(st, "live_1s").to_pandas()
    assert sorted(zip(got_late["source"], got_late["time"].astype("int64"), strict=True)) == (
        sorted(zip(expected_late["source"], expected_late["time"], strict=True))
    )
    on_time = seen[~late].assign(window_start=(seen["time"] // SECOND) * SECOND)
    want = (
        on_time.groupby(["source", "window_start"])["value"]
        .agg(["count", "mean", "min", "max"])
        .reset_index()
    )
    view = reads.read_view(st, "live_1s").to_pandas()
    view = view.assign(window_start=view["window_start"].astype("int64"))
    merged = want.merge(view, on=["source", "window_start"], suffixes=("", "_view"))
    assert len(merged) == len(want) == len(view)
    assert (merged["count"] == merged["count_view"]).all()
    for agg in ("mean", "min", "max"):
        np.testing.assert_allclose(merged[agg], merged[f"{agg}_view"], rtol=1e-12)
    doc = json.loads(summary.read_text())
    assert doc["balanced"]

    # A view gathers no small objects, however many cycles: a window's row has one home
    # object, which the cycles that change it rewrite (the capture gains objects: compaction).
    span = views.read_view_doc(st, "live_1s")["segment_span"]
    segments = len(set(view["window_start"] // span))
    per_part = pd.Series([f.path.rsplit("/", 1)[0] for f in views.view_files(st, "live_1s")])
    cycles = len(commits.read_log(st, "live"))
    assert per_part.value_counts().max() <= segments
    assert segments < cycles, (segments, cycles)


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[Broker]:
    with running("nats", tmp_path) as b:
        yield b


def test_a_quiet_source_has_its_windows_closed_and_replay_closes_them_alike(
    nats: Broker, tmp_path: Path
) -> None:
    """Two sources at 10 Hz in real time; one goes quiet after 3 s. With --idle-timeout 2s its
    last window becomes final before the other's, by a commit replay repeats. (Idle closing is
    the session's, whatever the broker: one broker is enough. When closes happen, to the tick,
    is tested on a fake clock in test_live_idle.py.)"""
    broker = nats
    broker.subscribe_first()
    last_b: list[float] = []

    topic_a, topic_b = broker.topic("a"), broker.topic("b")

    def publisher() -> None:
        started = time.time()
        while (now := time.time()) - started < 6:
            batch = [(topic_a, {"source": "a", "time": time.time_ns(), "value": now - started})]
            if now - started < 3:
                batch.append((topic_b, {"source": "b", "time": time.time_ns(), "value": 1.0}))
                last_b[:] = [time.time()]
            broker.publish([(t, json.dumps(r).encode()) for t, r in batch])
            time.sleep(0.1)

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    store = tmp_path / "store"
    view_file = tmp_path / "views.toml"
    view_file.write_text(VIEWS.replace('lateness = "1s"\n', ""))
    args = live_ingest(broker, store, "--views", str(view_file), "-q", "--idle-timeout", "2s")
    done = subprocess.run(
        [OBSFLOW, *args, "--stop-when-idle", "4s"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    thread.join()
    st = Store(str(store))
    log = commits.read_log(st, "live")
    closes = [e for e in log if e.kind == "close"]
    assert [c.close[0]["sources"] for c in closes] == [["b"], ["a"]]
    delay = pd.Timestamp(closes[0].created).timestamp() - last_b[0]
    print(f"b's windows closed {delay:.2f} s after its last message (idle timeout 2 s)")
    live = reads.read_view(st, "live_1s").to_pandas()
    assert live["final"].all()  # both sources went quiet: every window closed
    assert set(live["source"]) == {"a", "b"}

    replayed = subprocess.run(
        [OBSFLOW, "replay", "--store", str(store), "--capture", "live", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replayed.returncode == 0, replayed.stderr
    again = reads.read_view(st, "live_1s").to_pandas()
    key = ["source", "window_start"]
    pd.testing.assert_frame_equal(  # the same rows; only the run that wrote them differs
        again.drop(columns="run").sort_values(key).reset_index(drop=True),
        live.drop(columns="run").sort_values(key).reset_index(drop=True),
    )


def test_a_broker_restart_mid_run_loses_nothing_and_doubles_nothing(
    restartable: Broker, tmp_path: Path
) -> None:
    broker = restartable
    frame, messages = published_readings(seed=5)
    broker.subscribe_first()
    store = tmp_path / "store"
    half = len(messages) // 2
    topic = broker.topic("sim")
    broker.publish([(topic, json.dumps(m).encode()) for m in messages[:half]])
    summary = tmp_path / "summary.json"
    proc = obsflow(
        *live_ingest(broker, store, "-q", "--summary", str(summary)), "--stop-when-idle", "4s"
    )
    wait_for(lambda: commit_count(store) >= 1, 60, "no commit")
    assert not isinstance(broker.server, KafkaMock)
    broker.server.restart()  # same port, same data: the session reconnects
    broker.publish([(topic, json.dumps(m).encode()) for m in messages[half:]])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_captured_once(store, frame)
    doc = json.loads(summary.read_text())
    assert doc["balanced"]
    assert doc["accepted"] == len(frame)


def test_a_backlog_is_taken_in_bounded_batches_and_all_of_it_once(
    broker: Broker, tmp_path: Path
) -> None:
    """Back-pressure: a backlog twelve times ``--max-batch`` waits on the broker; no commit
    takes more than the batch, and together they take every message once."""
    n, most = 12_000, 1_000
    t0 = pd.Timestamp("2026-05-01T00:00:00Z").value
    rows = [{"source": f"s{i % 4}", "time": t0 + i * 10**7, "value": i} for i in range(n)]
    broker.subscribe_first()
    broker.publish([(broker.topic(str(r["source"])), json.dumps(r).encode()) for r in rows])
    store, summary = tmp_path / "store", tmp_path / "summary.json"
    extra = ["--max-batch", str(most), "--stop-when-idle", "1s", "--summary", str(summary), "-q"]
    if broker.kind == "nats":
        extra += ["--stream", "OBS"]  # named, rather than found from the subject
    done = subprocess.run(
        [OBSFLOW, *live_ingest(broker, store, *extra)], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    inputs = [c["input"] for c in json.loads(summary.read_text())["cycles"]]
    assert max(inputs) <= most
    assert sum(inputs) == n
    assert len(inputs) >= n // most
    capture = reads.read_capture(Store(str(store)), "live").to_pandas()
    assert sorted(capture["value"].astype(int)) == list(range(n))


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        ("NOPE", "no JetStream stream 'NOPE' on nats://"),
        ("../x", "--stream '../x': use [A-Za-z0-9_-]{1,64}"),
        ("OBS", "stream 'OBS' holds 'obs.>': no message on 'other.x'"),
    ],
)
def test_a_wrong_stream_is_said_in_one_line(
    nats: Broker, tmp_path: Path, stream: str, error: str
) -> None:
    args = live_ingest(nats, tmp_path / "store", "--stream", stream, "--stop-when-idle", "1s")
    args[args.index("--topic") + 1] = "other.x"
    done = subprocess.run([OBSFLOW, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("obsflow: error: ")
    assert error in line


def test_a_session_holds_no_more_unacknowledged_messages_than_its_bound(
    restartable: Broker, tmp_path: Path
) -> None:
    """Consumption pauses: with 100 messages in flight, the session takes no more until they
    are acknowledged, however many are waiting (NATS ``max_ack_pending``; MQTT
    ``ReceiveMaximum``, and the client's own bound since Debian's Mosquitto 2.0.11 stops
    honouring it after the first PUBACK); then it takes the next ones. (Kafka has no acks: its
    consumer's prefetch is bounded by ``queued.max.messages.kbytes``.)"""
    broker = restartable
    broker.subscribe_first()
    topic = broker.topic("x")
    broker.publish([(topic, json.dumps({"value": i}).encode()) for i in range(1_000)])
    client = connect(broker.url, [broker.topic_filter], "obsflow", max_in_flight=100)
    try:
        seen: list[int] = []
        while len(seen) < 1_000:
            got = client.fetch(10_000, 1.0)  # asks for everything, waits the whole second
            assert 0 < len(got) <= 100
            seen += [json.loads(m.body)["value"] for m in got]
            client.ack(got)
        assert sorted(seen) == list(range(1_000))
    finally:
        client.close()


@pytest.mark.parametrize(("kind", "fmt"), [("nats", "arrow"), ("mqtt", "json"), ("kafka", "json")])
def test_simulate_publishes_what_a_live_ingest_captures(
    kind: str, fmt: str, tmp_path: Path
) -> None:
    """``simulate --to`` publishes readings whose time has come (a start in the past: all at
    once — for Arrow, 240,000 readings, several MB: more than a NATS message may hold, so in
    several messages); a live ingest of either format captures exactly the simulation. (Each
    broker's publisher, and each format once: decoding is the same whatever the broker.)"""
    with running(kind, tmp_path) as broker:
        simulate_and_ingest(broker, tmp_path, fmt)


def simulate_and_ingest(broker: Broker, tmp_path: Path, fmt: str) -> None:
    sources, rate = (20, 2_000) if fmt == "arrow" else (3, 20)
    sim = ["--sources", str(sources), "--channels", "t,p", "--rate", str(rate), "--duration", "3s"]
    start = "2026-02-01T00:00:00Z"
    broker.subscribe_first()
    done = subprocess.run(
        [
            OBSFLOW,
            "simulate",
            "--to",
            broker.url,
            "--topic",
            broker.topic("sim"),
            "--format",
            fmt,
            "--start",
            start,
            *sim,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    store = tmp_path / "store"
    args = live_ingest(broker, store, "-q", "--format", fmt, "--stop-when-idle", "1s")
    done = subprocess.run([OBSFLOW, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = generate(
        SimSpec(sources=sources, channels=("t", "p"), rate=rate, duration=3, start=start)
    ).to_pandas()
    capture = reads.read_capture(Store(str(store)), "live").to_pandas()
    key = ["source", "channel", "time"]
    cols = [*key, "seq", "value"]
    pd.testing.assert_frame_equal(
        capture[cols].sort_values(key).reset_index(drop=True),
        expected[cols].sort_values(key).reset_index(drop=True),
        check_dtype=False,
    )


def test_a_broker_down_longer_than_the_budget_stops_the_session_in_one_line_and_a_rerun_resumes(
    restartable: Broker, tmp_path: Path
) -> None:
    broker = restartable
    frame, messages = published_readings(seed=9)
    broker.subscribe_first()
    topic = broker.topic("sim")
    half = len(messages) // 2
    broker.publish([(topic, json.dumps(m).encode()) for m in messages[:half]])
    store = tmp_path / "store"
    env = {**os.environ, "OBSFLOW_BROKER_RETRY_SECONDS": "3", **ACK_WAIT}
    args = [OBSFLOW, *live_ingest(broker, store, "-q"), "--stop-when-idle", "30s"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    wait_for(lambda: commit_count(store) >= 1, 60, "no commit")
    assert not isinstance(broker.server, KafkaMock)
    broker.server.stop()  # and it stays down
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "unavailable for 3 s" in lines[0] or "unreachable for 3 s" in lines[0]
    assert "run the same command again to resume" in lines[0]

    broker.server.start()  # same port, same data
    broker.publish([(topic, json.dumps(m).encode()) for m in messages[half:]])
    done = subprocess.run(
        [*args[:-2], "--stop-when-idle", "4s"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert_captured_once(store, frame)


def test_compaction_beside_a_live_session_is_safe(nats: Broker, tmp_path: Path) -> None:
    """``capture compact`` three times while a session ingests: its commit and the cycles'
    land in any order (it only swaps files of earlier commits); every reading is captured
    once."""
    frame, messages = published_readings(seed=21)
    broker = nats
    broker.subscribe_first()
    topic = broker.topic("sim")
    store = tmp_path / "store"
    proc = obsflow(*live_ingest(broker, store, "-q"), "--stop-when-idle", "3s")
    released = [threading.Event(), threading.Event()]

    def publisher() -> None:  # a third at a time: each compaction has new cycles to compact
        chunks = range(0, len(messages), 500)
        for n, i in enumerate(chunks):
            broker.publish([(topic, json.dumps(m).encode()) for m in messages[i : i + 500]])
            for k, at in enumerate((len(chunks) // 3, 2 * len(chunks) // 3)):
                if n == at:
                    released[k].wait(120)
            # Slow enough that a third spans several one-second cycles on a fast machine too
            # (at 0.2 s, one cycle once took a whole third: nothing small to compact).
            time.sleep(0.5)

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    st = Store(str(store))

    def cycles() -> int:
        if not commit_count(store):
            return 0
        return sum(e.kind == "ingest" for e in commits.read_log(st, "live"))

    compacted, seen = 0, 0
    for k in range(3):
        # A new cycle since the last compaction (under load one cycle may take a whole third).
        wait_for(lambda s=seen: cycles() > s, 120, "no new cycle")
        seen = cycles()
        if k < 2:
            released[k].set()  # the next third flows while this compaction runs
        done = subprocess.run(
            [OBSFLOW, "capture", "compact", "live", "--store", str(store)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        compacted += "rewritten" in done.stderr
    thread.join()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert compacted >= 2  # it really compacted while the session ran
    assert_captured_once(store, frame)
    kinds = [(e.get("obsflow") or {}).get("kind") for e in tables.history(st, "captures/live")]
    assert kinds.count("compact") == compacted


def test_a_trace_id_header_on_one_percent_of_messages_is_on_exactly_their_rows(
    broker: Broker, tmp_path: Path
) -> None:
    """Issue 17 must-show 4, the broker part: a ``trace_id`` header (NATS header, MQTT v5 user
    property, Kafka header) on 1 % of the messages is on exactly their capture rows and, for
    those rejected, their dead letters, for those late their late readings; a body's own
    ``trace_id`` field wins over a header."""
    broker.subscribe_first()
    topic = broker.topic("traced")
    t0 = pd.Timestamp("2026-05-01T00:00:00Z").value
    messages: list[tuple[Any, ...]] = []
    traced: dict[str, dict[str, Any]] = {}
    for i in range(2_000):
        record: dict[str, Any] = {"source": f"s{i % 4}", "time": t0 + i * 10**7, "value": i / 8}
        if i % 100 == 7:  # 1 % of the messages carry a trace id header
            if i % 500 == 7:
                record["value"] = "not-a-number"  # (a dead letter, traced)
            traced[f"req-{i}"] = record
            messages.append((topic, json.dumps(record).encode(), {"trace_id": f"req-{i}"}))
        else:
            messages.append((topic, json.dumps(record).encode()))
    own = {"source": "s9", "time": t0, "value": 1.0, "trace_id": "from-body"}
    messages.append((topic, json.dumps(own).encode(), {"trace_id": "from-header"}))
    broker.publish(messages)
    store = tmp_path / "store"
    proc = obsflow(*live_ingest(broker, store, "-q"), "--stop-when-idle", "3s")
    # Once a cycle has committed, ten traced readings an hour behind their series: late.
    wait_for(lambda: commit_count(store) > 0, 60, "no cycle committed")
    late = {
        f"late-{i}": {"source": "s1", "time": t0 - 3600 * 10**9 + i, "value": 0.5}
        for i in range(10)
    }
    broker.publish([(topic, json.dumps(r).encode(), {"trace_id": t}) for t, r in late.items()])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err

    ex = open_store(str(store))
    cap = ex.capture("live", columns=["source", "time", "value", "trace_id"])
    assert len(cap) == 2_001 - 4 + 10  # (four bad values; the late ones are captured)
    [view] = ex.view_names()
    assert sorted(ex.late(view)["trace_id"]) == sorted(late)
    traced.update(late)
    kept = {t: r for t, r in traced.items() if r["value"] != "not-a-number"}
    on_rows = cap.dropna(subset=["trace_id"]).set_index("trace_id")
    assert sorted(on_rows.index) == sorted([*kept, "from-body"])
    for trace, record in kept.items():
        row = on_rows.loc[trace]
        assert (row["source"], row["time"].value, row["value"]) == (
            record["source"],
            record["time"],
            record["value"],
        )
    dead = ex.deadletters()
    assert sorted(dead["trace_id"]) == sorted(t for t in traced if t not in kept)
