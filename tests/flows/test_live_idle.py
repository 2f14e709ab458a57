"""Idle closing and ``stop_when_idle`` of a live session, on an injected clock.

A scripted broker client stands in for a broker: each fetch waits its whole timeout (the fake
clock moves by it) and returns the messages the script holds for that fetch. Cycles are real
ingest runs into a local store; only time is fake, so every close lands on an exact tick.
"""

from __future__ import annotations

import json
from pathlib import Path

from obsflow.connectors.datasets import reads
from obsflow.connectors.formats.messages import Message
from obsflow.connectors.storage import commits
from obsflow.connectors.storage.store import Store
from obsflow.flows.kernels.viewdef import ViewDef
from obsflow.flows.pipeline.ingest import IngestConfig
from obsflow.flows.pipeline.live import LiveConfig, LiveResult, run_live

T0 = 1_800_000_000 * 10**9  # event time of the first reading, ns


class ScriptedBroker:
    """Fetch ``k`` (1, 2, ...) returns one reading of each source in ``script[k]``, at event
    time k seconds; the clock advances by the fetch's timeout."""

    def __init__(self, script: dict[int, tuple[str, ...]]) -> None:
        self.script = script
        self.now = 0.0
        self.fetches = 0
        self.acked = 0

    def clock(self) -> float:
        return self.now

    def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        self.fetches += 1
        self.now += timeout
        k = self.fetches
        return [
            Message(
                json.dumps({"source": s, "time": T0 + k * 10**9, "value": float(k)}).encode(),
                f"obs.{s}",
                T0 + k * 10**9,
            )
            for s in self.script.get(k, ())
        ]

    def ack(self, messages: list[Message]) -> None:
        self.acked += len(messages)

    def drained(self) -> bool:
        return True

    def close(self) -> None:
        pass


def test_quiet_sources_are_closed_and_the_session_stops_on_exact_ticks(tmp_path: Path) -> None:
    """One fetch a second: a and b report at 1..3, then only a until 6. With an idle timeout
    of 2 s, b is closed at 5 (2 s after its last reading at 3) and a at 8; with
    ``stop_when_idle`` 4 s the session stops at 10, 4 s after the last message."""
    store = tmp_path / "store"
    view = ViewDef("live_1s", "tumbling", size=10**9, aggregates=("count",))
    ingest = IngestConfig(
        inputs=("nats://127.0.0.1:4222",),
        store=str(store),
        capture="live",
        views=(view,),
        progress=False,
    )
    config = LiveConfig(ingest=ingest, flush_interval=1.0, idle_timeout=2.0, stop_when_idle=4.0)
    broker = ScriptedBroker({k: ("a", "b") if k <= 3 else ("a",) for k in range(1, 7)})
    closed_at: list[float] = []

    def on_cycle(result: LiveResult) -> None:
        closed_at.extend([broker.now] * (len(result.closes) - len(closed_at)))

    result = run_live(config, lambda _positions: broker, on_cycle=on_cycle, clock=broker.clock)

    assert closed_at == [5.0, 8.0]
    assert result.stopped == "no message for 4 s"
    assert (broker.fetches, result.seconds) == (10, 10.0)
    assert broker.acked == 9
    log = commits.read_log(Store(str(store)), "live")
    closes = [e for e in log if e.kind == "close"]
    assert [c.close[0]["sources"] for c in closes] == [["b"], ["a"]]
    rows = reads.read_view(Store(str(store)), "live_1s").to_pandas()
    assert rows["final"].all()  # both went quiet: every window closed
    assert sorted(rows.groupby("source")["count"].sum().items()) == [("a", 6), ("b", 3)]
