"""Lineage: from one view row back to the readings, runs and inputs behind it.

A view row carries the seq range of the readings it summarizes (``first_seq``, ``last_seq``),
the hash of the view definition and the run that wrote it. ``lineage`` finds the row of a
series whose window starts at (or holds) a time, then the capture's readings of that series
inside the window and the seq range, less those the view set aside as late: exactly the
readings the row's aggregates were computed from. Each reading's run is the run of the commit
that captured it (every reading carries its commit's number), and each run's inputs come from
the capture's record of inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.datasets.capture import captured_inputs
from obsflow.connectors.datasets.capture_source import REPLAYED
from obsflow.connectors.datasets.reads import read_capture, read_late, read_view
from obsflow.connectors.datasets.views import read_view_doc
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.schema import TIME_TYPE
from obsflow.connectors.storage import layout
from obsflow.connectors.storage.commits import read_log
from obsflow.connectors.storage.store import Store

READINGS = REPLAYED  # the reading columns and the trace id


@dataclass(frozen=True)
class Lineage:
    """One view row and what is behind it."""

    view: str
    capture: str
    row: dict[str, Any]  # the view row, as stored
    definition: dict[str, Any]
    readings: pa.Table  # the readings summarized: READINGS and the ``run`` that captured each
    inputs: dict[str, list[str]]  # run -> the inputs it captured into the capture

    @property
    def runs(self) -> list[str]:
        return sorted(set(self.readings.column("run").to_pylist()))


def _row(store: Store, view: str, source: str, channel: str, at: int) -> dict[str, Any]:
    """The view row of a series whose window starts at ``at``, else the one that holds it."""
    rows = read_view(store, view, sources=[source], channels=[channel])
    if not rows.num_rows:
        raise ConfigError(f"view {view!r} has no rows of {source}/{channel}")
    start = rows.column("window_start").cast(pa.int64())
    end = rows.column("window_end").cast(pa.int64())
    exact = pc.equal(start, at)
    holding = pc.and_(pc.less_equal(start, at), pc.greater(end, at))
    for mask in (exact, holding):
        hits = rows.filter(mask)
        if hits.num_rows == 1:
            found: dict[str, Any] = hits.to_pylist()[0]
            return found
        if hits.num_rows > 1:
            starts = ", ".join(str(s) for s in hits.column("window_start").to_pylist())
            raise ConfigError(
                f"{hits.num_rows} windows of {source}/{channel} in view {view!r} hold that "
                f"time (they start at {starts}): give --at one of those starts"
            )
    first, last = rows.column("window_start")[0], rows.column("window_start")[-1]
    raise ConfigError(
        f"no window of {source}/{channel} in view {view!r} holds that time (its windows start "
        f"from {first} to {last})"
    )


def lineage(store: Store, view: str, source: str, channel: str, at: int) -> Lineage:
    """The readings, runs and inputs behind one row of ``view`` (module docstring)."""
    doc = read_view_doc(store, view)
    capture = str(doc["capture"])
    row = _row(store, view, source, channel, at)
    t0 = pa.scalar(row["window_start"], TIME_TYPE).cast(pa.int64()).as_py()
    t1 = pa.scalar(row["window_end"], TIME_TYPE).cast(pa.int64()).as_py()
    s0, s1 = row.get("first_seq"), row.get("last_seq")
    if s0 is None or s1 is None:
        raise ConfigError(
            f"this row of view {view!r} was written before rows carried their seq range: "
            f"obsflow replay --capture {capture} rebuilds the view with it"
        )
    found = read_capture(
        store,
        capture,
        sources=[source],
        channels=[channel],
        start=t0,
        until=t1,
        columns=[*READINGS.names, layout.COMMIT],
        filter=(pc.field("seq") >= s0) & (pc.field("seq") <= s1),
    )
    runs = {c.n: c.run for c in read_log(store, capture)}
    numbers = found.column(layout.COMMIT).to_pylist()
    readings = found.drop_columns([layout.COMMIT]).append_column(
        "run", pa.array([runs.get(n, "?") for n in numbers], pa.string())
    )
    late = read_late(store, view, sources=[source], channels=[channel], start=t0, until=t1)
    if late.num_rows and readings.num_rows:  # set aside: in the capture, in no window of the view
        readings = readings.join(late.select(["seq"]), "seq", join_type="left anti")
    readings = readings.sort_by([("time", "ascending"), ("seq", "ascending")])
    captured_by = set(readings.column("run").to_pylist())
    inputs: dict[str, list[str]] = {r: [] for r in sorted(captured_by)}
    for record in captured_inputs(store, capture).values():
        if record.get("run") in captured_by:
            inputs[record["run"]].append(str(record.get("input")))
    return Lineage(
        view=view,
        capture=capture,
        row=row,
        definition=dict(doc["definition"]),
        readings=readings,
        inputs={r: sorted(v) for r, v in inputs.items()},
    )
