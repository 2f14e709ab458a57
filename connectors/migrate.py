"""Moving a store written in obsflow's first layout to the current one (``obsflow store migrate``).

Layout 1 kept bookkeeping inside the data folders (``captures/<c>/_capture.json``,
``_state/``, ``_inputs/``, ``views/<v>/_view.json``, ``views/<v>/_state/``) and view rows in
one folder per run. Migration moves the bookkeeping under ``_obsflow/``, writes a commit log
with one entry per earlier run (in the order replay used to read them: by run id), and
rewrites each view's rows into their home objects (``final`` true: layout 1 made every window
final at the end of each run). Readings, late readings, dead letters, payloads and run
summaries stay where they are. Every step can be repeated, so an interrupted migration is
finished by running it again; ``_obsflow/layout.json`` is written last.

A store in layout 1 is never misread: every command checks the layout first
(``check_layout``) and says how to migrate.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from obsflow.connectors import commits, layout
from obsflow.connectors.errors import StoreError
from obsflow.connectors.partitions import conform
from obsflow.connectors.store import Store
from obsflow.connectors.views import segment_span, view_doc

_OLD_VIEW_FILE = re.compile(r"^(?P<run>[A-Za-z0-9_-]+)/part-(?P<part>\d{4})-\d{6}\.parquet$")
_OLD_DEDUP = ".dedup.parquet"  # (".dedup.prev.parquet", a rollback copy, is not needed)


def old_layout(store: Store) -> list[str]:
    """Names of layout-1 bookkeeping objects in ``store`` (empty for a current store)."""
    found = []
    for kind, doc in (("captures", "_capture.json"), ("views", "_view.json")):
        for name in store.listdir(kind):
            if store.exists(f"{kind}/{name}/{doc}"):
                found.append(f"{kind}/{name}/{doc}")
    return found


def check_layout(store: Store) -> None:
    """``StoreError`` with what to do, if the store is in layout 1."""
    if store.exists(layout.LAYOUT_DOC):
        return
    old = old_layout(store)
    if old:
        raise StoreError(
            f"{store.uri()} is in obsflow's first store layout ({old[0]}, ...): run "
            f"`obsflow store migrate --store {store.url}` once (it moves bookkeeping out of the "
            "data folders and keeps every reading and view row)"
        )


def migrate(store: Store, say: Callable[[str], None] = lambda _m: None) -> int:
    """Migrate ``store`` to the current layout; returns how many captures and views moved."""
    if store.listdir("staging"):  # an empty folder is what a finished replay left
        raise StoreError(
            f"{store.uri('staging')} holds a replay that layout 1 never finished: finish or "
            "discard it with the obsflow version that started it, then migrate"
        )
    moved = 0
    for name in store.listdir("captures"):
        if store.exists(f"captures/{name}/_capture.json"):
            _capture(store, name)
            say(f"capture {name!r}: bookkeeping moved, commit log written")
            moved += 1
    for name in store.listdir("views"):
        if store.exists(f"views/{name}/_view.json"):
            rows = _view(store, name)
            say(f"view {name!r}: {rows:,} rows rewritten in place")
            moved += 1
    store.write_json(layout.LAYOUT_DOC, {"layout": layout.LAYOUT})
    return moved


def _capture(store: Store, name: str) -> None:
    old = f"captures/{name}"
    doc = store.read_json(f"{old}/_capture.json")
    store.write_json(layout.capture_doc(name), doc)
    for fname in store.listdir(f"{old}/_state"):
        m = re.match(r"^(part-\d{4})(\..*)$", fname)
        if not m:
            continue
        part, suffix = int(m[1][5:]), m[2]
        if suffix == ".json":
            state = store.read_json(f"{old}/_state/{fname}")
            store.write_json(
                layout.capture_state(name, part, ".json"), {"next_seq": state.get("next_seq", {})}
            )
        elif suffix == _OLD_DEDUP:
            table = store.read_parquet(f"{old}/_state/{fname}").replace_schema_metadata(None)
            store.write_parquet(layout.capture_state(name, part, suffix), table)
    for fname in store.listdir(f"{old}/_inputs"):
        store.write_json(
            f"{layout.inputs_dir(name)}/{fname}", store.read_json(f"{old}/_inputs/{fname}")
        )
    by_run: dict[str, list[str]] = {}
    for part in range(int(doc["partitions"])):
        for fname in store.listdir(layout.capture_part_dir(name, part)):
            m = layout.CAPTURE_OBJECT_RE.match(fname)
            if m:
                by_run.setdefault(m["run"], []).append(
                    f"{layout.capture_part_dir(name, part)}/{fname}"
                )
    known = {c.run for c in commits.read_log(store, name)}
    n = commits.head(store, name)
    for run in sorted(by_run):  # layout 1 replayed runs in the order of their ids
        if run in known:
            continue
        rows = sum(store.parquet_metadata(rel).num_rows for rel in by_run[run])
        n += 1
        entry = commits.Commit(n=n, run=run, kind="migrate", objects=tuple(by_run[run]), rows=rows)
        store.create_json(layout.commit_doc(name, n), entry.to_json())
    for folder in ("_state", "_inputs"):
        store.delete(f"{old}/{folder}", recursive=True)
    store.delete(f"{old}/_capture.json")


def _view(store: Store, name: str) -> int:
    old = f"views/{name}"
    doc = store.read_json(f"{old}/_view.json")
    definition = doc["definition"]
    new_doc = view_doc(name, definition, doc["hash"], doc["capture"])
    schema = layout.view_schema(definition["aggregates"])
    span = segment_span(definition)
    by_part: dict[int, list[str]] = {}
    for rel in store.walk_files(old):
        m = _OLD_VIEW_FILE.match(rel[len(old) + 1 :])
        if m:
            by_part.setdefault(int(m["part"]), []).append(rel)
    rows = 0
    for part, rels in sorted(by_part.items()):
        table = store.scan(rels, unify=True)
        table = table.append_column("final", pa.repeat(True, table.num_rows).cast(pa.bool_()))
        table = conform(table, schema)  # (layout 1 had no seq range: null)
        starts = table.column("window_start").cast(pa.int64()).to_numpy()
        seg = np.floor_divide(starts, span) * span
        for s in np.unique(seg):
            piece = table.filter(pa.array(seg == s)).sort_by(
                [("source", "ascending"), ("channel", "ascending"), ("window_start", "ascending")]
            )
            store.write_parquet(layout.view_segment(name, part, int(s)), piece)
        rows += table.num_rows
    for fname in store.listdir(f"{old}/_state"):
        m = re.match(r"^part-(\d{4})\.parquet$", fname)
        if m:
            _view_state(
                store, name, int(m[1]), definition, store.read_parquet(f"{old}/_state/{fname}")
            )
    store.write_json(layout.view_doc(name), new_doc)
    for child in store.listdir(old):  # old run folders and bookkeeping; the new parts stay
        if not layout.PART_DIR_RE.match(child):
            store.delete(f"{old}/{child}", recursive=True)
    return rows


def _view_state(
    store: Store, view: str, part: int, definition: dict[str, Any], old: pa.Table
) -> None:
    """Layout 1 saved (maxt, closed) per series with every window final: the new frontier makes
    readings late exactly where layout 1 did."""
    maxt = old.column("maxt").to_numpy()
    closed = old.column("closed").to_numpy()
    lateness = int(definition.get("lateness", 0))
    gap = int(definition.get("gap", 0)) if definition.get("kind") == "session" else 0
    frontier = np.maximum(closed + gap, maxt - lateness)
    series = pa.table(
        {
            "source": old.column("source"),
            "channel": old.column("channel"),
            "maxt": pa.array(maxt, pa.int64()),
            "frontier": pa.array(frontier, pa.int64()),
        }
    )
    store.write_parquet(layout.view_state(view, part, "series"), series)
