"""View storage: a Delta table at ``<store>/views/<name>/``; window state of each run under
``_obsflow/views/<name>/state/<run>/``; the definition in the table's description.

Every (source, channel, window) lives in one segment: the partition of its source and the
stretch of window starts (``segment_span`` of them) its start falls in. A segment is one file of
the table, ``part-NNNN/<segment>-<run>.parquet``. Rows of open windows are *provisional*
(``final`` false); a run that changes a segment writes the segment's new file and its commit
removes the old one, so every version of the table holds each window once.

``SegmentWriter`` upserts a partition's rows into segment files (committed with the run);
``connectors.datasets.reads`` reads them.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.algorithms.partitions import conform
from obsflow.connectors.datasets.capture import StateRef
from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.storage import layout, table_writes, tables
from obsflow.connectors.storage.commits import last_info
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import DataFile, FileEntry, Snapshot

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


@dataclass(frozen=True)
class ViewHead:
    """A view as its latest commit left it: its document and where each partition's window
    state is (the run whose folder holds it)."""

    doc: dict[str, Any]
    state: dict[int, str]
    commit: int = 0


def view_head(store: Store, name: str, *, version: int | None = None) -> ViewHead | None:
    """The view's latest commit (at or before Delta ``version``; None: no such view)."""
    table = layout.view_dir(name)
    snap = tables.snapshot(store, table)
    if snap is None:
        return None
    app = str(snap.description.get("capture", ""))
    info = last_info(store, table, app, version=snap.version if version is None else version)
    doc = info.get("view") or {}
    state = {int(k): str(v) for k, v in (info.get("state") or {}).items()}
    return ViewHead(dict(doc), state, int(info.get("commit", 0)))


def read_view_doc(store: Store, name: str) -> dict[str, Any]:
    head = view_head(store, name)
    if head is None or not head.doc:
        names = [d["name"] for d in list_views(store)]
        raise StoreError(f"no view {name!r} in {store.uri()} (views: {', '.join(names) or 'none'})")
    return head.doc


def view_exists(store: Store, name: str) -> bool:
    return tables.exists(store, layout.view_dir(name))


def check_view(store: Store, doc: dict[str, Any]) -> bool:
    """Whether a view exists with this definition over this capture (False: it is new);
    ``ConfigError`` if it exists with another."""
    head = view_head(store, doc["name"])
    if head is None or not head.doc:
        return False
    old = head.doc
    if old.get("hash") != doc["hash"] or old.get("capture") != doc["capture"]:
        raise ConfigError(
            f"view {doc['name']!r} exists with definition {old.get('hash')} over capture "
            f"{old.get('capture')!r}; this run defines {doc['hash']} over {doc['capture']!r}. "
            "Replay the capture to rebuild it (obsflow replay) or use a new view name"
            + (
                " (view names are the store's: a views file serving several captures names "
                'its views with {capture}, e.g. name = "{capture}_hourly")'
                if old.get("capture") != doc["capture"]
                else ""
            )
        )
    return True


def list_views(store: Store) -> list[dict[str, Any]]:
    out = []
    for name in store.listdir("views"):
        if not store.exists(f"views/{name}/{tables.LOG_DIR}"):
            continue
        head = view_head(store, name)
        if head is not None and head.doc:
            out.append(head.doc)
    return out


def view_description(name: str, capture: str) -> dict[str, Any]:
    """What a view table's description holds (its definition is in each commit)."""
    return {"kind": "view", "name": name, "capture": capture}


@dataclass(frozen=True)
class ViewBase:
    """The view version a run starts from: its Delta version (None: no view yet), its state
    per partition (the run whose folder holds it), the file of each segment per partition
    (start ns -> store-relative path), and the commit that made it."""

    version: int | None = None
    state: dict[int, str] = field(default_factory=dict)
    files: dict[int, dict[int, str]] = field(default_factory=dict)
    commit: int = 0


def view_base(store: Store, name: str) -> ViewBase:
    """The latest version of a view, as a run starts from it."""
    snap = tables.snapshot(store, layout.view_dir(name))
    if snap is None:
        return ViewBase()
    app = str(snap.description.get("capture", ""))
    info = last_info(store, snap.table, app, version=snap.version)
    head = ViewHead(
        dict(info.get("view") or {}),
        {int(k): str(v) for k, v in (info.get("state") or {}).items()},
        int(info.get("commit", 0)),
    )
    files: dict[int, dict[int, str]] = {}
    for f in snap.files:
        m = layout.VIEW_FILE_RE.match(f.path[len(snap.table) + 1 :])
        if m:
            files.setdefault(int(m["part"]), {})[segment_start(m["segment"])] = f.path
    return ViewBase(snap.version, dict(head.state), files, head.commit)


# -- reading --------------------------------------------------------------------------------


def view_files(
    store: Store, name: str, parts: Iterable[int] | None = None, snap: Snapshot | None = None
) -> list[FileEntry]:
    """The files of a view version (of some partitions)."""
    snap = snap or tables.snapshot(store, layout.view_dir(name))
    if snap is None:
        return []
    if parts is None:
        return list(snap.files)
    return [f for p in sorted(set(parts)) for f in snap.under(layout.part_name(p) + "/")]


