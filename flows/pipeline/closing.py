"""``obsflow views close``: declare data complete, so that open windows become final now.

A small job without a dataflow: for each partition of the view (or of the sources given), the
committed window state is loaded, the windows are closed (``WindowKernel.close``: the
watermark of those series is taken to be ``until``, or every open window ends), the segments
are rewritten and the state is saved — all committed as one run of the capture
(``flows.pipeline.finish``), which replay repeats at the same point of the capture's order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from obsflow.connectors.algorithms.partitions import partitions_of
from obsflow.connectors.datasets.capture import open_capture
from obsflow.connectors.datasets.views import (
    SegmentWriter,
    load_state,
    read_view_doc,
    save_state,
    segment_span,
    view_base,
)
from obsflow.connectors.storage import layout
from obsflow.connectors.storage.commits import ConcurrentWriterError, capture_base, finish_pending
from obsflow.connectors.storage.migrate import check_layout
from obsflow.connectors.storage.store import Store
from obsflow.flows.kernels.viewdef import ViewDef
from obsflow.flows.kernels.windows import WindowKernel
from obsflow.flows.pipeline.finish import Finish
from obsflow.flows.steps.summary import Counts, wrote

RETRIES = 3


def close_view(
    store: Store,
    view: str,
    run: str,
    *,
    sources: list[str] | None = None,
    until: int | None = None,
    fence: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """Close ``view``'s windows (of ``sources``; up to ``until`` ns) and commit; a summary
    (with ``notes`` on what crashed runs had left, when there was any). Run again from the new
    base if another run committed the capture meanwhile. ``fence``: a live session's
    (``connectors.datasets.sessions``)."""
    check_layout(store)
    for attempt in range(RETRIES + 1):
        try:
            name = f"{run}-{attempt}" if attempt else run
            return _close(store, view, name, sources, until, fence)
        except ConcurrentWriterError:
            if attempt == RETRIES:
                raise
    raise AssertionError("unreachable")


def _close(
    store: Store,
    view: str,
    run: str,
    sources: list[str] | None,
    until: int | None,
    fence: tuple[str, int] | None,
) -> dict[str, Any]:
    doc = read_view_doc(store, view)
    capture = doc["capture"]
    base, notes = finish_pending(store, capture)
    definition = ViewDef.from_definition(doc["definition"])
    meta = open_capture(store, capture)
    base, _state = capture_base(store, capture, base)
    vbase = view_base(store, view)
    parts = partitions_of(sources, meta.partitions) if sources else range(meta.partitions)
    outputs = Counts()
    closed = provisional = 0
    for part in parts:
        state = load_state(store, view, part, vbase.state.get(part))
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
            base=vbase.files.get(part, {}),
        )
        writer.note_base_provisional(before)
        writer.add_final(rows)
        writer.flush(provisional=kernel.open_rows())
        ref = save_state(store, run, view, part, kernel.state())
        outputs = outputs + wrote(*writer.take_written(), ref)
        closed += rows.num_rows
        provisional += writer.state.provisional
    event = {"view": view, "sources": sources or None, "until": until}
    counts = outputs + Counts(view_rows={view: closed}, provisional={view: provisional})
    finish = Finish(
        store=store.url,
        capture=capture,
        run=run,
        kind="close",
        base=base,
        views=(doc,),
        extra={"mode": "close", "closed": event},
        end_of_run=False,
        close=(event,),
        fence=fence,
    )
    summary = finish(counts)
    return {**summary, "notes": notes} if notes else summary
