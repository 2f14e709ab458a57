"""Live sessions resume where they stopped, in the broker's order, and alone (issue 30).

Against real brokers started here (nats-server, Mosquitto, librdkafka's mock cluster). The
oracle for a session killed again and again is one session that was never interrupted, reading
the same published messages into a store of its own: the capture must be exact and every view
and late reading the same. The readings are in order per source up to a disorder smaller than
the lateness (so a session's cycles, wherever they are cut, make none late) plus a few readings
hours late (late wherever they arrive), and 2 % sent twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import pytest

from obsflow.connectors.datasets import reads, sessions
from obsflow.connectors.sources.brokers import connect
from obsflow.connectors.storage import commits, layout
from obsflow.connectors.storage.store import Store
from tests.brokers import KafkaMock, publish
from tests.flows.test_live import (
    ACK_WAIT,
    OBSFLOW,
    SECOND,
    Broker,
    assert_captured_once,
    commit_count,
    mqtt_publish,
    obsflow,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration

VIEWS = """
[[view]]
name = "live_1s"
size = "1s"
lateness = "2s"
aggregates = ["count", "mean", "min", "max"]
"""
HOURS_LATE = 12  # readings this many hours behind their source: late in any cut
KILL_DELAYS = (0.0, 0.05, 0.15, 0.3, 0.6)  # seconds after a new commit was seen


@pytest.fixture(params=["nats", "kafka", "mqtt"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    with running(request.param, tmp_path) as b:
        yield b


def readings(seed: int, per_source: int = 2_500) -> tuple[pd.DataFrame, list[list[dict[str, Any]]]]:
    """8 sources at 10 Hz, each message 10 readings of one source, in arrival order: up to 1.5 s
    of disorder (the view's lateness is 2 s), 2 % sent again within a second, and 24 readings
    ``HOURS_LATE`` hours behind. Returns the distinct readings and the messages."""
    rng = np.random.default_rng(seed)
    n_src = 8
    t0 = pd.Timestamp("2026-05-01T00:00:00Z").value
    frame = pd.DataFrame(
        {
            "source": np.repeat([f"s{i}" for i in range(n_src)], per_source),
            "time": t0 + np.tile(np.arange(per_source) * SECOND // 10, n_src),
            "value": rng.normal(20, 2, n_src * per_source).round(4),
        }
    )
    arrival = frame["time"].to_numpy() + rng.uniform(0, 1.5 * SECOND, len(frame))
    stale = frame.sample(24, random_state=seed).assign(
        time=lambda f: f["time"] - HOURS_LATE * 3600 * SECOND + 1, value=-1.0
    )
    stale_at = stale["time"].to_numpy() + HOURS_LATE * 3600 * SECOND + 60 * SECOND
    again = rng.random(len(frame)) < 0.02
    resent = frame[again].assign(_at=arrival[again] + rng.uniform(0, SECOND, again.sum()))
    stream = pd.concat([frame.assign(_at=arrival), stale.assign(_at=stale_at), resent]).sort_values(
        "_at", kind="stable"
    )
    messages: list[list[dict[str, Any]]] = []
    for source, group in stream.groupby("source", sort=False):
        records = [
            {"source": source, "time": int(t), "value": v, "_at": a}
            for t, v, a in zip(group["time"], group["value"], group["_at"], strict=True)
        ]
        messages += [records[i : i + 10] for i in range(0, len(records), 10)]
    messages.sort(key=lambda m: m[0]["_at"])  # (a message goes when its first reading does)
    for m in messages:
        for r in m:
            del r["_at"]
    return pd.concat([frame, stale], ignore_index=True), messages


def publish_all(broker: Broker, messages: list[list[dict[str, Any]]]) -> None:
    """Publish in order; to Kafka keyed by source (one partition each: a source's order is
    its partition's)."""
    topic = broker.topic("sim")
    if broker.kind == "nats":
        publish(broker.url, "OBS", ["obs.>"], [(topic, json.dumps(m).encode()) for m in messages])
    elif broker.kind == "mqtt":
        mqtt_publish(broker.url, [(topic, json.dumps(m).encode()) for m in messages])
    else:
        assert isinstance(broker.server, KafkaMock)
        for source in sorted({m[0]["source"] for m in messages}):
            mine = [(topic, json.dumps(m).encode()) for m in messages if m[0]["source"] == source]
            broker.server.publish(mine, key=source.encode())


def session(broker: Broker, store: Path, consumer: str, *extra: str) -> list[str]:
    return [
        "ingest",
        broker.url,
        "--topic",
        broker.topic_filter,
        "--consumer",
        consumer,
        "--store",
        str(store),
        "--capture",
        "live",
        "--max-batch",
        "100",
        *extra,
    ]


def subscribe(broker: Broker, *consumers: str) -> None:
    """Consumers made before anything is published (an MQTT broker queues only for sessions
    that exist)."""
    for consumer in consumers:
        with mock.patch.dict(os.environ, ACK_WAIT):
            connect(broker.url, [broker.topic_filter], consumer).close()


def finish(broker: Broker, store: Path, consumer: str, views: Path) -> dict[str, Any]:
    """A session to the end of what was published; its summary."""
    summary = store.parent / f"{store.name}-summary.json"
    args = session(broker, store, consumer, "--views", str(views), "-q", "--summary", str(summary))
    done = subprocess.run(
        [OBSFLOW, *args, "--stop-when-idle", "2s"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **ACK_WAIT},
    )
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(summary.read_text())
    assert doc["balanced"], doc
    return doc


def view_rows(store: Path) -> pd.DataFrame:
    view = reads.read_view(Store(str(store)), "live_1s").to_pandas().drop(columns="run")
    return view.sort_values(["source", "window_start"]).reset_index(drop=True)


def late_readings(store: Path) -> list[tuple[str, int]]:
    late = reads.read_late(Store(str(store)), "live_1s").to_pandas()
    return sorted(zip(late["source"], late["time"].astype("int64"), strict=True))


def assert_same_views(store: Path, oracle: Path, frame: pd.DataFrame) -> None:
    """Every view row and late reading of ``store`` as in ``oracle`` (the sums of a window may
    be added in another order: 1e-12)."""
    got, want = view_rows(store), view_rows(oracle)
    assert (
        len(want)
        == frame[frame["value"] >= 0]
        .assign(w=frame["time"] // SECOND)
        .groupby(["source", "w"])
        .ngroups
    )
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12)
    stale = frame[frame["value"] < 0]
    expected = sorted(zip(stale["source"], stale["time"], strict=True))
    assert late_readings(oracle) == expected  # the hours-late ones, and nothing else
    assert late_readings(store) == expected


def test_a_session_killed_five_times_ends_with_the_views_of_one_never_interrupted(
    broker: Broker, tmp_path: Path
) -> None:
    """Five kills, each at a polled moment (a new commit seen, then 0 to 600 ms later: in the
    commit's completion, the acknowledgement, a fetch, a cycle), each resumed by the same
    command; then the capture is exact and the views and late readings are those of one
    uninterrupted session over the same messages."""
    frame, messages = readings(seed=30)
    subscribe(broker, "killed", "whole")
    publish_all(broker, messages)
    views = tmp_path / "views.toml"
    views.write_text(VIEWS)
    store, oracle = tmp_path / "store", tmp_path / "oracle"

    args = session(broker, store, "killed", "--views", str(views), "-q", "--stop-when-idle", "30s")
    for delay in KILL_DELAYS:
        before = commit_count(store)
        proc = obsflow(*args)
        wait_for(lambda b=before: commit_count(store) > b, 120, "no new commit after a start")
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    captured = reads.read_capture(Store(str(store)), "live").num_rows
    assert 0 < captured < len(frame), "the kills did not all come mid-stream"
    # (a commit the last kill left uncompleted has no summary yet: completed here, as the
    # next session would first thing)
    commits.finish_pending(Store(str(store)), "live")
    committed_input = sum(
        Store(str(store)).read_json(layout.run_summary(c.run))["input"]
        for c in commits.read_log(Store(str(store)), "live")
    )
    doc = finish(broker, store, "killed", views)
    finish(broker, oracle, "whole", views)

    assert_captured_once(store, frame)
    assert_captured_once(oracle, frame)
    assert_same_views(store, oracle, frame)
    # Where the last commit stopped is recorded with it (MQTT has no positions to record).
    snap = Store(str(store))
    holder_token, holder = sessions.holder_of(snap, "live")
    assert holder_token
    assert holder is None
    # Resumed at the recorded positions: the last session read exactly what no commit held
    # (MQTT, without positions, gets again what was committed and not acknowledged too).
    published = sum(len(m) for m in messages)
    if broker.kind == "mqtt":
        assert doc["input"] >= published - committed_input
    else:
        assert doc["input"] == published - committed_input


def test_a_second_session_is_refused_in_one_line_or_waits_for_the_first(
    broker: Broker, tmp_path: Path
) -> None:
    frame, messages = readings(seed=31, per_source=500)
    subscribe(broker, "obsflow")
    views = tmp_path / "views.toml"
    views.write_text(VIEWS)
    store = tmp_path / "store"
    first = obsflow(*session(broker, store, "obsflow", "--views", str(views), "-q"))
    wait_for(lambda: sessions.holder_of(Store(str(store)), "live")[1] is not None, 60, "no hold")

    second = subprocess.run(
        [OBSFLOW, *session(broker, store, "obsflow", "--stop-when-idle", "1s")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **ACK_WAIT},
    )
    assert second.returncode != 0
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert "capture 'live' is held by live session" in lines[0]
    assert f"pid {first.pid}" in lines[0]
    assert "--wait" in lines[0]

    summary, said = tmp_path / "second.json", tmp_path / "second.err"
    args = session(broker, store, "obsflow", "--wait", "--stop-when-idle", "2s")
    with said.open("w") as err_file:
        waiting = subprocess.Popen(
            [OBSFLOW, *args, "--summary", str(summary)],
            stderr=err_file,
            text=True,
            env={**os.environ, **ACK_WAIT},
        )
    wait_for(lambda: "waiting for it to end" in said.read_text(), 60, "it did not wait")
    publish_all(broker, messages[: len(messages) // 2])
    wait_for(lambda: commit_count(store) >= 1, 60, "the first session committed nothing")
    first.send_signal(signal.SIGTERM)  # it finishes its cycle and stops
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    publish_all(broker, messages[len(messages) // 2 :])
    waiting.wait(timeout=300)
    assert waiting.returncode == 0, said.read_text()
    assert json.loads(summary.read_text())["balanced"]
    assert_captured_once(store, frame)
    # In order, each reading once: nothing late but the hours-late ones.
    stale = frame[frame["value"] < 0]
    assert late_readings(store) == sorted(zip(stale["source"], stale["time"], strict=True))


def test_a_session_paused_past_its_lease_is_fenced_and_the_new_holder_reads_in_order(
    tmp_path: Path,
) -> None:
    """SIGSTOP a NATS session mid-stream for longer than its lease: a second session takes the
    capture over and reads on from the last commit; the first, continued, commits nothing of
    what it held and stops in one line; the views are those of one uninterrupted session."""
    with running("nats", tmp_path) as broker:
        frame, messages = readings(seed=32)
        publish_all(broker, messages)
        views = tmp_path / "views.toml"
        views.write_text(VIEWS)
        store, oracle = tmp_path / "store", tmp_path / "oracle"
        lease = {"OBSFLOW_SESSION_LEASE_SECONDS": "2"}
        args = session(broker, store, "paused", "--views", str(views), "-q")
        env = {**os.environ, **ACK_WAIT, **lease}
        paused = subprocess.Popen([OBSFLOW, *args], stderr=subprocess.PIPE, text=True, env=env)
        wait_for(lambda: commit_count(store) >= 2, 120, "no commit")
        os.kill(paused.pid, signal.SIGSTOP)
        stopped_at = commit_count(store)
        with mock.patch.dict(os.environ, lease):
            # Refused while its lease runs (it is alive: renewed within 2 s)...
            _, holder = sessions.holder_of(Store(str(store)), "live")
            assert holder is not None
            assert holder.pid == paused.pid
            wait_for(lambda: not holder_alive(store), 30, "the lease never ran out")
            doc = finish(broker, store, "paused", views)  # ...taken over once it ran out
        assert doc["input"] < len(frame), "the new holder read from the start again"
        assert commit_count(store) > stopped_at
        os.kill(paused.pid, signal.SIGCONT)
        _, err = paused.communicate(timeout=120)
        assert paused.returncode != 0
        assert "taken over by another live session" in err, err
        assert len(err.strip().splitlines()) == 1, err
        finish(broker, oracle, "whole", views)
        assert_captured_once(store, frame)
        assert_same_views(store, oracle, frame)


def holder_alive(store: Path) -> bool:
    _, holder = sessions.holder_of(Store(str(store)), "live")
    return holder is not None and holder.alive(time.time_ns())
