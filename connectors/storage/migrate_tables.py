"""Layout 2 -> layout 3: a store of plain Parquet folders and a home-made commit log becomes a
store of Delta tables (``obsflow store migrate``).

Every capture's commit log is replayed into its table, commit by commit and with the same
numbers: each commit's objects (read where a compaction or an archive moved them) are
rewritten with their commit number and exact-time columns as the table's files
(``<object>.v3.parquet``) and committed with the same ``txn`` a new run would give them, so
replay reads the same readings in the same order with the same run ends. Archived objects are
rewritten in the archive store too, and the archive commit records them there. Each view's
segments, each view's late readings, the dead letters, the Bluesky documents and the dead
letters retries resolved become tables the same way; seq numbers, dedup memory and open
windows move into the migration's own state folder, and the inputs records stay.

Every new file is read back and compared with what it was made from — rows and a sha256 of
their canonical Arrow form — before anything of the old layout is removed; only then are the
old objects and bookkeeping deleted and ``_obsflow/layout.json`` set to 3. Every step can be
repeated (commits are idempotent on their numbers, files rewritten whole), so an interrupted
migration is finished by running the command again; ``_obsflow/migrate-3.json`` remembers the
migration's run id and whether every file was verified.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from obsflow.connectors.algorithms.partitions import conform
from obsflow.connectors.datasets.capture import CAPTURE_STORED, CaptureMeta, new_run_id
from obsflow.connectors.datasets.views import view_description
from obsflow.connectors.errors import StoreError
from obsflow.connectors.storage import layout, legacy, table_writes, tables
from obsflow.connectors.storage.commits import Commit
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import DataFile, TableChange

MARKER = f"{layout.META}/migrate-3.json"
SUFFIX = ".v3.parquet"
Say = Callable[[str], None]


@dataclass
class _Migration:
    """One migration of a store: its run id, and every file it wrote with the rows and the
    digest it must hold (checked before the old layout goes)."""

    store: Store
    run: str
    say: Say
    expected: dict[tuple[str, str], tuple[int, str, pa.Schema]] = field(default_factory=dict)

    def convert(
        self,
        table: str,
        source: pa.Table,
        schema: pa.Schema,
        rel: str,
        *,
        store: Store | None = None,
        commit: int | None = None,
    ) -> DataFile:
        """Write ``source`` (rows of ``schema``, as layout 2 held them) as the table file
        ``rel`` (in ``store``, default the migrated one), remembering what it must hold."""
        rows = conform(_plain(source), schema)
        if commit is not None:
            rows = layout.with_commit(rows, commit)
            schema = rows.schema
        target = store or self.store
        file = table_writes.write_file(target, table, rel, rows, layout.STATS)
        self.expected[(target.url, rel)] = (rows.num_rows, digest(rows, schema), schema)
        return file


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary columns as their values (layout 2 read some ids as dictionaries)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(f.type.value_type))
    return table


def digest(rows: pa.Table, schema: pa.Schema) -> str:
    """sha256 of rows in their canonical form (``schema``, times as ns, one batch of IPC)."""
    canonical = conform(_plain(rows), schema).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, canonical.schema) as writer:
        writer.write_table(canonical)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def to_tables(store: Store, say: Say) -> int:
    """Migrate a layout-2 store (see the module docstring); how many captures and views."""
    if store.listdir(f"{legacy.META}/staging"):
        raise StoreError(
            f"{store.uri(legacy.META + '/staging')} holds runs that layout 2 never finished: "
            "run any command of the obsflow version that wrote the store once (it finishes or "
            "drops them), then migrate"
        )
    try:
        marker = store.read_json(MARKER)
    except FileNotFoundError:
        marker = {"run": new_run_id(), "verified": False}
        store.write_json(MARKER, marker)
    m = _Migration(store, str(marker["run"]), say)
    captures = [
        c for c in store.listdir(f"{legacy.META}/captures") if store.exists(legacy.capture_doc(c))
    ]
    views = [v for v in store.listdir(f"{legacy.META}/views") if store.exists(legacy.view_doc(v))]
    heads = {c: legacy.head(store, c) for c in captures}
    if not marker.get("verified"):
        for c in captures:
            _capture(m, c)
        for v in views:
            _view(m, v, heads)
        _logs(m, captures, heads)
        _verify(m)
        store.write_json(MARKER, {**marker, "verified": True})
    _remove_old(m, captures, views)
    store.write_json(layout.LAYOUT_DOC, {"layout": layout.LAYOUT})
    store.delete(MARKER)
    return len(captures) + len(views)


# -- captures ---------------------------------------------------------------------------------


def _capture(m: _Migration, name: str) -> None:
    store = m.store
    doc = store.read_json(legacy.capture_doc(name))
    meta = CaptureMeta(name, int(doc["partitions"]), str(doc.get("created", "")))
    log = legacy.read_log(store, name)
    where = legacy.located(log)
    cold = {rel: url for e in log for rel, url in e.archived.items()}
    table = layout.capture_dir(name)
    state: dict[int, list[str]] = {}
    rows_total = 0
    for i, entry in enumerate(log):
        adds: list[DataFile] = []
        if entry.kind not in ("compact", "archive"):
            for _part, rels in sorted(entry.parts(name).items()):
                for rel in rels:
                    old = _read_object(store, rel, where, cold)
                    new = rel.removesuffix(".parquet") + SUFFIX
                    adds.append(m.convert(table, old, layout.CAPTURE_SCHEMA, new, commit=entry.n))
                    if rel in cold:  # kept in the archive store too, where replay reads it
                        m.convert(
                            table,
                            old,
                            layout.CAPTURE_SCHEMA,
                            new,
                            store=Store(cold[rel]),
                            commit=entry.n,
                        )
                    rows_total += old.num_rows
        if i == len(log) - 1:
            state = _capture_state(m, name, meta.partitions)
        commit = Commit(
            n=entry.n,
            run=entry.run,
            kind=entry.kind,
            end_of_run=entry.end_of_run,
            close=entry.close,
            replaced_views=entry.replaced_views,
            rows=entry.rows,
            created=entry.created,
            state=state,
            archived={
                r.removesuffix(".parquet") + SUFFIX: url for r, url in entry.archived.items()
            },
        )
        change = TableChange(
            table,
            CAPTURE_STORED,
            adds=adds,
            removes=sorted(commit.archived),
            description=meta.description() if i == 0 else None,
            info=commit.info(),
        )
        table_writes.commit(store, change, app=name, n=entry.n, after=entry.n - 1)
    m.say(f"capture {name!r}: {len(log)} commits, {rows_total:,} readings rewritten as a table")


def _read_object(
    store: Store, rel: str, where: dict[str, tuple[str, int]], cold: dict[str, str]
) -> pa.Table:
    """A layout-2 capture object's rows, wherever a compaction or an archive put them."""
    if rel in where:
        holder, group = where[rel]
        source = Store(cold[holder]) if holder in cold else store
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(source.arrow_fs.open_input_file(source.path(holder)))
        return pf.read_row_group(group)
    source = Store(cold[rel]) if rel in cold else store
    return source.read_parquet(rel)


