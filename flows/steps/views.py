"""The window operator: one ``stateful_batch`` step per view over the captured readings.

Input: ``("0003", (3, readings | Boundary))`` items, keyed by capture partition (all series of
a source live in one partition, so each partition's windows are independent). The step owns
the partition's window kernel (``flows.kernels.windows``) and writes the view rows itself
(``connectors.datasets.views.SegmentWriter``, files for the run's commit), so that what it snapshots
is exactly what it wrote. Output: ``("late", readings)`` for the late-readings writer and
``("counts", Counts)`` with the files written and, at the end, the rows and the partition's
saved state. Pure event time: nothing here reads the wall clock.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
import numpy as np
import pyarrow as pa
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from obsflow.connectors.datasets.capture_source import Boundary
from obsflow.connectors.datasets.views import (
    Scope,
    SegmentWriter,
    ViewBase,
    WriterState,
    load_state,
    save_state,
    segment_span,
)
from obsflow.connectors.storage import layout
from obsflow.connectors.storage.store import Store
from obsflow.flows.kernels.viewdef import ViewDef
from obsflow.flows.kernels.windows import WindowKernel
from obsflow.flows.steps.logs import write_log
from obsflow.flows.steps.summary import Counts, wrote

FLUSH_ROWS = 200_000
"""Final rows a view step holds before it writes them (uncommitted) without a snapshot."""
PartItem = tuple[int, pa.Table | Boundary]
ViewOut = tuple[str, pa.Table | Counts]  # ("late", readings) or ("counts", Counts)


@dataclass(frozen=True)
class ViewTarget:
    """How a view step writes. Ingest continues the committed view (its rows and window
    state) and ends the run at end of input. A replay rebuilds it: ``fresh`` (whole, from
    nothing), or only the rows inside ``scope`` (a filtered replay, which keeps the view's
    window state and late readings as they are); its boundaries carry the runs' ends."""

    fresh: bool = False
    scope: Scope | None = None
    end_at_eof: bool = True

    @property
    def keeps_state(self) -> bool:
        return self.scope is None


@dataclass
class ViewState:
    part: int
    kernel: WindowKernel
    writer: WriterState