def segment_files(snap: Snapshot | None, part: int) -> dict[int, str]:
    """Segment start (ns) -> the file holding it, for one partition of a view version."""
    if snap is None:
        return {}
    out = {}
    for f in snap.under(layout.part_name(part) + "/"):
        m = layout.VIEW_FILE_RE.match(f.path[len(snap.table) + 1 :])
        if m:
            out[segment_start(m["segment"])] = f.path
    return out


def segment_start(name: str) -> int:
    """The window start (ns) a segment name stands for (``layout.segment_name``)."""
    text = f"{name[0:4]}-{name[4:6]}-{name[6:8]}T{name[9:11]}:{name[11:13]}:{name[13:15]}"
    return int(np.datetime64(text, "ns").astype(np.int64))


# -- window state ------------------------------------------------------------------------------

STATE_TABLES = ("series", "open", "sketch")


def load_state(store: Store, view: str, part: int, run: str | None) -> dict[str, pa.Table]:
    """A view partition's window state as ``run`` left it (empty: no run did)."""
    out: dict[str, pa.Table] = {}
    if run is None:
        return out
    for name in STATE_TABLES:
        try:
            out[name] = store.read_parquet(layout.view_state(view, run, part, name))
        except FileNotFoundError:
            continue
    return out


def save_state(
    store: Store, run: str, view: str, part: int, tables_: dict[str, pa.Table]
) -> StateRef:
    """Save a partition's window state in ``run``'s folder; where it now is."""
    for name, table in tables_.items():
        store.write_parquet(layout.view_state(view, run, part, name), table)
    return StateRef(layout.view_dir(view), part, (run,))


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
    the segments this run has written, those of them holding provisional rows, and the files
    written since they were last reported."""

    base_provisional: set[int] = field(default_factory=set)
    staged: set[int] = field(default_factory=set)
    staged_provisional: set[int] = field(default_factory=set)
    rows: int = 0  # final rows written by this run
    provisional: int = 0
    written: dict[str, DataFile] = field(default_factory=dict)


_WRITES = ThreadPoolExecutor(max_workers=1, thread_name_prefix="obsflow-view-write")
IN_FLIGHT = 2
"""Segment files a writer encodes and writes in the background at most (Parquet encoding
releases the GIL: the next segment is prepared meanwhile)."""


class SegmentWriter:
    """Upserts one view partition's rows into its segments: each segment it changes is
    written anew as ``run``'s file of that segment (rewritten as the run goes on), which the
    run's commit swaps for the segment's file in the base version (``base``: segment start
    -> file). Files are written on a background thread; ``take_written`` and ``wait`` wait
    for them.

    ``fresh``: the view is being rebuilt whole (a replay), so committed files are not merged
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
        base: dict[int, str] | None = None,
    ) -> None:
        self.store, self.view, self.part, self.run = store, view, part, run
        self.span, self.schema, self.lineage = span, schema, lineage
        self.base = base or {}
        self.fresh, self.scope = fresh, scope
        self.state = state or WriterState()
        self._final: list[pa.Table] = []
        self._writing: dict[str, Future[DataFile]] = {}

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
        segments = np.unique(seg)
        if segments.size == 1:  # (no copy: many series' rows of one segment can be large)
            return {int(segments[0]): rows}
        return {int(s): rows.filter(pa.array(seg == s)) for s in segments}

    def _current(self, seg: int) -> pa.Table:
        if seg in self.state.staged:
            rel = layout.view_file(self.view, self.part, seg, self.run)
            self._wait(rel)
        elif self.fresh or seg not in self.base:
            return self.schema.empty_table()
        else:
            rel = self.base[seg]
        # (a segment written before a column existed, first_seq say, reads it as null)
        return conform(layout.loaded(self.store.read_parquet(rel), self.schema), self.schema)

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
        if rows.num_rows == 0 and seg not in self.state.staged and seg not in self.base:
            return
        rel = layout.view_file(self.view, self.part, seg, self.run)
        table = layout.view_dir(self.view)
        # (a segment left empty is written too: its commit then removes the base's file)
        while len(self._writing) >= IN_FLIGHT:
            self._wait(next(iter(self._writing)))
        self._wait(rel)
        self._writing[rel] = _WRITES.submit(
            table_writes.write_file, self.store, table, rel, rows, layout.STATS
        )
        self.state.staged.add(seg)

    def _wait(self, rel: str) -> None:
        """Wait for the file ``rel`` being written, if it is (its error is raised here)."""
        future = self._writing.pop(rel, None)
        if future is not None:
            self.state.written[rel] = future.result()

    def wait(self) -> None:
        """Wait for every file being written: then ``state`` says what is written."""
        while self._writing:
            self._wait(next(iter(self._writing)))

    def take_written(self) -> list[DataFile]:
        """The files written since the last call (for the run's commit; a rewritten segment
        is reported again, and its last report holds)."""
        self.wait()
        out = list(self.state.written.values())
        self.state.written = {}
        return out

    def replaced(self) -> list[str]:
        """The base version's files of the segments this run rewrote (its commit removes
        them); with ``fresh``, every file of the partition."""
        if self.fresh:
            return sorted(self.base.values())
        return sorted(self.base[s] for s in self.state.staged if s in self.base)


_CONTRACT: type[table_writes.StagedWriter] = SegmentWriter  # (mypy holds it to the contract)
