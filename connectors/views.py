"""View storage: rows under ``<store>/views/<name>/``, definition and window state under
``_obsflow/views/<name>/``.

Every (source, channel, window) has exactly one home object, ``part-NNNN/<segment>.parquet``:
the partition of its source and the stretch of window starts (``segment_span`` of them) its
start falls in. Rows of open windows are *provisional* (``final`` false) and are replaced in
their home object when they change or become final, so a reader — ``pandas.read_parquet`` of
the folder included — sees each window once: every object is replaced atomically, and no row
ever moves to another object.

``SegmentWriter`` upserts a partition's rows into its home objects (staged, for the run's
commit); ``connectors.reads`` reads them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors import layout
from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.partitions import conform
from obsflow.connectors.store import Store

ROW_KEY = ("source", "channel", "window_start")  # one row per window of a series
SEGMENT_WINDOWS = 1024
"""At least this many window starts (steps, or gaps for sessions) per view object."""
_S = 10**9
SPANS = tuple(
    s * _S for s in (60, 600, 3600, 6 * 3600, 86_400, 10 * 86_400, 100 * 86_400, 1000 * 86_400)
)
"""Stretches of window starts a view object may hold: round ones, so object names read well."""


def segment_span(definition: dict[str, Any]) -> int:
    """Nanoseconds of window starts one view object holds: the first round span with room
    for ``SEGMENT_WINDOWS`` windows (the largest when none has)."""
    unit = definition.get("step") or definition.get("size") or definition.get("gap") or _S
    need = SEGMENT_WINDOWS * int(unit)
    return next((s for s in SPANS if s >= need), SPANS[-1])


def view_doc(
    name: str,
    definition: dict[str, Any],
    view_hash: str,
    capture: str,
    *,
    sliced: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``view.json`` document: which definition over which capture made the rows, and
    for a view built from a slice of the capture (``replay --as``), which slice."""
    doc = {
        "name": name,
        "definition": definition,
        "hash": view_hash,
        "capture": capture,
        "segment_span": segment_span(definition),
    }
    if sliced is not None:
        doc["slice"] = sliced
    return doc


def read_view_doc(store: Store, name: str) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = store.read_json(layout.view_doc(name))
    except FileNotFoundError:
        names = [d["name"] for d in list_views(store)]
        raise StoreError(
            f"no view {name!r} in {store.uri()} (views: {', '.join(names) or 'none'})"
        ) from None
    return doc


def view_exists(store: Store, name: str) -> bool:
    return store.exists(layout.view_doc(name))


def check_view(store: Store, doc: dict[str, Any]) -> bool:
    """Whether a view exists with this definition over this capture (False: it is new);
    ``ConfigError`` if it exists with another."""
    if not view_exists(store, doc["name"]):
        return False
    old = read_view_doc(store, doc["name"])
    if old.get("hash") != doc["hash"] or old.get("capture") != doc["capture"]:
        raise ConfigError(
            f"view {doc['name']!r} exists with definition {old.get('hash')} over capture "
            f"{old.get('capture')!r}; this run defines {doc['hash']} over {doc['capture']!r}. "
            "Replay the capture to rebuild it (obsflow replay) or use a new view name"
        )
    return True


def stage_view_doc(store: Store, run: str, doc: dict[str, Any]) -> None:
    store.write_json(layout.staged(run, layout.view_doc(doc["name"])), doc)


def list_views(store: Store) -> list[dict[str, Any]]:
    out = []
    for name in store.listdir(f"{layout.META}/views"):
        try:
            out.append(store.read_json(layout.view_doc(name)))
        except FileNotFoundError:
            continue
    return out


# -- reading --------------------------------------------------------------------------------


def view_files(store: Store, name: str, parts: Iterable[int] | None = None) -> list[str]:
    """Store-relative paths of a view's objects (of some partitions)."""
    if parts is None:
        return [f for f in store.walk_files(layout.view_dir(name)) if layout.visible(f)]
    return [
        f"{layout.view_part_dir(name, p)}/{n}"
        for p in parts
        for n in store.listdir(layout.view_part_dir(name, p))
        if layout.visible(n)
    ]


# -- window state ------------------------------------------------------------------------------

STATE_TABLES = ("series", "open", "sketch")


def load_state(store: Store, view: str, part: int) -> dict[str, pa.Table]:
    """A view partition's committed window state (empty for a partition never written)."""
    out = {}
    for name in STATE_TABLES:
        try:
            out[name] = store.read_parquet(layout.view_state(view, part, name))
        except FileNotFoundError:
            continue
    return out


def stage_state(store: Store, run: str, view: str, part: int, tables: dict[str, pa.Table]) -> None:
    for name, table in tables.items():
        store.write_parquet(layout.staged(run, layout.view_state(view, part, name)), table)


