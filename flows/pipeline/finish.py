"""The end of a run: commit what it wrote, record what it captured, write its summary.

``Finish`` is built with the dataflow and called once, by the summary step, with the run's
final counts — after every step upstream has written all it had and reported the files
(``Counts.outputs``). So a run finishes the same way however it is run: by the ``obsflow``
command, from Python, or by ``python -m bytewax.run`` on several processes. It turns what the
run wrote into one change per table — the capture's, each view's, late readings, dead letters,
documents — and commits them as the capture's next number (``connectors.storage.commits``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from obsflow.connectors.datasets.capture import (
    CAPTURE_STORED,
    CaptureMeta,
    StateRef,
    capture_snapshot,
    input_fingerprint,
)
from obsflow.connectors.datasets.views import ViewBase, view_base, view_description
from obsflow.connectors.errors import StoreError
from obsflow.connectors.storage import commits, layout, table_writes, tables
from obsflow.connectors.storage.commits import Commit, Intent
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import DataFile, TableChange
from obsflow.flows.steps.summary import Counts, summary_dict


def log_tables() -> dict[str, tuple[Any, dict[str, Any]]]:
    """Schema (as stored) and description of the record-log tables every run may write."""
    return {
        layout.DEADLETTER_DIR: (
            layout.stored_schema(layout.DEADLETTER_SCHEMA),
            {"kind": "deadletters"},
        ),
    }


@dataclass(frozen=True)
class Finish:
    """What a run commits when its dataflow ends. Plain data: it travels with the flow.

    ``base`` is the capture's last commit when the run began (the run commits as ``base +
    1``). ``views`` are the documents of every view the run writes; ``replaced_views`` those
    it rebuilds whole. ``inputs`` maps each input URL to its fingerprint (None: not known,
    computed here) and the options it was read with; an input is recorded as captured only if
    the run accepted readings from it.
    """

    store: str
    capture: str
    run: str
    kind: str  # ingest | replay
    base: int
    capture_meta: CaptureMeta | None = None  # a capture this run creates
    views: tuple[dict[str, Any], ...] = ()
    replaced_views: tuple[str, ...] = ()
    inputs: dict[str, tuple[str | None, dict[str, Any]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    end_of_run: bool = True
    close: tuple[dict[str, Any], ...] = ()  # views close events (``obsflow views close``)
    # A live cycle's: the broker positions its commit records (txn application id -> the
    # next position to read), and its session's fence (``connectors.datasets.sessions``).
    positions: tuple[tuple[str, int], ...] = ()
    fence: tuple[str, int] | None = None

    def __call__(self, counts: Counts) -> dict[str, Any]:
        store = Store(self.store)
        n = self.base + 1
        files, states = _outputs(counts)
        capture_table = layout.capture_dir(self.capture)
        if self._creates_nothing(files):
            return self._letters_only(store, counts, files)
        _check_commit(files.get(capture_table, ()), n)
        previous = (
            commits.last_commit(store, capture_table, self.capture, self.base)
            if self.base
            else None
        )
        old_state = dict(previous.state) if previous else {}
        new_state = {**old_state}
        for part, ref in states.get(capture_table, {}).items():
            new_state[part] = list(ref.runs)
        retired = [
            layout.capture_state_dir(self.capture, r)
            for r in sorted(commits.state_runs(old_state) - commits.state_runs(new_state))
        ]
        commit = Commit(
            n=n,
            run=self.run,
            kind=self.kind,
            end_of_run=self.end_of_run,
            close=self.close,
            replaced_views=self.replaced_views,
            rows=counts.accepted if self.kind == "ingest" else 0,
            created=commits.now(),
            state=new_state,
        )
        capture_change = TableChange(
            capture_table,
            CAPTURE_STORED,
            adds=sorted(files.get(capture_table, ()), key=lambda f: f.path),
            description=self.capture_meta.description() if self.capture_meta else None,
            txns=dict(self.positions),
            fence=self.fence,
        )
        changes = []
        for doc in self.views:
            change, gone = self._view_change(store, doc, files, states)
            changes.append(change)
            retired += gone
        changes += self._log_changes(store, files)
        doc = self.summary(counts, store, n)
        intent = Intent(
            self.capture,
            commit,
            capture_change,
            changes,
            inputs=self._inputs(counts),
            summary=doc,
            retired=retired,
        )
        try:
            commits.commit_run(store, intent)
        except (commits.ConcurrentWriterError, commits.SessionLostError):
            discard(store, intent)  # (this run's own files: nobody will ever commit them)
            raise
        return doc

    def _creates_nothing(self, files: dict[str, list[DataFile]]) -> bool:
        """Whether this run would create its capture holding nothing: an ingest into a new
        (or dropped) capture that accepted no reading and kept no document (a live session's commit
        records its broker positions, so it always commits)."""
        return (
            self.kind == "ingest"
            and not files.get(layout.capture_dir(self.capture))
            and layout.documents_dir(self.capture) not in files
            and not self.positions
            and self.fence is None
            and (
                self.base == 0
                or capture_snapshot(Store(self.store), self.capture, as_of=self.base) is None
            )
        )

    def _letters_only(
        self, store: Store, counts: Counts, files: dict[str, list[DataFile]]
    ) -> dict[str, Any]:
        """A run that accepted nothing into a capture that does not exist: it creates neither
        the capture nor its views (the corrected run defines them), but keeps its dead letters
        as the capture's (their commit names the run and the capture) and its summary."""
        store.create_json(layout.LAYOUT_DOC, {"layout": layout.LAYOUT})
        for change in self._log_changes(store, files):
            change.info = {"run": self.run, "kind": self.kind, **change.info}
            table_writes.commit(store, change, app=self.capture, n=None)
        store.delete(layout.capture_state_dir(self.capture, self.run), recursive=True)
        for doc in self.views:
            store.delete(layout.view_state_dir(doc["name"], self.run), recursive=True)
        doc = self.summary(counts, store, None)
        store.write_json(layout.run_summary(self.run), doc)
        return doc

    def _log_changes(self, store: Store, files: dict[str, list[DataFile]]) -> list[TableChange]:
        """The changes of the run's record logs: each view's late readings, the capture's
        documents, dead letters."""
        changes = []
        for doc in self.views:
            late = layout.late_dir(doc["name"])
            rebuilt = doc["name"] in self.replaced_views and tables.exists(store, late)
            if late in files or rebuilt:  # (a view rebuilt whole drops its late readings)
                changes.append(
                    TableChange(
                        late,
                        layout.stored_schema(layout.LATE_SCHEMA),
                        adds=sorted(files.get(late, ()), key=lambda f: f.path),
                        description={"kind": "late", "view": doc["name"]},
                        overwrite=doc["name"] in self.replaced_views,
                    )
                )
        docs = layout.documents_dir(self.capture)
        tables_ = {
            **log_tables(),
            docs: (
                layout.stored_schema(layout.DOCUMENT_LOG_SCHEMA),
                {"kind": "documents", "capture": self.capture},
            ),
        }
        for table, (schema, description) in tables_.items():
            if table in files:
                adds = sorted(files[table], key=lambda f: f.path)
                changes.append(TableChange(table, schema, adds=adds, description=description))
        return changes

    def _view_change(
        self,
        store: Store,
        doc: dict[str, Any],
        files: dict[str, list[DataFile]],
        states: dict[str, dict[int, StateRef]],
    ) -> tuple[TableChange, list[str]]:
        """The change to one view's table, and the state folders it retires."""
        name = doc["name"]
        table = layout.view_dir(name)
        fresh = name in self.replaced_views
        current = view_base(store, name)
        old = dict(current.state)
        base = ViewBase() if fresh else current  # (a view rebuilt whole: its commit removes all)
        written = sorted(files.get(table, ()), key=lambda f: f.path)
        removes = []
        for f in written:
            m = layout.VIEW_FILE_RE.match(f.name)
            assert m is not None
            by_part = base.files.get(int(m["part"]), {})
            held = [p for p in by_part.values() if p.rsplit("/", 1)[1].startswith(m["segment"])]
            removes += held
        state = {**({} if fresh else old)}
        for part, ref in states.get(table, {}).items():
            state[part] = ref.runs[0]
        retired = sorted(set(old.values()) - set(state.values()))
        gone = [layout.view_state_dir(name, r) for r in retired]
        schema = layout.stored_schema(layout.view_schema(doc["definition"]["aggregates"]))
        change = TableChange(
            table,
            schema,
            adds=written,
            removes=sorted(set(removes)),
            description=view_description(name, self.capture),
            overwrite=fresh,
            info={
                "view": doc,
                "state": {str(k): v for k, v in sorted(state.items())},
                "rebuilt": fresh,
            },
        )
        return change, gone

    def _inputs(self, counts: Counts) -> dict[str, dict[str, Any]]:
        records = {}
        for url, (fingerprint, options) in self.inputs.items():
            accepted = sum(  # a simulator names each instrument: url#source
                n for o, n in counts.origins.items() if o == url or o.startswith(url + "#")
            )
            if accepted:
                sha = fingerprint or input_fingerprint(url)
                records[sha] = {
                    "input": url,
                    "options": options,
                    "accepted": accepted,
                    "run": self.run,
                    "sha256": sha,
                }
        return records

    def summary(self, counts: Counts, store: Store, commit: int | None) -> dict[str, Any]:
        return summary_dict(
            counts,
            run=self.run,
            commit=commit,
            capture=self.capture,
            store_url=store.uri(),
            finished=datetime.now().astimezone().isoformat(),
            **self.extra,
        )


