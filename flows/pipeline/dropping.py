"""Dropping a capture (with its views) or one view: ``obsflow capture drop`` / ``views drop``.

A drop is one numbered commit of the capture, like a run's (``connectors.storage.commits``):
it removes every file of the tables it drops — the capture's, its views', their late readings,
its Bluesky documents — in one Delta commit each, so that no reader sees a capture or view half
gone, and a crash in between is completed by the next command. Nothing is deleted: time travel
(``--as-of`` a commit before the drop) reads the dropped data until a vacuum (``capture compact``)
removes the files no version of its retention needs. Only the bookkeeping of what is dropped goes
at once: the partitions' dedup state (so the name starts afresh) and the inputs it recorded as
captured (so the same files may be ingested into the name again). Other captures' data, and
dead letters (a record log of runs, kept for ``deadletters retry``), are not touched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from obsflow.connectors.datasets.capture import (
    CAPTURE_STORED,
    DROPPED,
    capture_snapshot,
    new_run_id,
    open_capture,
)
from obsflow.connectors.datasets.sessions import holder_of
from obsflow.connectors.datasets.views import list_views, read_view_doc, view_base
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.storage import commits, layout, tables
from obsflow.connectors.storage.commits import Commit, Intent
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import TableChange


@dataclass(frozen=True)
class Dropped:
    """What a drop took away, as of the commit that did."""

    capture: str
    commit: int
    readings: int
    views: tuple[str, ...]


def drop_capture(store: Store, name: str) -> Dropped:
    """Drop capture ``name`` and every view built from it (module docstring)."""
    base = _check_free(store, name)
    snap = capture_snapshot(store, name)
    if snap is None:
        open_capture(store, name)  # (raises: no such capture, with those there are)
        raise AssertionError("unreachable")
    views = tuple(sorted(d["name"] for d in list_views(store) if d.get("capture") == name))
    last = commits.last_commit(store, snap.table, name, base) if base else None
    state = dict(last.state) if last else {}
    retired = [layout.capture_state_dir(name, r) for r in sorted(commits.state_runs(state))]
    retired.append(layout.inputs_dir(name))
    changes = []
    for view in views:
        dropping, gone = _view_drop(store, view)
        changes += dropping
        retired += gone
    docs = layout.documents_dir(name)
    if tables.exists(store, docs):
        changes.append(
            TableChange(docs, layout.stored_schema(layout.DOCUMENT_LOG_SCHEMA), overwrite=True)
        )
    capture_change = TableChange(
        snap.table, CAPTURE_STORED, overwrite=True, txns={DROPPED: base + 1}
    )
    _commit(store, name, base, "drop", capture_change, changes, retired, state={})
    return Dropped(name, base + 1, snap.rows, views)


def drop_view(store: Store, view: str) -> Dropped:
    """Drop one view (its rows, its late readings, its state); its capture keeps building the
    others, and a view of that name may be defined again (built over the capture by a replay)."""
    doc = read_view_doc(store, view)  # (raises: no such view, with those there are)
    capture = str(doc["capture"])
    base = _check_free(store, capture)
    changes, retired = _view_drop(store, view)
    empty = TableChange(layout.capture_dir(capture), CAPTURE_STORED)  # (only the number)
    last = commits.last_commit(store, empty.table, capture, base) if base else None
    state = dict(last.state) if last else {}  # (the capture's partitions go on as they were)
    _commit(store, capture, base, "drop-view", empty, changes, retired, state=state)
    return Dropped(capture, base + 1, 0, (view,))


def _check_free(store: Store, capture: str) -> int:
    """The capture's last commit, after completing any a crash left half done; refused while
    a live session holds the capture (its next commit would fail, and it would stop)."""
    base, _ = commits.finish_pending(store, capture)
    _, holder = holder_of(store, capture)
    now = time.time_ns()
    if holder is not None and holder.alive(now):
        raise ConfigError(f"capture {capture!r} is held by {holder.describe(now)}: stop it first")
    return base


def _view_drop(store: Store, view: str) -> tuple[list[TableChange], list[str]]:
    """The changes that empty a view's table and its late readings', and its state folders
    to retire. The view's commit names no definition: it is gone to every reader."""
    doc = read_view_doc(store, view)
    schema = layout.stored_schema(layout.view_schema(doc["definition"]["aggregates"]))
    info: dict[str, Any] = {"view": {}, "state": {}, "dropped": doc}
    changes = [TableChange(layout.view_dir(view), schema, overwrite=True, info=info)]
    late = layout.late_dir(view)
    if tables.exists(store, late):
        changes.append(TableChange(late, layout.stored_schema(layout.LATE_SCHEMA), overwrite=True))
    state = view_base(store, view).state
    return changes, [layout.view_state_dir(view, r) for r in sorted(set(state.values()))]


def _commit(
    store: Store,
    capture: str,
    base: int,
    kind: str,
    capture_change: TableChange,
    changes: list[TableChange],
    retired: list[str],
    *,
    state: commits.StateMap,
) -> None:
    n = base + 1
    commit = Commit(n=n, run=new_run_id(), kind=kind, rows=0, created=commits.now(), state=state)
    intent = Intent(capture, commit, capture_change, changes, retired=retired)
    commits.commit_run(store, intent)
