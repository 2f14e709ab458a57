"""The window operator: one ``stateful_batch`` step per view over the captured readings.

Input: ``("0003", (3, readings))`` items, keyed by capture partition (all series of a source
live in one partition, so each partition's windows are independent). Output: view rows to
``<store>/views/<name>/``, late readings to ``<store>/late/<name>/``, and count deltas.
Pure event time: the kernel (``obsflow.flows.windows``) never reads the wall clock.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterable
from dataclasses import dataclass

import bytewax.operators as op
import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from obsflow.connectors.sinks import ChunkSink
from obsflow.connectors.store import Store
from obsflow.connectors.views import ensure_view, state_path
from obsflow.flows.summary import Counts
from obsflow.flows.viewdef import ViewDef
from obsflow.flows.windows import WindowKernel

PartTable = tuple[int, pa.Table]
ViewOut = tuple[str, pa.Table]  # ("rows" | "late", table)


@dataclass
class ViewState:
    part: int
    kernel: WindowKernel


@dataclass(frozen=True)
class ViewTarget:
    """Where a view's outputs go. Ingest appends to the live view and continues its per-series
    state; a replay writes a fresh view into a staging folder that is swapped in on success."""

    views_root: str = "views"
    late_root: str = "late"
    restore: bool = True

    @classmethod
    def staging(cls, run_id: str) -> ViewTarget:
        return cls(f"staging/{run_id}/views", f"staging/{run_id}/late", restore=False)


class ViewLogic(StatefulBatchLogic[PartTable, ViewOut, ViewState]):
    """Windows of one view over one capture partition."""

    def __init__(
        self,
        store: Store,
        view: ViewDef,
        lineage: dict[str, str],
        target: ViewTarget,
        resume: ViewState | None,
    ) -> None:
        self.store, self.view, self.lineage, self.target = store, view, lineage, target
        self.state = resume

    def _start(self, part: int) -> ViewState:
        kernel = WindowKernel(self.view)
        rel = state_path(self.view.name, part, self.target.views_root)
        if self.target.restore and self.store.exists(rel):
            kernel.restore_series(pq.read_table(io.BytesIO(self.store.read_bytes(rel))))
        return ViewState(part, kernel)

    def _label(self, rows: pa.Table) -> pa.Table:
        for key, value in self.lineage.items():
            rows = rows.append_column(key, pa.repeat(value, rows.num_rows).cast(pa.string()))
        return rows

    def on_batch(self, values: list[PartTable]) -> tuple[Iterable[ViewOut], bool]:
        if self.state is None:
            self.state = self._start(values[0][0])
        out: list[ViewOut] = []
        for _, table in values:
            rows, late = self.state.kernel.process(table)
            if rows.num_rows:
                out.append(("rows", self._label(rows)))
            if late.num_rows:
                out.append(("late", late))
        return out, self.RETAIN

    def on_eof(self) -> tuple[Iterable[ViewOut], bool]:
        if self.state is None:
            return [], self.RETAIN
        rows = self.state.kernel.finish()
        buf = io.BytesIO()
        pq.write_table(self.state.kernel.series_state(), buf)
        rel = state_path(self.view.name, self.state.part, self.target.views_root)
        self.store.write_bytes(rel, buf.getvalue())
        return ([("rows", self._label(rows))] if rows.num_rows else []), self.RETAIN

    def snapshot(self) -> ViewState:
        assert self.state is not None
        return copy.deepcopy(self.state)


def add_view(
    captured: Stream[tuple[str, PartTable]],
    view: ViewDef,
    *,
    store: Store,
    capture: str,
    run_id: str,
    partitions: int,
    target: ViewTarget = ViewTarget(),
) -> Stream[Counts]:
    """Window ``captured`` readings into ``view``; write rows and late readings; return counts."""
    if target.restore:  # appending to the live view: its definition must not have changed
        ensure_view(store, view.name, view.definition, view.hash, capture)
    lineage = {"capture": capture, "view_hash": view.hash}
    name = view.name
    out = op.stateful_batch(
        f"window_{name}",
        captured,
        lambda s: ViewLogic(store, view, lineage, target, s),
    )
    # ("0003", ("rows" | "late", table))
    rows = op.filter_map(
        f"take_rows_{name}", out, lambda kv: (kv[0], kv[1][1]) if kv[1][0] == "rows" else None
    )
    late = op.filter_map(
        f"take_late_{name}",
        out,
        lambda kv: (kv[0], _late_rows(kv[1][1], name)) if kv[1][0] == "late" else None,
    )
    views_sink = ChunkSink(store, f"{target.views_root}/{name}", run_id, partitions=partitions)
    op.output(f"write_view_{name}", rows, views_sink)
    op.output(f"write_late_{name}", late, ChunkSink(store, f"{target.late_root}/{name}", run_id))
    return op.map(f"count_{name}", out, lambda kv: _count(name, kv[1]))


def _late_rows(table: pa.Table, view: str) -> pa.Table:
    table = table.append_column("view", pa.repeat(view, table.num_rows).cast(pa.string()))
    return table.append_column("reason", pa.repeat("late", table.num_rows).cast(pa.string()))


def _count(view: str, item: ViewOut) -> Counts:
    kind, table = item
    if kind == "rows":
        return Counts(view_rows={view: table.num_rows})
    return Counts(late={view: table.num_rows})