# -- writing rows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """The rows a filtered replay may replace: of these sources, windows overlapping
    ``[start, until)`` (ns; None: unbounded)."""

    sources: tuple[str, ...] = ()
    start: int | None = None
    until: int | None = None

    def mask(self, rows: pa.Table) -> np.ndarray:
        keep = np.ones(rows.num_rows, bool)
        if self.sources:
            keep &= pc.is_in(rows.column("source"), pa.array(self.sources)).to_numpy(
                zero_copy_only=False
            )
        if self.start is not None:
            end = rows.column("window_end").cast(pa.int64()).to_numpy()
            keep &= end > self.start
        if self.until is not None:
            begin = rows.column("window_start").cast(pa.int64()).to_numpy()
            keep &= begin < self.until
        return keep


@dataclass
class WriterState:
    """What a segment writer needs to resume: segments holding the base's provisional rows,
    the segments this run has staged, and those of them holding provisional rows."""

    base_provisional: set[int] = field(default_factory=set)
    staged: set[int] = field(default_factory=set)
    staged_provisional: set[int] = field(default_factory=set)
    rows: int = 0  # final rows written by this run
    provisional: int = 0


class SegmentWriter:
    """Upserts one view partition's rows into their home objects, staged for ``run``.

    ``fresh``: the view is being rebuilt whole (a replay), so committed objects are not merged
    in. ``scope``: only rows inside it are written or replaced (a filtered replay).
    """

    def __init__(
        self,
        store: Store,
        view: str,
        part: int,
        run: str,
        *,
        span: int,
        schema: pa.Schema,
        lineage: dict[str, str],
        fresh: bool = False,
        scope: Scope | None = None,
        state: WriterState | None = None,
    ) -> None:
        self.store, self.view, self.part, self.run = store, view, part, run
        self.span, self.schema, self.lineage = span, schema, lineage
        self.fresh, self.scope = fresh, scope
        self.state = state or WriterState()
        self._final: list[pa.Table] = []

    def segments_of(self, starts: np.ndarray) -> set[int]:
        return set(np.unique(np.floor_divide(starts, self.span) * self.span).tolist())

    def note_base_provisional(self, starts: np.ndarray) -> None:
        """Window starts of the provisional rows the committed view holds (its open windows)."""
        if not self.fresh:
            self.state.base_provisional |= self.segments_of(starts)

    def add_final(self, rows: pa.Table) -> None:
        if rows.num_rows:
            self._final.append(rows)

    @property
    def pending(self) -> int:
        """Final rows added and not written yet."""
        return sum(t.num_rows for t in self._final)

    def flush(self, provisional: pa.Table | None = None) -> int:
        """Write the final rows added since the last flush; with ``provisional``, also replace
        every provisional row of the partition with these. Returns rows written."""
        final = self._label(self._final, True)
        self._final = []
        prov = None if provisional is None else self._label([provisional], False)
        touched = self._by_segment(final)
        new_prov = self._by_segment(prov) if prov is not None else {}
        segments = set(touched) | set(new_prov)
        if prov is not None:  # wherever an older provisional row may be
            segments |= self.state.base_provisional | self.state.staged_provisional
        for seg in sorted(segments):
            self._write(seg, touched.get(seg), new_prov.get(seg), prov is not None)
        written = sum(int(t.num_rows) for t in touched.values())
        self.state.rows += written
        if prov is not None:
            self.state.provisional = prov.num_rows
            self.state.base_provisional = set()
            self.state.staged_provisional = set(new_prov)
        return written

    def _label(self, tables: list[pa.Table], final: bool) -> pa.Table:
        if not tables:
            return self.schema.empty_table()
        rows = pa.concat_tables(tables)
        n = rows.num_rows
        rows = rows.append_column("final", pa.repeat(final, n).cast(pa.bool_()))
        for key, value in {**self.lineage, "run": self.run}.items():
            rows = rows.append_column(key, pa.repeat(value, n).cast(pa.string()))
        rows = rows.select(self.schema.names).cast(self.schema)
        if self.scope is not None:
            rows = rows.filter(pa.array(self.scope.mask(rows)))
        return rows

    def _by_segment(self, rows: pa.Table) -> dict[int, pa.Table]:
        if rows.num_rows == 0:
            return {}
        starts = rows.column("window_start").cast(pa.int64()).to_numpy()
        seg = np.floor_divide(starts, self.span) * self.span
        return {int(s): rows.filter(pa.array(seg == s)) for s in np.unique(seg)}

    def _current(self, seg: int) -> pa.Table:
        rel = layout.view_segment(self.view, self.part, seg)
        if seg in self.state.staged:
            return self.store.read_parquet(layout.staged(self.run, rel))
        if self.fresh:
            return self.schema.empty_table()
        try:
            # (a segment written before a column existed, first_seq say, reads it as null)
            return conform(self.store.read_parquet(rel), self.schema)
        except FileNotFoundError:
            return self.schema.empty_table()

    def _write(
        self, seg: int, final: pa.Table | None, prov: pa.Table | None, replace_prov: bool
    ) -> None:
        current = self._current(seg)
        keep = np.ones(current.num_rows, bool)
        if replace_prov:  # the new provisional set replaces the old one
            keep &= current.column("final").to_numpy(zero_copy_only=False)
            if self.scope is not None:
                keep |= ~self.scope.mask(current)
        new = [t for t in (final, prov) if t is not None and t.num_rows]
        kept = current.filter(pa.array(keep))
        if new and kept.num_rows:  # a new row replaces the row of its window, if any
            keys = pa.concat_tables(new).select(ROW_KEY)
            kept = kept.join(keys, keys=list(ROW_KEY), join_type="left anti")
        rows = pa.concat_tables([kept, *new])
        rows = rows.sort_by(
            [("source", "ascending"), ("channel", "ascending"), ("window_start", "ascending")]
        )
        rel = layout.staged(self.run, layout.view_segment(self.view, self.part, seg))
        if rows.num_rows == 0 and seg not in self.state.staged and self.fresh:
            return
        self.store.write_parquet(rel, rows)
        self.state.staged.add(seg)
