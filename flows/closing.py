"""``obsflow views close``: declare data complete, so that open windows become final now.

A small job without a dataflow: for each partition of the view (or of the sources given), the
committed window state is loaded, the windows are closed (``WindowKernel.close``: the
watermark of those series is taken to be ``until``, or every open window ends), the rows are
rewritten in their home objects and the state is saved — all staged and committed as one
entry of the capture's log, which replay repeats at the same point of the capture's order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

from obsflow.connectors import commits, layout
from obsflow.connectors.capture import open_capture
from obsflow.connectors.commits import Lease
from obsflow.connectors.migrate import check_layout
from obsflow.connectors.partitions import partitions_of
from obsflow.connectors.store import Store
from obsflow.connectors.views import (
    SegmentWriter,
    load_state,
    read_view_doc,
    segment_span,
    stage_state,
)
from obsflow.flows.summary import Counts, summary_dict
from obsflow.flows.viewdef import ViewDef
from obsflow.flows.windows import WindowKernel


def close_view(
    store: Store,
    view: str,
    run: str,
    *,
    sources: list[str] | None = None,
    until: int | None = None,
) -> dict[str, Any]:
    """Close ``view``'s windows (of ``sources``; up to ``until`` ns) and commit; a summary
    (with ``notes`` on what crashed runs had left, when there was any)."""
    check_layout(store)
    doc = read_view_doc(store, view)
    capture = doc["capture"]
    definition = ViewDef.from_definition(doc["definition"])
    meta = open_capture(store, capture)
    parts = partitions_of(sources, meta.partitions) if sources else range(meta.partitions)
    lease = Lease.acquire(store, capture, run)
    try:
        base = commits.head(store, capture)
        notes = commits.finish_pending(store, capture=capture, keep=run)
        commits.begin(store, run, capture)
        closed = provisional = 0
        for part in parts:
            state = load_state(store, view, part)
            if not state:
                continue
            kernel = WindowKernel.from_state(definition, state)
            mask = None
            if sources:
                mask = np.array([s in sources for s, _ in kernel.names], dtype=bool)
            before = kernel.open.start.copy()
            rows = kernel.close(mask, until)
            writer = SegmentWriter(
                store,
                view,
                part,
                run,
                span=segment_span(definition.definition),
                schema=layout.view_schema(definition.aggregates),
                lineage={"capture": capture, "view_hash": definition.hash},
            )
            writer.note_base_provisional(before)
            writer.add_final(rows)
            writer.flush(provisional=kernel.open_rows())
            stage_state(store, run, view, part, kernel.state())
            closed += rows.num_rows
            provisional += writer.state.provisional
        event = {"view": view, "sources": sources or None, "until": until}
        entry = commits.commit(
            store, capture, run, "close", base=base, end_of_run=False, close=[event]
        )
        counts = Counts(view_rows={view: closed}, provisional={view: provisional})
        summary = summary_dict(
            counts,
            run=run,
            commit=entry.n,
            capture=capture,
            store_url=store.uri(),
            finished=datetime.now().astimezone().isoformat(),
            mode="close",
            closed=event,
        )
        store.write_json(layout.run_summary(run), summary)
        return {**summary, "notes": notes} if notes else summary
    finally:
        lease.release()
