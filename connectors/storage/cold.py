"""Archiving: old capture files moved to another store (cold storage), as a commit.

``archive`` moves every capture file whose readings all lie before a time to another store,
at the same path there. It copies each file, reads the copy back and compares its sha256
before anything else; writes a manifest in the archive store
(``_obsflow/archives/<capture>/<run>.json``: each file's path, sha256, size, rows and time
span, and the store it came from); then commits the capture's next number, of kind
``archive``: the files leave the capture table (removed in that version; the next ``vacuum``
past the time-travel retention deletes them from the store) and the commit records where each
went.

Replay reads the commit log, so it finds archived files where the log says they are and reads
the capture as before, same readings, same order, same run ends (``capture_source``). Views
keep their rows: archiving touches no view.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow.parquet as pq

from obsflow.connectors.datasets.capture import CAPTURE_STORED, capture_snapshot
from obsflow.connectors.datasets.dedup_index import group_spans, time_span
from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.storage import commits, layout
from obsflow.connectors.storage.commits import Commit, Intent
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import TableChange


@dataclass(frozen=True)
class ArchiveResult:
    objects: int  # capture objects moved
    rows: int
    bytes: int
    commit: int | None
    manifest: str | None  # its URL in the archive store


def _span(md: pq.FileMetaData) -> tuple[int, int] | None:
    """(min, max) event time of a capture object from its footer; None unless every row group
    has statistics (an object is archived only when all of it is known to be old)."""
    spans = group_spans(md)
    return None if None in spans else time_span([md])


def archive(store: Store, capture: str, run: str, *, before: int, to: Store) -> ArchiveResult:
    """Move the capture's objects whose readings are all older than ``before`` (ns) to ``to``
    (see the module docstring)."""
    # (compared as resolved: "./data/store" and its absolute path are one store, and moving
    # objects onto themselves would delete them)
    if (to.scheme, to.root.rstrip("/")) == (store.scheme, store.root.rstrip("/")):
        raise ConfigError(f"--to {to.uri()} is the capture's own store: give another one")
    base, state = commits.capture_base(store, capture, None)  # (pending commits completed)
    snap = capture_snapshot(store, capture)
    files = [] if snap is None else [f.path for f in snap.files]
    footers = {rel: store.parquet_metadata(rel) for rel in files}
    spans = {rel: _span(md) for rel, md in footers.items()}
    chosen = [rel for rel, span in spans.items() if span is not None and span[1] < before]
    if not chosen:
        return ArchiveResult(0, 0, 0, None, None)
    entries = []
    for rel in chosen:
        data = store.read_bytes(rel)
        digest = hashlib.sha256(data).hexdigest()
        if to.exists(rel):  # an earlier attempt that did not commit, or a clash
            if hashlib.sha256(to.read_bytes(rel)).hexdigest() != digest:
                raise StoreError(
                    f"{to.uri(rel)} exists with other contents: not overwritten; "
                    "archive to another store"
                )
        else:
            to.write_bytes(rel, data)
        if hashlib.sha256(to.read_bytes(rel)).hexdigest() != digest:
            raise StoreError(f"the copy at {to.uri(rel)} differs from the original")
        span = spans[rel]
        assert span is not None
        entries.append(
            {
                "path": rel,
                "sha256": digest,
                "bytes": len(data),
                "rows": footers[rel].num_rows,
                "min_time": span[0],
                "max_time": span[1],
            }
        )
    manifest = layout.archive_manifest(capture, run)
    to.write_json(
        manifest,
        {
            "capture": capture,
            "run": run,
            "from_store": store.url,
            "before": before,
            "objects": entries,
        },
    )
    commit = Commit(
        n=base + 1,
        run=run,
        kind="archive",
        end_of_run=False,
        created=commits.now(),
        state=state,
        archived={rel: to.url for rel in chosen},
    )
    change = TableChange(layout.capture_dir(capture), CAPTURE_STORED, removes=sorted(chosen))
    entry = commits.commit_run(store, Intent(capture, commit, change))
    return ArchiveResult(
        len(chosen),
        sum(e["rows"] for e in entries),
        sum(e["bytes"] for e in entries),
        entry.n,
        to.uri(manifest),
    )
