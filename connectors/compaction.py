"""Compaction: many small capture objects rewritten as a few large ones, as a commit.

A live session commits every second, so a capture collects one small object per partition and
second. ``compact`` rewrites each partition's run of small objects (in capture order) into
objects of up to ``target_rows`` readings — **one row group per small object**, in order — and
commits them as an entry of kind ``compact`` whose ``replaces`` maps each new object to the
objects it holds. Applying the commit moves the new objects into place and only then deletes
the small ones.

Readers never see a reading missing or twice: a new object's Parquet footer names the objects
it replaces (``REPLACES_KEY``), so a listing that finds the new object hides those
(``hidden_by_compaction``) — before the move the small objects are what is listed; after it,
the new one. Replay keeps each original commit's boundary: the commit log maps every small
object to its row group in the new object (``located``), so replay reads the same readings in
the same order with the same run ends. The commit holds no readings of its own.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow.parquet as pq

from obsflow.connectors import commits, layout
from obsflow.connectors.commits import Commit, Lease
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.partitions import conform
from obsflow.connectors.store import Store

REPLACES_KEY = b"obsflow.replaces"
COMPACT_PREFIX = "compact_"  # a compacted object's run-id-like prefix: compact_<run>


@dataclass(frozen=True)
class CompactResult:
    before: int  # capture objects compacted
    after: int  # objects written in their place
    rows: int
    commit: int | None


def located(log: Iterable[Commit]) -> dict[str, tuple[str, int]]:
    """Where each compacted object's readings are now: ``old -> (new object, row group)``.
    (Only single-row-group objects are compacted, so a new object is never compacted again.)"""
    return {
        old: (new, group)
        for entry in log
        for new, olds in entry.replaces.items()
        for group, old in enumerate(olds)
    }


def hidden_by_compaction(store: Store, folder: str, names: list[str]) -> set[str]:
    """The listed objects of ``folder`` that a listed compacted object replaces."""
    hidden: set[str] = set()
    for name in names:
        if name.startswith(COMPACT_PREFIX):
            meta = store.parquet_metadata(f"{folder}/{name}").metadata or {}
            if REPLACES_KEY in meta:
                hidden.update(json.loads(meta[REPLACES_KEY]))
    return hidden


def compact(
    store: Store, capture: str, run: str, *, target_rows: int = 1 << 20, small: int | None = None
) -> CompactResult:
    """Compact the capture's small single-row-group objects (under ``small`` rows, default a
    quarter of ``target_rows``), partition by partition, as one commit."""
    if target_rows < 2:
        raise ConfigError("--target-rows must be at least 2")
    small = small or max(1, target_rows // 4)
    lease = Lease.acquire_waiting(store, capture, run, wait=60.0)  # between two live cycles
    try:
        base = commits.head(store, capture)
        commits.finish_pending(store, capture=capture, keep=run)
        groups: list[list[str]] = []
        for _part, rels in sorted(commits.capture_objects(store, capture).items()):
            run_: list[str] = []
            rows = 0
            for rel in rels:
                md = store.parquet_metadata(rel)
                fits = md.num_row_groups == 1 and md.num_rows < small
                if fits and rows + md.num_rows <= target_rows:
                    run_.append(rel)
                    rows += md.num_rows
                    continue
                if len(run_) > 1:
                    groups.append(run_)
                run_, rows = ([rel], md.num_rows) if fits else ([], 0)
            if len(run_) > 1:
                groups.append(run_)
        if not groups:
            return CompactResult(0, 0, 0, None)
        commits.begin(store, run, capture)
        replaces: dict[str, list[str]] = {}
        total = 0
        for i, olds in enumerate(groups):
            folder = olds[0].rsplit("/", 1)[0]
            new = f"{folder}/{COMPACT_PREFIX}{run}-{i:06d}.parquet"
            data, n = _rewrite(store, olds)
            store.write_bytes(layout.staged(run, new), data)
            replaces[new] = olds
            total += n
        entry = commits.commit(
            store, capture, run, "compact", base=base, end_of_run=False, replaces=replaces
        )
        return CompactResult(sum(len(g) for g in groups), len(groups), total, entry.n)
    finally:
        lease.release()


def _rewrite(store: Store, olds: list[str]) -> tuple[bytes, int]:
    """The objects as one Parquet object, one row group each, naming them in its footer."""
    buf = io.BytesIO()
    writer: pq.ParquetWriter | None = None
    rows = 0
    names = [rel.rsplit("/", 1)[1] for rel in olds]
    for rel in olds:
        table = conform(store.read_parquet(rel))  # (objects of older versions lack columns)
        if writer is None:
            schema = table.schema.with_metadata(
                {**(table.schema.metadata or {}), REPLACES_KEY: json.dumps(names).encode()}
            )
            text = [f.name for f in schema if str(f.type) in ("string", "large_string")]
            writer = pq.ParquetWriter(buf, schema, compression="zstd", use_dictionary=text)
        writer.write_table(table.cast(writer.schema), row_group_size=max(1, table.num_rows))
        rows += table.num_rows
    assert writer is not None
    writer.close()
    return buf.getvalue(), rows