class ViewLogic(StatefulBatchLogic[PartItem, ViewOut, ViewState]):
    """Windows of one view over one capture partition."""

    def __init__(
        self,
        store: Store,
        view: ViewDef,
        run: str,
        lineage: dict[str, str],
        target: ViewTarget,
        resume: ViewState | None,
        *,
        base: ViewBase,
        durable: bool = True,
    ) -> None:
        self.store, self.view, self.run, self.lineage, self.target = (
            store,
            view,
            run,
            lineage,
            target,
        )
        self.durable, self.base = durable, base
        self.state: ViewState | None = None
        self.writer: SegmentWriter | None = None
        if resume is not None:
            self._open(resume.part, resume.kernel, resume.writer)

    def _open(self, part: int, kernel: WindowKernel, writer: WriterState | None) -> None:
        self.writer = SegmentWriter(
            self.store,
            self.view.name,
            part,
            self.run,
            span=segment_span(self.view.definition),
            schema=layout.view_schema(self.view.aggregates),
            lineage=self.lineage,
            fresh=self.target.fresh,
            scope=self.target.scope,
            state=writer,
            base=self.base.files.get(part, {}),
        )
        self.state = ViewState(part, kernel, self.writer.state)

    def _start(self, part: int) -> None:
        committed = (
            {}
            if self.target.fresh
            else load_state(self.store, self.view.name, part, self.base.state.get(part))
        )
        kernel = (
            WindowKernel.from_state(self.view, committed)
            if committed and self.target.keeps_state
            else WindowKernel(self.view)
        )
        self._open(part, kernel, None)
        assert self.writer is not None
        if committed:  # its open windows are the provisional rows the view holds now
            starts = committed["open"].column("start").to_numpy() if "open" in committed else []
            self.writer.note_base_provisional(np.asarray(starts, np.int64))

    def on_batch(self, values: list[PartItem]) -> tuple[Iterable[ViewOut], bool]:
        if self.state is None:
            self._start(values[0][0])
        assert self.state is not None
        assert self.writer is not None
        kernel, out = self.state.kernel, []
        for _, item in values:
            if isinstance(item, Boundary):
                self._boundary(item)
                continue
            rows, late = kernel.process(item)
            self.writer.add_final(rows)
            if late.num_rows and self.target.keeps_state:
                out.append(("late", late))
        if self.writer.pending >= FLUSH_ROWS:  # a long run's memory stays bounded
            self.writer.flush()
        files = self.writer.take_written()
        if files:
            out.append(("counts", wrote(*files)))
        return out, self.RETAIN

    def _boundary(self, b: Boundary) -> None:
        """Repeat what a commit declared: the end of a run, windows closed by hand."""
        assert self.state is not None
        assert self.writer is not None
        kernel = self.state.kernel
        if b.end_of_run:
            self.writer.add_final(kernel.finalize())
        for event in b.close:
            if event.get("view") not in (None, self.view.name):
                continue
            sources = event.get("sources")
            mask = None
            if sources:
                mask = np.array([s in sources for s, _ in kernel.names], dtype=bool)
            self.writer.add_final(kernel.close(mask, event.get("until")))

    def on_eof(self) -> tuple[Iterable[ViewOut], bool]:
        if self.state is None or self.writer is None:
            return [], self.RETAIN
        kernel = self.state.kernel
        if self.target.end_at_eof:
            self.writer.add_final(kernel.finalize())
        self.writer.flush(provisional=kernel.open_rows())
        done: list[Any] = self.writer.take_written()
        if self.target.keeps_state:
            part = self.state.part
            done.append(save_state(self.store, self.run, self.view.name, part, kernel.state()))
        counts = Counts(
            view_rows={self.view.name: self.writer.state.rows},
            provisional={self.view.name: self.writer.state.provisional},
        ) + wrote(*done)
        return [("counts", counts)], self.RETAIN

    def snapshot(self) -> ViewState:
        assert self.state is not None
        assert self.writer is not None
        if not self.durable:
            # Bytewax asks at every epoch, recovery or not; without recovery nothing resumes
            # from a snapshot, and flushing would only cut the view into small objects.
            return self.state
        self.writer.flush()  # rows up to here are written: the snapshot may rely on them
        self.writer.wait()
        return copy.deepcopy(self.state)


@operator
def window_view(
    step_id: str,
    captured: Stream[tuple[str, PartItem]],
    view: ViewDef,
    *,
    store: Store,
    capture: str,
    run_id: str,
    base: ViewBase,
    target: ViewTarget = ViewTarget(),
    durable: bool = True,
) -> Stream[Counts]:
    """Window ``captured`` readings into ``view``; write rows and late readings; return counts.
    ``base``: the view version the run starts from; ``durable``: snapshots are resumed from (a
    run with recovery)."""
    lineage = {"capture": capture, "view_hash": view.hash}
    name = view.name
    out = op.stateful_batch(
        "window",
        captured,
        lambda s: ViewLogic(store, view, run_id, lineage, target, s, base=base, durable=durable),
    )
    # ("0003", ("late", readings) | ("counts", Counts))
    late = op.filter_map(
        "take_late",
        out,
        lambda kv: (kv[0], _late_rows(kv[1][1], name)) if kv[1][0] == "late" else None,
    )
    late_counts = write_log(
        "late_log",
        late,
        store,
        layout.late_dir(name),
        run_id,
        layout.LATE_SCHEMA,
        lambda n: Counts(late={name: n}),
    )
    counts = op.filter_map(
        "take_counts", out, lambda kv: kv[1][1] if kv[1][0] == "counts" else None
    )
    return op.merge("merge_counts", counts, late_counts)


def _late_rows(table: pa.Table | Counts, view: str) -> pa.Table:
    assert isinstance(table, pa.Table)
    n = table.num_rows
    table = table.append_column("view", pa.repeat(view, n).cast(pa.string()))
    return table.append_column("reason", pa.repeat("late", n).cast(pa.string()))
