"""Run accounting: counts that every step reports, merged into one run summary.

Every run must add up: ``input == accepted + rejected + duplicates``. Steps emit ``Counts``
deltas; ``summarize`` folds them on one key (so one worker sees them all), prints progress on
stderr, and at end of input hands the totals to the run's finish (``flows.finish``), which
commits the run and writes ``<store>/runs/<run>.json``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import StatefulLogic
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

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
        )

    @property
    def balanced(self) -> bool:
        return self.input == self.accepted + self.rejected + self.duplicates


@dataclass
class SummaryState:
    counts: Counts = field(default_factory=Counts)
    started: float = field(default_factory=time.monotonic)
    last_print: float = field(default_factory=time.monotonic)  # first line after `every`


def fold_counts(
    state: SummaryState | None,
    delta: Counts,
    *,
    label: str,
    progress: bool,
    total: int | None = None,
    every: float = 2.0,
) -> tuple[SummaryState, Counts]:
    """Add a delta; print a progress line at most every ``every`` seconds of wall time."""
    state = state or SummaryState()
    state.counts = state.counts + delta
    now = time.monotonic()
    if progress and now - state.last_print >= every:
        state.last_print = now
        c = state.counts
        rate = c.input / max(now - state.started, 1e-9)
        eta = ""
        if total:
            left = max(total - c.input, 0) / max(rate, 1e-9)
            eta = f" · {min(c.input / total, 1):.0%} · ETA {left:,.0f} s"
        print(
            f"[{label}] {c.input:,} read · {c.accepted:,} accepted · {c.rejected:,} rejected"
            f" · {c.duplicates:,} duplicates · {rate:,.0f} readings/s{eta}",
            file=sys.stderr,
            flush=True,
        )
    return state, state.counts


def summary_dict(counts: Counts, **extra: Any) -> dict[str, Any]:
    """The JSON run summary."""
    return {
        "input": counts.input,
        "accepted": counts.accepted,
        "rejected": counts.rejected,
        "duplicates": counts.duplicates,
        "derived": counts.derived,
        "payloads": counts.payloads,
        "balanced": counts.balanced,
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


class SummarizeLogic(StatefulLogic[Counts, Counts, SummaryState]):
    """Folds all count deltas; emits the total once, at end of input."""

    def __init__(
        self, label: str, progress: bool, total: int | None, resume: SummaryState | None
    ) -> None:
        self.label, self.progress, self.total = label, progress, total
        self.state = resume or SummaryState()

    def on_item(self, value: Counts) -> tuple[Iterable[Counts], bool]:
        self.state, _ = fold_counts(
            self.state, value, label=self.label, progress=self.progress, total=self.total
        )
        return [], self.RETAIN

    def on_eof(self) -> tuple[Iterable[Counts], bool]:
        return [self.state.counts], self.RETAIN

    def snapshot(self) -> SummaryState:
        return SummaryState(self.state.counts, self.state.started, self.state.last_print)


def add_summary(
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
    start = op.input("start_counts", flow_counts.flow(), _StartSource())
    keyed = op.key_on(
        "key_counts", op.merge("with_start", start, flow_counts), lambda _c: SUMMARY_KEY
    )
    totals = op.stateful("summarize", keyed, lambda s: SummarizeLogic(label, progress, total, s))
    sink = finish if isinstance(finish, Sink) else FinishSink(finish)
    op.output("finish_run", totals, sink)
