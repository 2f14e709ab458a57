"""Dead-letter reprocessing: after fixing a mapping, ingest again what was rejected.

``retry`` takes a capture's open dead letters (those no earlier retry resolved), optionally of
one run or one reason, whose raw form is a record (a malformed line is text, not a record: it
cannot be read another way and stays open). It checks them with the new input spec first, the
same validation an ingest runs (``ingest.normalize_batch``), and ingests those that now pass as
a run of their own into the capture, so the views continue as after any ingest. The dead
letters that run took (accepted, or found already captured) are then marked resolved by it in
the table ``_obsflow/resolved/``: never deleted, and hidden from ``deadletters
list`` unless ``--all``. Those that still fail stay open, with their first reason.

So, per retry: retried = resolved + still rejected; a retry that finds nothing newly readable
writes nothing.

A dead letter is the capture's whose run rejected it (``reads.deadletter_captures``): a retry
never takes another capture's, and a run of another capture is refused.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from obsflow.connectors.batch import DEFAULT_BATCH_ROWS
from obsflow.connectors.datasets.capture import capture_exists, list_captures
from obsflow.connectors.datasets.reads import check_reason, deadletter_captures, read_deadletters
from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.formats.schema import InputSpec
from obsflow.connectors.sources.files import raw_batches
from obsflow.connectors.storage import layout, table_writes
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import TableChange
from obsflow.flows.pipeline import ingest, jobs

IDENTITY = ["run", "origin", "row"]  # what names a dead letter


def _record(raw: str | None) -> dict[str, Any] | None:
    """A dead letter's raw form as a record, or None (malformed text)."""
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass
class RetryResult:
    """What a retry did: ``retried`` = ``resolved`` + ``still_rejected``."""

    retried: int = 0
    resolved: int = 0
    still_rejected: int = 0
    captured: int = 0  # readings the run added (of the resolved)
    duplicates: int = 0  # readings the capture held already (the rest of the resolved)
    reasons: dict[str, int] = field(default_factory=dict)  # of the still rejected, as now
    not_records: int = 0  # malformed lines among the still rejected
    run: jobs.RunResult | None = None


def retry(
    config: ingest.IngestConfig,
    *,
    run: str | None = None,
    reason: str | None = None,
) -> RetryResult:
    """Ingest ``config.capture``'s open dead letters (of ``run``, of ``reason``) into it with
    ``config``'s spec and views; mark those it captured resolved (module docstring)."""
    store = Store(config.store)
    check_reason(store, reason)
    owners = deadletter_captures(store)
    owner = owners.get(run or "", config.capture)
    if owner != config.capture:
        raise ConfigError(
            f"run {run} is a run of capture {owner!r}, not {config.capture!r}: its dead "
            f"letters are retried with --capture {owner}"
        )
    if config.capture not in owners.values() and not capture_exists(store, config.capture):
        # (a name that is no capture: say which are, and which have dead letters only — runs
        # that accepted nothing create no capture)
        held = list_captures(store)
        only = sorted(set(owners.values()) - set(held))
        raise StoreError(
            f"no capture {config.capture!r} in {store.uri()} (captures: "
            f"{', '.join(held) or 'none'}"
            + (f"; dead letters only: {', '.join(only)})" if only else ")")
        )
    dead = read_deadletters(store, run=run, reason=reason, capture=config.capture, unresolved=True)
    out = RetryResult(retried=dead.num_rows)
    if not dead.num_rows:
        return out
    records = [_record(r) for r in dead.column("raw").to_pylist()]
    readable = [i for i, r in enumerate(records) if r is not None]
    out.not_records = dead.num_rows - len(readable)
    with tempfile.TemporaryDirectory(prefix="obsflow-retry-") as tmp:
        path = Path(tmp) / "deadletters.jsonl"
        path.write_text("".join(json.dumps(records[i]) + "\n" for i in readable))
        passing, reasons = _check(path, config.spec)
        out.reasons = reasons
        if out.not_records:
            out.reasons["malformed"] = out.reasons.get("malformed", 0) + out.not_records
        if not passing:
            out.still_rejected = dead.num_rows
            return out
        # Only the records that pass now, so that the run's own dead letters are not the
        # still-failing ones over again.
        chosen = [readable[i] for i in passing]
        path.write_text("".join(json.dumps(records[i]) + "\n" for i in chosen))
        result = jobs.execute(replace(config, inputs=(str(path),)), force=True)
    assert result.run is not None
    # Records the run rejected after all (a conflict with what the capture holds) stay open.
    again = read_deadletters(store, run=result.run)
    rejected_rows = set(again.column("row").to_pylist()) if again.num_rows else set()
    took = [c for n, c in enumerate(chosen) if n not in rejected_rows]
    _count_reasons(again, out.reasons)
    if took:
        marks = dead.select(IDENTITY).take(pa.array(took, pa.int64()))
        marks = marks.append_column("resolved_by", pa.array([result.run] * len(took)))
        rel = layout.log_file(layout.RESOLVED_DIR, result.run, 0, 0)
        file = table_writes.write_file(
            store, layout.RESOLVED_DIR, rel, marks.cast(layout.RESOLVED_SCHEMA), layout.STATS
        )
        change = TableChange(
            layout.RESOLVED_DIR,
            layout.RESOLVED_SCHEMA,
            adds=[file],
            description={"kind": "resolved"},
        )
        table_writes.commit(store, change, app=config.capture, n=int(result.summary["commit"]))
    out.resolved = len(took)
    out.captured = int(result.summary["accepted"])
    out.duplicates = int(result.summary["duplicates"])
    out.still_rejected = dead.num_rows - len(took)
    summary = dict(result.summary)
    summary["retry"] = {
        "of_run": run,
        "of_reason": reason,
        "retried": out.retried,
        "resolved": out.resolved,
        "still_rejected": out.still_rejected,
    }
    store.write_json(layout.run_summary(result.run), summary)
    out.run = replace(result, summary=summary)
    return out


def _check(path: Path, spec: InputSpec) -> tuple[list[int], dict[str, int]]:
    """Which records of a JSON-lines file pass validation with ``spec`` (their indexes), and
    the reasons of those that do not."""
    passing: list[int] = []
    reasons: dict[str, int] = {}
    with path.open("rb") as f:
        for batch in raw_batches(str(path), f, DEFAULT_BATCH_ROWS, None):
            _, rejects, _ = ingest.normalize_batch(spec, batch)
            bad = set(rejects.column("row").to_pylist())
            end = batch.offset + batch.table.num_rows
            passing += [row for row in range(batch.offset, end) if row not in bad]
            _count_reasons(rejects, reasons)
    return passing, reasons


def _count_reasons(rejects: pa.Table, into: dict[str, int]) -> None:
    for row in rejects.group_by("reason").aggregate([("reason", "count")]).to_pylist():
        into[row["reason"]] = into.get(row["reason"], 0) + row["reason_count"]
