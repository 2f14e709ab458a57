"""View storage: ``<store>/views/<name>/`` holds a view's current final rows as plain Parquet.

Layout::

    views/<name>/_view.json                     definition, its hash, the capture it reads
    views/<name>/_state/part-0003.parquet       per-series watermark and closed frontier
    views/<name>/<run>/part-0003-<chunk>.parquet   rows: source, channel, window_start,
                                                window_end, one column per aggregate, lineage

``pandas.read_parquet("<store>/views/<name>")`` returns the rows and nothing else.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.ids import check_name
from obsflow.connectors.schema import TIME_TYPE, to_utc
from obsflow.connectors.store import Store


def view_dir(name: str) -> str:
    return f"views/{check_name(name, kind='view name')}"


def state_path(name: str, part: int, root: str = "views") -> str:
    """Per-series state of a view's partition (``root`` is ``views`` or a staging folder)."""
    return f"{root}/{check_name(name, kind='view name')}/_state/part-{part:04d}.parquet"


def view_doc(name: str, definition: dict[str, Any], view_hash: str, capture: str) -> dict[str, Any]:
    """The ``_view.json`` document: which definition over which capture made the rows."""
    return {"name": name, "definition": definition, "hash": view_hash, "capture": capture}


def ensure_view(
    store: Store, name: str, definition: dict[str, Any], view_hash: str, capture: str
) -> None:
    """Record a view's definition, or check that the stored one is the same."""
    rel = f"{view_dir(name)}/_view.json"
    doc = view_doc(name, definition, view_hash, capture)
    if store.exists(rel):
        old = store.read_json(rel)
        if old.get("hash") != view_hash or old.get("capture") != capture:
            raise ConfigError(
                f"view {name!r} exists with definition {old.get('hash')} over capture "
                f"{old.get('capture')!r}; this run defines {view_hash} over {capture!r}. "
                "Replay the capture to rebuild it (obsflow replay) or use a new view name"
            )
        return
    store.write_json(rel, doc)


def list_views(store: Store) -> list[dict[str, Any]]:
    out = []
    for name in store.listdir("views"):
        rel = f"views/{name}/_view.json"
        if store.exists(rel):
            out.append(store.read_json(rel))
    return out


def view_meta(store: Store, name: str) -> dict[str, Any]:
    rel = f"{view_dir(name)}/_view.json"
    if not store.exists(rel):
        raise StoreError(f"no view {name!r} in {store.uri()}")
    meta: dict[str, Any] = store.read_json(rel)
    return meta


def _ts(text: str | None, what: str) -> pa.Scalar | None:
    return None if text is None else pa.scalar(to_utc(text, what).value, TIME_TYPE)


def window_filter(
    *,
    sources: list[str] | None = None,
    channels: list[str] | None = None,
    start: str | None = None,
    until: str | None = None,
    time_column: str = "window_start",
) -> ds.Expression | None:
    """A pushed-down Parquet filter: series and ``[start, until)`` on ``time_column``."""
    parts: list[ds.Expression] = []
    if sources:
        parts.append(pc.field("source").isin(sources))
    if channels:
        parts.append(pc.field("channel").isin(channels))
    if (lo := _ts(start, "--from")) is not None:
        parts.append(pc.field(time_column) >= lo)
    if (hi := _ts(until, "--until")) is not None:
        parts.append(pc.field(time_column) < hi)
    if not parts:
        return None
    expr = parts[0]
    for p in parts[1:]:
        expr = expr & p
    return expr


def read_view(
    store: Store,
    name: str,
    *,
    filter: ds.Expression | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """A view's rows, with the filter pushed down to Parquet, sorted by series and window."""
    view_meta(store, name)
    dataset = ds.dataset(
        store.path(view_dir(name)),
        filesystem=store.fs,
        format="parquet",
        exclude_invalid_files=False,
        ignore_prefixes=[".", "_"],
    )
    if not dataset.files:  # a view without rows yet: nothing to filter
        return pa.table({})
    table = dataset.to_table(filter=filter, columns=columns)
    keys = [k for k in ("source", "channel", "window_start") if k in table.column_names]
    return table.sort_by([(k, "ascending") for k in keys]) if keys else table


# -- replacing views after a replay --------------------------------------------------------
#
# A replay writes each view into staging/<run>/{views,late}/<name>/. Only when the whole run
# succeeded does it write staging/<run>/_commit.json; from then on the swap is a redo-able
# action: copy the staged objects in, delete the old ones, record the new definition, drop the
# staging folder. Interrupted before the marker, the old views are untouched; interrupted
# during the swap, the next command that opens the store finishes it (``finish_commits``).


def stage_commit(store: Store, run_id: str, docs: list[dict[str, Any]]) -> None:
    """Declare a replay's staged views complete, then swap them in."""
    store.write_json(
        f"staging/{check_name(run_id, kind='run id')}/_commit.json", {"run": run_id, "views": docs}
    )
    apply_commit(store, run_id)


def apply_commit(store: Store, run_id: str) -> None:
    """Swap in the views staged by ``run_id`` (idempotent: safe to repeat after a crash)."""
    stage = f"staging/{check_name(run_id, kind='run id')}"
    marker = store.read_json(f"{stage}/_commit.json")
    for doc in marker["views"]:
        name = check_name(doc["name"], kind="view name")
        for kind in ("views", "late"):
            src, dst = f"{stage}/{kind}/{name}", f"{kind}/{name}"
            new = {f[len(src) + 1 :] for f in store.walk_files(src)}
            for rel in sorted(new):
                store.copy(f"{src}/{rel}", f"{dst}/{rel}")
            keep = {rel.split("/")[0] for rel in new} | {"_view.json"}
            for child in store.listdir(dst):  # old runs' folders, whole
                if child not in keep:
                    store.delete(f"{dst}/{child}", recursive=True)
            for rel in [f[len(dst) + 1 :] for f in store.walk_files(dst)]:
                if rel not in new and rel != "_view.json":  # stale objects in kept folders
                    store.delete(f"{dst}/{rel}")
        store.write_json(f"views/{name}/_view.json", doc)
    store.delete(stage, recursive=True)


def finish_commits(store: Store, keep: str | None = None) -> list[str]:
    """Complete swaps interrupted by a crash; drop staging left by replays that never finished
    (except ``keep``, the run being resumed from a recovery directory).

    Assumes one writer per store at a time (as the capture does).
    """
    done = []
    for run in store.listdir("staging"):
        if run == keep:
            continue
        if store.exists(f"staging/{run}/_commit.json"):
            apply_commit(store, run)
            done.append(run)
        else:
            store.delete(f"staging/{run}", recursive=True)
    return done
