"""Archiving: old capture objects moved to another store (cold storage), as a commit.

``archive`` moves every capture object whose readings all lie before a time to another store,
at the same path there, so a plain folder read of the archive works as one of the capture. It
copies each object, reads the copy back and compares its sha256 before anything else; writes a
manifest in the archive store (``_obsflow/archives/<capture>/<run>.json``: each object's path,
sha256, size, rows and time span, and the store it came from); then commits an entry of kind
``archive`` whose ``archived`` maps each object to the archive store's URL. Applying the
commit deletes the objects from the capture's store, and only then.

Replay reads the commit log, so it finds archived objects where the log says they are and
reads the capture as before, same readings, same order, same run ends (``capture_source``).
Views keep their rows: archiving touches no view.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow.parquet as pq

from obsflow.connectors import commits, layout
from obsflow.connectors.archive import group_spans, time_span
from obsflow.connectors.commits import Lease
from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.store import Store


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
    lease = Lease.acquire_waiting(store, capture, run, wait=60.0)
    try:
        base = commits.head(store, capture)
        commits.finish_pending(store, capture=capture, keep=run)
        footers = {
            rel: store.parquet_metadata(rel)
            for rels in commits.capture_objects(store, capture).values()
            for rel in rels
        }
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
        commits.begin(store, run, capture)
        entry = commits.commit(
            store,
            capture,
            run,
            "archive",
            base=base,
            end_of_run=False,
            archived={rel: to.url for rel in chosen},
        )
        return ArchiveResult(
            len(chosen),
            sum(e["rows"] for e in entries),
            sum(e["bytes"] for e in entries),
            entry.n,
            to.uri(manifest),
        )
    finally:
        lease.release()
