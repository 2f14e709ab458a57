"""Run accounting: counts that every step reports, merged into one run summary.

Every run must add up: ``input == accepted + rejected + duplicates``. Steps emit ``Counts``
deltas; ``summarize`` folds them on one key (so one worker sees them all), prints progress on
stderr, and at end of input hands the totals to the run's finish (``flows.pipeline.finish``), which
commits the run and writes ``<store>/runs/<run>.json``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import StatefulLogic
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

from obsflow.connectors.datasets.capture import StateRef
from obsflow.connectors.storage.tables import DataFile

SUMMARY_KEY = "run"


def _add_maps(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


@dataclass(frozen=True)
class Counts:
    """Additive counters of a run (or a delta of one)."""

    input: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    late: dict[str, int] = field(default_factory=dict)
    view_rows: dict[str, int] = field(default_factory=dict)  # final rows written, per view
    reasons: dict[str, int] = field(default_factory=dict)
    derived: int = 0  # readings derived from payloads (also counted in input)
    payloads: int = 0  # payloads offloaded to the payload store (or kept inline)
    provisional: dict[str, int] = field(default_factory=dict)  # open windows' rows, per view
    origins: dict[str, int] = field(default_factory=dict)  # readings accepted, per input
    epoch_units: dict[str, int] = field(default_factory=dict)  # inferred unit -> readings
    records: int = 0  # input records read (file rows and lines); a wide one holds readings
    documents: int = 0  # Bluesky run and asset documents stored (metadata, not records)
    # What the run wrote for its commit: files (DataFile) and where partitions' state now is
    # (StateRef), by key; a later report of the same key replaces an earlier one.
    outputs: dict[str, Any] = field(default_factory=dict)

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.input + other.input,
            self.accepted + other.accepted,
            self.rejected + other.rejected,
            self.duplicates + other.duplicates,
            _add_maps(self.late, other.late),
            _add_maps(self.view_rows, other.view_rows),
            _add_maps(self.reasons, other.reasons),
            self.derived + other.derived,
            self.payloads + other.payloads,
            _add_maps(self.provisional, other.provisional),
            _add_maps(self.origins, other.origins),
            _add_maps(self.epoch_units, other.epoch_units),
            self.records + other.records,
            self.documents + other.documents,
            {**self.outputs, **other.outputs} if other.outputs else self.outputs,
        )

    @property
    def balanced(self) -> bool:
        return self.input == self.accepted + self.rejected + self.duplicates


def wrote(*items: DataFile | StateRef) -> Counts:
    """Counts that report files written and partition state saved (``Counts.outputs``)."""
    out: dict[str, Any] = {}
    for item in items:
        key = (
            f"file:{item.path}" if isinstance(item, DataFile) else f"state:{item.table}:{item.part}"
        )
        out[key] = item
    return Counts(outputs=out)


class Progress:
    """Progress lines on stderr at a steady interval of wall time: counts named as in the run
    summary, the rate since the previous line, and (with a known ``total``) a percentage and
    an ETA. A run shorter than one interval prints none. ``clock`` (seconds) times the lines
    and the rates."""

    def __init__(
        self,
        label: str,
        total: int | None,
        every: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.every, self.clock = label, total, every, clock
        self.started = self.last = clock()
        self.last_input: int | None = None  # counts at the previous line (None: no line yet)
        self.lines = 0

    def due(self) -> datetime:
        """When the next line is due."""
        wait = max(self.last + self.every - self.clock(), 0.0)
        return datetime.now(UTC) + timedelta(seconds=wait)

    def line(self, c: Counts, *, final: bool = False) -> str:
        now = self.clock()
        if final:  # the totals the summary will report, and how long reading them took
            tail = f" · all read in {now - self.started:,.1f} s, committing"
        else:
            since = self.last_input if self.last_input is not None else 0
            rate = (c.input - since) / max(now - self.last, 1e-9)
            tail = f" · {rate:,.0f} readings/s"
            if self.total:
                left = max(self.total - c.input, 0) / max(c.input / (now - self.started), 1e-9)
                tail += f" · {min(c.input / self.total, 1):.0%} · ETA {left:,.0f} s"
        self.last, self.last_input = now, c.input
        self.lines += 1
        return (
            f"[{self.label}] {c.input:,} input · {c.accepted:,} accepted · {c.rejected:,} "
            f"rejected · {c.duplicates:,} duplicates{tail}"
        )


def summary_dict(counts: Counts, **extra: Any) -> dict[str, Any]:
    """The JSON run summary."""
    return {
        "input": counts.input,
        "accepted": counts.accepted,
        "rejected": counts.rejected,
        "duplicates": counts.duplicates,
        "records": counts.records,
        "derived": counts.derived,
        "payloads": counts.payloads,
        "balanced": counts.balanced,
        **({"documents": counts.documents} if counts.documents else {}),
        "rejected_by_reason": dict(sorted(counts.reasons.items())),
        "epoch_units": dict(sorted(counts.epoch_units.items())),
        "late": dict(sorted(counts.late.items())),
        "views": {
            k: {"rows": counts.view_rows.get(k, 0), "provisional": counts.provisional.get(k, 0)}
            for k in sorted({*counts.view_rows, *counts.provisional})
        },
        **extra,
    }


class _FinishPartition(StatelessSinkPartition[tuple[str, Counts]]):
    def __init__(self, finish: Callable[[Counts], Any]) -> None:
        self._finish = finish

    def write_batch(self, items: list[tuple[str, Counts]]) -> None:
        for _key, counts in items:
            self._finish(counts)


class FinishSink(DynamicSink[tuple[str, Counts]]):
    """Hands the run's final counts to ``finish`` (which commits the run and writes its
    summary): it arrives once, after every step upstream has written all it had."""

    def __init__(self, finish: Callable[[Counts], Any]) -> None:
        self.finish = finish

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FinishPartition:
        return _FinishPartition(self.finish)


class _Start(StatefulSourcePartition[Counts, bool]):
    def __init__(self, done: bool) -> None:
        self._done = done

    def next_batch(self) -> list[Counts]:
        if self._done:
            raise StopIteration
        self._done = True
        return [Counts()]

    def snapshot(self) -> bool:
        return self._done


class _StartSource(FixedPartitionedSource[Counts, bool]):
    """One zero ``Counts``, from one worker."""

    def list_parts(self) -> list[str]:
        return ["start"]

    def build_part(self, step_id: str, for_part: str, resume_state: bool | None) -> _Start:
        return _Start(bool(resume_state))


class SummarizeLogic(StatefulLogic[Counts, Counts, Counts]):
    """Folds all count deltas; emits the total once, at end of input. Progress lines come
    from ``on_notify``, so they keep their interval between batches too."""

    def __init__(
        self, label: str, progress: bool, total: int | None, resume: Counts | None
    ) -> None:
        self.counts = resume or Counts()
        self.progress = Progress(label, total) if progress else None

    def on_item(self, value: Counts) -> tuple[Iterable[Counts], bool]:
        self.counts = self.counts + value
        return [], self.RETAIN

    def notify_at(self) -> datetime | None:
        return self.progress.due() if self.progress else None

    def on_notify(self) -> tuple[Iterable[Counts], bool]:
        if self.progress:
            _say(self.progress.line(self.counts))
        return [], self.RETAIN

    def on_eof(self) -> tuple[Iterable[Counts], bool]:
        if self.progress and self.progress.lines:  # the last line holds the summary's counts
            _say(self.progress.line(self.counts, final=True))
        return [self.counts], self.RETAIN

    def snapshot(self) -> Counts:
        return self.counts


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@operator
def summarize(
    step_id: str,
    flow_counts: Stream[Counts],
    label: str,
    progress: bool,
    finish: Callable[[Counts], Any] | Sink[Any],
    total: int | None = None,
) -> None:
    """Fold count deltas into the run's totals and hand them to ``finish`` at the end (a
    ``Sink`` receives ``("run", Counts)`` instead). ``total`` input rows, if known, gives
    progress a percentage and an ETA."""
    # A zero to start from: a run that reads nothing (a header-only file) still finishes.
    start = op.input("start", flow_counts.flow(), _StartSource())
    keyed = op.key_on("key", op.merge("with_start", start, flow_counts), lambda _c: SUMMARY_KEY)
    totals = op.stateful("totals", keyed, lambda s: SummarizeLogic(label, progress, total, s))
    sink = finish if isinstance(finish, Sink) else FinishSink(finish)
    op.output("finish_run", totals, sink)