def _capture_state(m: _Migration, name: str, partitions: int) -> dict[int, list[str]]:
    """Each partition's seq numbers and dedup memory, moved into the migration's folder."""
    store, run = m.store, m.run
    out: dict[int, list[str]] = {}
    for part in range(partitions):
        rel = legacy.capture_state(name, part, ".json")
        try:
            old = store.read_json(rel)
        except FileNotFoundError:
            continue
        saved = old.get("dedup", {})
        memory = []
        base = legacy.capture_state(name, part, ".dedup.parquet")
        if store.exists(base):
            memory.append(store.read_parquet(base))
        memory += [
            store.read_parquet(legacy.capture_state(name, part, f".dedup.{r}.parquet"))
            for r in saved.get("deltas", ())
        ]
        dedup: dict[str, Any] = {"base": None, "base_rows": 0, "deltas": [], "delta_rows": 0}
        if memory:
            whole = pa.concat_tables(memory, promote_options="default")
            store.write_parquet(layout.capture_state(name, run, part, ".dedup.parquet"), whole)
            dedup = {"base": run, "base_rows": whole.num_rows, "deltas": [], "delta_rows": 0}
        store.write_json(
            layout.capture_state(name, run, part, ".json"),
            {"next_seq": old.get("next_seq", {}), "run": run, "dedup": dedup},
        )
        out[part] = [run]
    return out


# -- views ------------------------------------------------------------------------------------


def _view(m: _Migration, name: str, heads: dict[str, int]) -> None:
    store, run = m.store, m.run
    doc = store.read_json(legacy.view_doc(name))
    capture = str(doc["capture"])
    schema = layout.view_schema(doc["definition"]["aggregates"])
    table = layout.view_dir(name)
    adds, state, rows = [], {}, 0
    for folder in store.listdir(table):
        match = legacy.PART_DIR_RE.match(folder)
        if not match:
            continue
        part = int(match["part"])
        for fname in store.listdir(f"{table}/{folder}"):
            if not fname.endswith(".parquet") or "-" in fname:
                continue  # (files of layout 3: a segment's name and its run)
            old = store.read_parquet(f"{table}/{folder}/{fname}")
            new = f"{table}/{folder}/{fname.removesuffix('.parquet')}-{run}.parquet"
            adds.append(m.convert(table, old, schema, new))
            rows += old.num_rows
        for t in ("series", "open", "sketch"):
            old_rel = legacy.view_state(name, part, t)
            if store.exists(old_rel):
                store.write_bytes(layout.view_state(name, run, part, t), store.read_bytes(old_rel))
                state[str(part)] = run
    change = TableChange(
        table,
        layout.stored_schema(schema),
        adds=adds,
        description=view_description(name, capture),
        info={"view": doc, "state": state, "run": run, "kind": "migrate"},
    )
    table_writes.commit(store, change, app=capture, n=heads.get(capture, 0) or 1)
    m.say(f"view {name!r}: {rows:,} rows rewritten as a table")


# -- record logs ------------------------------------------------------------------------------


