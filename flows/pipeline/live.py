"""Live ingest: read a broker until stopped, as a sequence of short committed runs.

A live session first holds its capture (``connectors.datasets.sessions``): one session at a
time, the next refused in one line (or waiting, ``wait``). It then connects to its broker at
the positions the capture's commits recorded, takes messages for up to ``flush_interval`` (or
``max_messages``), runs them through the ingest dataflow as one ordinary run — a *cycle*, with
its own run id, commit and summary — and acknowledges the messages only after that commit.
Each commit records, per source partition, the next broker position (a JetStream stream
sequence, a Kafka offset), and is fenced by the session's hold. A session killed anywhere
resumes where its last commit stopped and reads on in the broker's order, so its views equal
those of a session that was never interrupted. MQTT records no position (the protocol has
none): a resumed session relies on the broker sending the unacknowledged messages again first,
in order (MQTT v5, 4.4 and 4.6), and identity deduplication drops what was committed twice.

Views carry over from cycle to cycle the way they carry over between any two runs (open
windows continue), so live rows equal a replay of the capture. A series that has been quiet
for ``idle_timeout`` of wall time has its open windows closed by a ``views close`` commit —
recorded in the capture's log, so that replay closes them at the same point.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from obsflow.connectors.batch import RawBatch
from obsflow.connectors.datasets import sessions
from obsflow.connectors.datasets.capture import new_run_id, planned_capture
from obsflow.connectors.datasets.channels import iso, record_channels, record_gaps
from obsflow.connectors.datasets.reads import read_capture
from obsflow.connectors.datasets.views import list_views
from obsflow.connectors.errors import ConfigError, cause_of
from obsflow.connectors.formats.messages import Message, check_format, decode
from obsflow.connectors.sources.bluesky.io import raw_batch
from obsflow.connectors.sources.brokers import BrokerClient, Monitoring
from obsflow.connectors.storage.commits import (
    ConcurrentWriterError,
    SessionLostError,
    finish_pending,
    last_commit,
)
from obsflow.connectors.storage.layout import COMMIT, capture_dir
from obsflow.connectors.storage.migrate import check_layout
from obsflow.connectors.storage.store import Store
from obsflow.connectors.waiting import poll
from obsflow.flows.pipeline import jobs
from obsflow.flows.pipeline.closing import close_view
from obsflow.flows.pipeline.ingest import IngestConfig
from obsflow.flows.steps.summary import Counts

CAPTURE_WAIT = 300.0
T = TypeVar("T")
Connect = Callable[[Callable[[str], int]], BrokerClient]
"""Connects a session's broker client, given where the capture stands on each source
partition (key -> the next position to read; 0: none recorded)."""


@dataclass(frozen=True)
class LiveConfig:
    """A live session: the broker, and the ingest every cycle runs (``ingest.inputs`` holds
    the broker URL; ``run_id`` is drawn anew for every cycle)."""

    ingest: IngestConfig
    fmt: str = "json"
    flush_interval: float = 1.0  # seconds: a cycle's longest wait for messages
    max_messages: int = 50_000  # a cycle's largest batch of messages
    idle_timeout: float | None = None  # seconds of wall time without readings from a source
    stop_when_idle: float | None = None  # seconds without any message: the session ends

    def __post_init__(self) -> None:
        check_format(self.fmt)
        if (self.fmt == "bluesky") != (self.ingest.format == "bluesky"):
            raise ConfigError("a Bluesky session reads its messages and its inputs as bluesky")
        if not self.flush_interval > 0:
            raise ConfigError("--flush-interval must be a positive duration")
        if self.max_messages < 1:
            raise ConfigError("--max-batch must be at least 1")
        for name in ("idle_timeout", "stop_when_idle"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive duration")

    @property
    def url(self) -> str:
        return self.ingest.inputs[0]


@dataclass
class LiveResult:
    """What a session did: its cycles' totals and summaries, and why it stopped."""

    session: str = field(default_factory=new_run_id)
    counts: Counts = field(default_factory=Counts)
    cycles: list[dict[str, Any]] = field(default_factory=list)
    closes: list[dict[str, Any]] = field(default_factory=list)  # idle closing commits
    stopped: str = ""
    seconds: float = 0.0
    # A client without a broker queue (EPICS, ``Monitoring``): what it could not see, and why
    # it refused what it did not capture.
    gaps: list[dict[str, Any]] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return self.counts.balanced


class _Batches(StatefulSourcePartition[RawBatch, None]):
    def __init__(self, batches: list[RawBatch]) -> None:
        self._batches = batches

    def next_batch(self) -> list[RawBatch]:
        if not self._batches:
            raise StopIteration
        return [self._batches.pop(0)]

    def snapshot(self) -> None:
        return None


