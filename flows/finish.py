"""The end of a run: commit what it staged, record what it captured, write its summary.

``Finish`` is built with the dataflow and called once, by the summary step, with the run's
final counts — after every step upstream has staged all it wrote. So a run finishes the same
way however it is run: by the ``obsflow`` command, from Python, or by ``python -m bytewax.run``
on several processes. It stages the documents the commit must bring in (a new capture's, the
views', the inputs captured), commits (``connectors.commits``), and writes
``runs/<run>.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from obsflow.connectors import commits, layout
from obsflow.connectors.capture import (
    CaptureMeta,
    input_fingerprint,
    stage_capture_doc,
    stage_inputs,
)
from obsflow.connectors.store import Store
from obsflow.connectors.views import stage_view_doc
from obsflow.flows.summary import Counts, summary_dict


@dataclass(frozen=True)
class Finish:
    """What a run commits when its dataflow ends. Plain data: it travels with the flow.

    ``base`` is the capture's last commit when the run was prepared (None: not prepared, so
    no concurrent-writer check). ``inputs`` maps each input URL to its fingerprint (None: not
    known, computed here) and the options it was read with; an input is recorded as captured
    only if the run accepted readings from it.
    """

    store: str
    capture: str
    run: str
    kind: str  # ingest | replay
    base: int | None
    capture_meta: CaptureMeta | None = None  # a capture this run creates
    views: tuple[dict[str, Any], ...] = ()  # view documents to bring in
    replaced_views: tuple[str, ...] = ()
    inputs: dict[str, tuple[str | None, dict[str, Any]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __call__(self, counts: Counts) -> dict[str, Any]:
        store = Store(self.store)
        commits.begin(store, self.run, self.capture)
        if self.capture_meta is not None:
            stage_capture_doc(store, self.run, self.capture_meta)
        for doc in self.views:
            stage_view_doc(store, self.run, doc)
        records = {}
        for url, (fingerprint, options) in self.inputs.items():
            accepted = sum(  # a simulator names each instrument: url#source
                n for o, n in counts.origins.items() if o == url or o.startswith(url + "#")
            )
            if accepted:
                sha = fingerprint or input_fingerprint(url)
                records[sha] = {"input": url, "options": options, "accepted": accepted}
        stage_inputs(store, self.capture, self.run, records)
        # The summary is part of the commit (moved into place with the outputs): a run killed
        # just after committing still has it, and its rerun reports what it did.
        expected = None if self.base is None else self.base + 1
        doc = self.summary(counts, store, expected)
        store.write_json(layout.staged(self.run, layout.run_summary(self.run)), doc)
        entry = commits.commit(
            store,
            self.capture,
            self.run,
            self.kind,
            base=self.base,
            replaced_views=self.replaced_views,
            rows=counts.accepted if self.kind == "ingest" else 0,
        )
        if entry.n != expected:  # (no base: the number is known only now)
            doc = self.summary(counts, store, entry.n)
            store.write_json(layout.run_summary(self.run), doc)
        return doc

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