def _logs(m: _Migration, captures: list[str], heads: dict[str, int]) -> None:
    """Late readings, dead letters, documents and resolved dead letters as tables."""
    store = m.store
    for view in store.listdir("late"):
        capture = _capture_of_view(store, view)
        _log(
            m,
            layout.late_dir(view),
            layout.LATE_SCHEMA,
            {"kind": "late", "view": view},
            app=capture,
            n=heads.get(capture or "", 0) or None,
        )
    _log(m, layout.DEADLETTER_DIR, layout.DEADLETTER_SCHEMA, {"kind": "deadletters"})
    for capture in captures:
        _log(
            m,
            layout.documents_dir(capture),
            layout.DOCUMENT_LOG_SCHEMA,
            {"kind": "documents", "capture": capture},
            app=capture,
            n=heads.get(capture) or None,
        )
    folder = f"{legacy.META}/deadletter-resolved"
    adds = []
    for fname in store.listdir(folder):
        if fname.endswith(".parquet"):
            run = fname.removesuffix(".parquet")
            old = store.read_parquet(f"{folder}/{fname}")
            rel = layout.log_file(layout.RESOLVED_DIR, run, 0, 0)
            adds.append(m.convert(layout.RESOLVED_DIR, old, layout.RESOLVED_SCHEMA, rel))
    if adds:
        change = TableChange(
            layout.RESOLVED_DIR, layout.RESOLVED_SCHEMA, adds=adds, description={"kind": "resolved"}
        )
        table_writes.commit(store, change, app="migrate", n=None)


def _capture_of_view(store: Store, view: str) -> str | None:
    try:
        return str(store.read_json(legacy.view_doc(view))["capture"])
    except FileNotFoundError:
        return None


def _log(
    m: _Migration,
    table: str,
    schema: pa.Schema,
    description: dict[str, Any],
    *,
    app: str | None = None,
    n: int | None = None,
) -> None:
    store = m.store
    adds = []
    for rel in store.walk_files(table):
        inner = rel[len(table) + 1 :]
        if not inner.endswith(".parquet") or inner.endswith(SUFFIX) or "/" not in inner:
            continue
        if inner.startswith(tables.LOG_DIR):
            continue
        new = rel.removesuffix(".parquet") + SUFFIX
        adds.append(m.convert(table, store.read_parquet(rel), schema, new))
    if adds:
        change = TableChange(
            table, layout.stored_schema(schema), adds=adds, description=description
        )
        table_writes.commit(store, change, app=app or "migrate", n=n)
        m.say(f"{table}: {sum(a.rows for a in adds):,} rows rewritten as a table")


# -- check, then remove the old layout ----------------------------------------------------------


def _verify(m: _Migration) -> None:
    """Every file written holds what it was made from (rows, and their digest)."""
    stores: dict[str, Store] = {}
    for (url, rel), (rows, want, schema) in sorted(m.expected.items(), key=lambda kv: kv[0]):
        store = stores.setdefault(url, Store(url))
        got = layout.loaded(store.read_parquet(rel), schema)
        if got.num_rows != rows or digest(got, schema) != want:
            raise StoreError(
                f"migration check failed: {store.uri(rel)} does not hold what it was made from "
                f"({got.num_rows:,} rows, {rows:,} expected); the old layout is left as it was"
            )
    m.say(f"checked {len(m.expected):,} files: every row as it was")


def _unreferenced(store: Store, table: str) -> list[str]:
    """Files in a table's folder that its latest version does not hold (outside its log)."""
    snap = tables.snapshot(store, table)
    held = set() if snap is None else {f.path for f in snap.files}
    log = f"{table}/{tables.LOG_DIR}/"
    return [r for r in store.walk_files(table) if r not in held and not r.startswith(log)]


def _remove_old(m: _Migration, captures: list[str], views: list[str]) -> None:
    """Delete the old layout: every file of a table's folder that the table does not hold
    (the old objects; the tables were checked), and layout 2's bookkeeping."""
    store = m.store
    folders = [
        *(layout.capture_dir(c) for c in captures),
        *(layout.documents_dir(c) for c in captures),
        *(layout.view_dir(v) for v in views),
        *(layout.late_dir(v) for v in store.listdir("late")),
        layout.DEADLETTER_DIR,
    ]
    removed = 0
    for table in folders:
        for rel in _unreferenced(store, table):
            store.delete(rel)
            removed += 1
    for c in captures:
        meta = legacy.capture_meta_dir(c)
        for rel in (legacy.commits_dir(c), legacy.capture_doc(c), f"{meta}/lease.json"):
            store.delete(rel, recursive=True)
        for fname in store.listdir(f"{meta}/state"):
            if fname.startswith("part-"):  # (the migration's own state is in a run's folder)
                store.delete(f"{meta}/state/{fname}")
    for v in views:
        meta = legacy.view_meta_dir(v)
        store.delete(legacy.view_doc(v))
        for fname in store.listdir(f"{meta}/state"):
            if fname.startswith("part-"):
                store.delete(f"{meta}/state/{fname}")
    store.delete(f"{legacy.META}/deadletter-resolved", recursive=True)
    m.say(f"removed the old layout: {removed:,} objects and its bookkeeping")