class BatchesSource(FixedPartitionedSource[RawBatch, None]):
    """The raw batches of one cycle (already in memory), as one partition."""

    def __init__(self, batches: list[RawBatch]) -> None:
        self.batches = batches

    def list_parts(self) -> list[str]:
        return ["messages"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Batches:
        return _Batches(list(self.batches))


def run_live(
    config: LiveConfig,
    connect: Connect,
    *,
    workers: int = 1,
    wait: bool = False,
    stop: threading.Event | None = None,
    on_cycle: Callable[[LiveResult], None] | None = None,
    on_wait: Callable[[str], None] = lambda _m: None,
    clock: Callable[[], float] = time.monotonic,
) -> LiveResult:
    """Hold the capture, connect, and run cycles until ``stop`` is set, or no message came
    for ``stop_when_idle`` (see the module docstring).

    ``clock`` (seconds) is what idle closing and ``stop_when_idle`` measure quiet by, read
    once after each fetch."""
    stop = stop or threading.Event()
    result = LiveResult()
    ingest = config.ingest
    store = Store(ingest.store)
    check_layout(store)
    held = sessions.hold(
        store,
        ingest.capture,
        lambda: planned_capture(store, ingest.capture, ingest.partitions),
        session=result.session,
        broker=config.url,
        wait=wait,
        on_wait=on_wait,
    )
    started = last_message = clock()
    quiet: dict[str, float] = {}  # source -> wall time of its last reading (monotonic)
    offset = 0
    try:
        # A commit a killed session made and did not complete is completed first: the next
        # messages come after its positions, so what it holds (Bluesky descriptors in the
        # documents table, say) must be there before anything reads it.
        finish_pending(store, ingest.capture)
        client = connect(held.position)
    except BaseException:
        held.release()
        raise
    # Bluesky documents: one stream for the session, primed with the documents the capture
    # holds (the runs and descriptors of committed cycles, and of earlier sessions).
    bluesky = ingest.bluesky_input(store)
    documents = bluesky.stream() if bluesky else None
    monitor = Monitor(store, ingest.capture, result) if isinstance(client, Monitoring) else None
    try:
        while not stop.is_set():
            messages = client.fetch(config.max_messages, config.flush_interval)
            if monitor is not None:
                monitor.observe(client)  # type: ignore[arg-type]
            if held.lost.is_set():  # (its commits would be refused: stop before trying)
                raise SessionLostError(
                    f"capture {ingest.capture!r} was taken over by another live session"
                )
            now = clock()
            if messages:
                last_message = now
                if bluesky and documents:
                    taken = bluesky.messages(documents, [m.body for m in messages])
                    batch = raw_batch(documents, taken, config.url, offset)
                else:
                    spec, url = ingest.spec, config.url
                    batch = decode(messages, config.fmt, spec, origin=url, offset=offset)
                offset += batch.records
                cycle = replace(ingest, positions=positions_after(messages), fence=held.fence)
                done = run_cycle(cycle, batch, workers)
                client.ack(messages)  # only now: the cycle's readings are committed
                result.counts = result.counts + counts_of(done.summary)
                result.cycles.append(done.summary)
                if config.idle_timeout is not None:
                    for source in sources_of(batch, ingest.spec.column("source")):
                        quiet[source] = now
            if config.idle_timeout is not None:
                idle = sorted(s for s, t in quiet.items() if now - t >= config.idle_timeout)
                if idle:
                    result.closes += close_idle(ingest, idle, held.fence)
                    for source in idle:
                        del quiet[source]
            if on_cycle is not None:
                on_cycle(result)
            if (
                config.stop_when_idle is not None
                and now - last_message >= config.stop_when_idle
                and client.drained()  # not merely waiting for messages a killed run took
            ):
                result.stopped = f"no message for {config.stop_when_idle:g} s"
                break
        else:
            result.stopped = "stopped"
    except Exception as exc:
        lost = cause_of(exc, SessionLostError)  # (a cycle's commit raises it in the dataflow)
        if lost is None:
            raise
        _, holder = sessions.holder_of(store, ingest.capture)
        by = f" (now {holder.describe(time.time_ns())})" if holder else ""
        raise SessionLostError(
            f"{lost}{by}: live session {result.session} stops; its messages come to the new one"
        ) from None
    finally:
        result.seconds = clock() - started
        if monitor is not None:
            with contextlib.suppress(Exception):  # (what the session did counts more)
                monitor.observe(client, last=True)  # type: ignore[arg-type]
        client.close()
        held.release()
    return result


class Monitor:
    """Keeps what a ``Monitoring`` client tells: gaps (in the result and the store, where
    the page reads them), channel metadata (the store), refusals (the result). A session
    that follows another starts with a gap: what the IOCs posted in between is gone."""

    def __init__(self, store: Store, capture: str, result: LiveResult) -> None:
        self.store, self.capture, self.result = store, capture, result
        self.channels: dict[str, dict[str, Any]] = {}
        self.closed: list[dict[str, Any]] = []
        before = last_commit(store, capture_dir(capture), capture)
        if before is not None:
            # From the last reading committed (what a killed session held past it is gone).
            times = read_capture(
                store, capture, columns=["time"], filter=pc.field(COMMIT) == before.n
            )
            since = iso(pc.max(times.column("time")).value) if times.num_rows else before.created
            self.closed.append({"kind": "no session", "since": since, "until": iso(time.time_ns())})
            self._save([])

    def observe(self, client: Monitoring, *, last: bool = False) -> None:
        new = [
            {
                **g,
                "kind": "disconnected",
                "since": iso(g["since"]),
                "until": iso(g["until"]),
                "last_update": iso(g.get("last_update")),
            }
            for g in client.gaps()
        ]
        self.closed += new
        # (saved at the session's end: still disconnected then, so until its end — what
        # follows is the next session's "no session" gap)
        end = iso(time.time_ns())
        open_ = [
            {
                **g,
                "kind": "disconnected",
                "since": iso(g["since"]),
                "until": end,
                "open": True,
                "last_update": iso(g.get("last_update")),
            }
            for g in client.open_gaps()
        ]
        if new or (last and open_):
            self._save(open_ if last else [])
        channels = client.channels()
        if channels != self.channels:
            record_channels(self.store, self.capture, channels)
            self.channels = channels
        self.result.refused = client.refusals()

    def _save(self, open_: list[dict[str, Any]]) -> None:
        self.result.gaps = self.closed + open_
        record_gaps(self.store, self.capture, self.result.session, self.result.gaps)


def positions_after(messages: list[Message]) -> tuple[tuple[str, int], ...]:
    """Per source partition, the next position after ``messages`` (as ``txn`` entries of the
    capture's commit, ``sessions.POSITION_APP`` + the client's key)."""
    after: dict[str, int] = {}
    for m in messages:
        if m.position is not None:
            key, at = m.position
            after[key] = max(after.get(key, 0), at + 1)
    return tuple(sorted((sessions.POSITION_APP + k, v) for k, v in after.items()))


def run_cycle(ingest: IngestConfig, batch: RawBatch, workers: int) -> jobs.RunResult:
    """One cycle: an ordinary ingest run of the batch."""

    def once() -> jobs.RunResult:
        cycle = replace(ingest, run_id=new_run_id(), live=True, progress=False)
        return jobs.execute(cycle, workers=workers, source=BatchesSource([batch]))

    return waiting_for_the_capture(once)


def waiting_for_the_capture(job: Callable[[], T]) -> T:
    """Run ``job``; while another job holds the capture (a compaction, a ``views close``),
    wait for it and try again (up to ``CAPTURE_WAIT`` seconds)."""
    return poll(job, retry_on=ConcurrentWriterError, seconds=CAPTURE_WAIT, every=0.5)


def close_idle(
    config: IngestConfig, sources: list[str], fence: tuple[str, int] | None = None
) -> list[dict[str, Any]]:
    """Close the open windows of quiet sources in every view of the capture (one commit per
    view, which replay repeats at the same point)."""
    store = Store(config.store)
    views = [m["name"] for m in list_views(store) if m.get("capture") == config.capture]

    def close(view: str) -> dict[str, Any]:
        return waiting_for_the_capture(
            lambda: close_view(store, view, new_run_id(), sources=sources, fence=fence)
        )

    return [close(view) for view in views]


def sources_of(batch: RawBatch, column: str) -> list[str]:
    """The distinct sources of a batch's records (what idle tracking needs, columnar)."""
    if column not in batch.table.column_names or not batch.table.num_rows:
        return []
    values = pc.unique(batch.table.column(column).cast(pa.string()))
    return [str(v) for v in values.to_pylist() if v is not None]


def counts_of(summary: dict[str, Any]) -> Counts:
    """A cycle's counts from its run summary."""
    return Counts(
        input=summary["input"],
        accepted=summary["accepted"],
        rejected=summary["rejected"],
        duplicates=summary["duplicates"],
        late=dict(summary.get("late", {})),
        reasons=dict(summary.get("rejected_by_reason", {})),
        records=summary.get("records", 0),
        documents=summary.get("documents", 0),
    )


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT and SIGTERM set the event: the session finishes its cycle (commit, ack) and
    stops, keeping its open windows open."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()
        print(
            f"\nobsflow: {signal.Signals(signum).name}: finishing the current cycle, then stopping",
            file=sys.stderr,
            flush=True,
        )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
