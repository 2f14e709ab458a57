"""Moving a store written by an earlier obsflow to the current layout (``obsflow store migrate``).

Layout 1 kept bookkeeping inside the data folders (``captures/<c>/_capture.json``,
``_state/``, ``_inputs/``, ``views/<v>/_view.json``, ``views/<v>/_state/``) and view rows in
one folder per run; layout 2 (``connectors.storage.legacy``) moved it under ``_obsflow/`` with a
commit log of its own; layout 3 keeps every capture, view, late reading and dead letter as a
Delta table (``connectors.storage.migrate_tables``). A layout-1 store goes through layout 2: its
bookkeeping is moved under ``_obsflow/``, a commit log written with one entry per earlier run
(in the order replay used to read them: by run id), and each view's rows rewritten into their
home objects (``final`` true: layout 1 made every window final at the end of each run). Every
step can be repeated, so an interrupted migration is finished by running it again.

A store in an older layout is never misread: every command checks the layout first
(``check_layout``) and says how to migrate.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from obsflow.connectors.algorithms.partitions import conform
from obsflow.connectors.datasets.views import segment_span, view_doc
from obsflow.connectors.errors import StoreError
from obsflow.connectors.storage import layout, legacy
from obsflow.connectors.storage.store import Store

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


def store_layout(store: Store) -> int | None:
    """The layout a store is in (None: an empty store, or not one of obsflow's)."""
    try:
        return int(store.read_json(layout.LAYOUT_DOC).get("layout", 0))
    except FileNotFoundError:
        pass
    return 1 if old_layout(store) else None


def check_layout(store: Store) -> None:
    """``StoreError`` with what to do, if the store is in an older layout."""
    found = store_layout(store)
    if found is None or found == layout.LAYOUT:
        return
    if found > layout.LAYOUT:
        raise StoreError(
            f"{store.uri()} was written by a newer obsflow (store layout {found}): upgrade"
        )
    raise StoreError(
        f"{store.uri()} is in obsflow's store layout {found}, before captures and views became "
        f"Delta tables: run `obsflow store migrate --store {store.url}` once (it converts every "
        "capture, view, late reading and dead letter, checks them, and keeps every reading)"
    )


def migrate(store: Store, say: Callable[[str], None] = lambda _m: None) -> int:
    """Migrate ``store`` to the current layout; returns how many captures and views moved."""
    from obsflow.connectors.storage.migrate_tables import to_tables

    found = store_layout(store)
    if found is None or found == layout.LAYOUT:
        return 0
    moved = _to_layout_2(store, say) if found == 1 else 0
    return to_tables(store, say) or moved


def _to_layout_2(store: Store, say: Callable[[str], None]) -> int:
    """Layout 1 -> layout 2 (see the module docstring)."""
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
    store.write_json(layout.LAYOUT_DOC, {"layout": legacy.LAYOUT})
    return moved


def _capture(store: Store, name: str) -> None:
    old = f"captures/{name}"
    doc = store.read_json(f"{old}/_capture.json")
    store.write_json(legacy.capture_doc(name), doc)
    for fname in store.listdir(f"{old}/_state"):
        m = re.match(r"^(part-\d{4})(\..*)$", fname)
        if not m:
            continue
        part, suffix = int(m[1][5:]), m[2]
        if suffix == ".json":
            state = store.read_json(f"{old}/_state/{fname}")
            store.write_json(
                legacy.capture_state(name, part, ".json"), {"next_seq": state.get("next_seq", {})}
            )
        elif suffix == _OLD_DEDUP:
            table = store.read_parquet(f"{old}/_state/{fname}").replace_schema_metadata(None)
            store.write_parquet(legacy.capture_state(name, part, suffix), table)
    for fname in store.listdir(f"{old}/_inputs"):
        store.write_json(
            f"{legacy.inputs_dir(name)}/{fname}", store.read_json(f"{old}/_inputs/{fname}")
        )
    by_run: dict[str, list[str]] = {}
    for part in range(int(doc["partitions"])):
        for fname in store.listdir(legacy.capture_part_dir(name, part)):
            m = legacy.CAPTURE_OBJECT_RE.match(fname)
            if m:
                by_run.setdefault(m["run"], []).append(
                    f"{legacy.capture_part_dir(name, part)}/{fname}"
                )
    known = {c.run for c in legacy.read_log(store, name)}
    n = legacy.head(store, name)
    for run in sorted(by_run):  # layout 1 replayed runs in the order of their ids
        if run in known:
            continue
        rows = sum(store.parquet_metadata(rel).num_rows for rel in by_run[run])
        n += 1
        entry = legacy.Commit(n=n, run=run, kind="migrate", objects=tuple(by_run[run]), rows=rows)
        store.create_json(legacy.commit_doc(name, n), entry.to_json())
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
            store.write_parquet(
                legacy.view_segment(name, part, layout.segment_name(int(s)) + ".parquet"), piece
            )
        rows += table.num_rows
    for fname in store.listdir(f"{old}/_state"):
        m = re.match(r"^part-(\d{4})\.parquet$", fname)
        if m:
            _view_state(
                store, name, int(m[1]), definition, store.read_parquet(f"{old}/_state/{fname}")
            )
    store.write_json(legacy.view_doc(name), new_doc)
    for child in store.listdir(old):  # old run folders and bookkeeping; the new parts stay
        if not legacy.PART_DIR_RE.match(child):
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
    store.write_parquet(legacy.view_state(view, part, "series"), series)