def discard(store: Store, intent: Intent) -> None:
    """Delete what a run that lost its commit wrote: its files and its state folders."""
    for change in (intent.capture_change, *intent.changes):
        for f in change.adds:
            store.delete(f.path)
    run = intent.run
    store.delete(layout.capture_state_dir(intent.capture, run), recursive=True)
    for change in intent.changes:
        if change.table.startswith("views/"):
            view = change.table.split("/", 1)[1]
            store.delete(layout.view_state_dir(view, run), recursive=True)


def _outputs(
    counts: Counts,
) -> tuple[dict[str, list[DataFile]], dict[str, dict[int, StateRef]]]:
    """What the run's steps wrote, by table: data files, and each partition's state."""
    files: dict[str, list[DataFile]] = {}
    states: dict[str, dict[int, StateRef]] = {}
    for item in counts.outputs.values():
        if isinstance(item, DataFile):
            files.setdefault(item.table, []).append(item)
        elif isinstance(item, StateRef):
            states.setdefault(item.table, {})[item.part] = item
    return files, states


def _check_commit(files: Iterable[DataFile], n: int) -> None:
    """Every capture file of the run holds readings of commit ``n`` alone (the processes of a
    cluster all started from the same capture version)."""
    for f in files:
        stats = json.loads(f.stats)
        if {stats["minValues"].get("commit"), stats["maxValues"].get("commit")} != {n}:
            raise StoreError(
                f"{f.path} holds readings of another commit than #{n}: the processes of "
                "this run did not start from the same capture version; run it again"
            )
