"""Where everything lives in a store: every path, object name, visibility rule and schema.

Data folders hold data only, so ``**/*.parquet`` under any of them (pandas, pyarrow, DuckDB,
Polars, Spark) gives exactly its rows; obsflow's own bookkeeping lives under ``_obsflow/``::

    captures/<capture>/part-0003/<run>-<chunk>.parquet   readings (CAPTURE_SCHEMA)
    views/<view>/part-0003/<segment>.parquet             view rows (view_schema), one object per
                                                         partition and stretch of window starts
    late/<view>/<run>/part-0003-<chunk>.parquet           late readings (LATE_SCHEMA)
    deadletter/<run>/part-0000-<chunk>.parquet            rejected records (DEADLETTER_SCHEMA)
    documents/<capture>/<run>/part-0000-<chunk>.parquet   Bluesky documents (DOCUMENT_LOG_SCHEMA)
    payloads/ab/cd/<sha256>                               payload objects
    runs/<run>.json                                       run summaries
    _obsflow/layout.json                                  {"layout": 2}
    _obsflow/captures/<capture>/capture.json              partition count, created
    _obsflow/captures/<capture>/commits/0000000001.json   the commit log (capture order)
    _obsflow/captures/<capture>/lease.json                the run writing the capture now
    _obsflow/captures/<capture>/state/part-0003.*         next seq numbers, dedup memory
    _obsflow/captures/<capture>/inputs/<sha256>.json      inputs finished runs captured
    _obsflow/views/<view>/view.json                       definition, hash, capture
    _obsflow/views/<view>/state/part-0003.*.parquet       open windows, watermarks
    _obsflow/staging/<run>/<any of the above>             a run's outputs until it commits
    _obsflow/cluster/<run>.json                           a cluster run's prepared options

A run writes everything under ``_obsflow/staging/<run>/`` at the path it will have, and its
commit moves it into place (``connectors.commits``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from obsflow.connectors.ids import check_name
from obsflow.connectors.payload_format import PAYLOAD_SCHEMA
from obsflow.connectors.schema import (
    CONTEXT_SCHEMA,
    DOCUMENT_SCHEMA,
    READING_SCHEMA,
    REJECT_SCHEMA,
    TIME_TYPE,
    TRACE,
)

LAYOUT = 2
META = "_obsflow"
LAYOUT_DOC = f"{META}/layout.json"

CAPTURE_OBJECT_RE = re.compile(r"^(?P<run>[A-Za-z0-9_-]+)-(?P<chunk>\d{6})\.parquet$")
CHUNK_OBJECT_RE = re.compile(r"^part-(?P<part>\d{4})-(?P<chunk>\d{6})\.parquet$")
PART_DIR_RE = re.compile(r"^part-(?P<part>\d{4})$")

# -- schemas --------------------------------------------------------------------------------

CAPTURE_SCHEMA = pa.schema([*READING_SCHEMA, *PAYLOAD_SCHEMA, *CONTEXT_SCHEMA])
"""Capture objects: the reading schema plus payload references (null without a payload) and
context (null without). Every object has every column, so a plain folder read always sees
them; objects written before the context columns existed read with them null."""

LINEAGE = ("capture", "view_hash", "run")
LATE_SCHEMA = pa.schema(
    [*READING_SCHEMA, *(pa.field(c, pa.string()) for c in (TRACE, "view", "reason", "run"))]
)
DEADLETTER_SCHEMA = REJECT_SCHEMA.append(pa.field("run", pa.string())).append(
    pa.field(TRACE, pa.string())
)
"""Dead letters: the rejected record (its raw form holds all of it) with the run, and the
record's trace id, when it has one, in a column of its own."""
RESOLVED_SCHEMA = pa.schema(
    [
        pa.field("run", pa.string()),
        pa.field("origin", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("resolved_by", pa.string()),
    ]
)
"""A dead letter (its run, origin and row) and the retry run that captured it."""
DOCUMENT_LOG_SCHEMA = DOCUMENT_SCHEMA.append(pa.field("run", pa.string()))


def view_schema(aggregates: Sequence[str]) -> pa.Schema:
    """Columns of a view's rows: window keys, one column per aggregate, ``final``, lineage."""
    return pa.schema(
        [
            pa.field("source", pa.string()),
            pa.field("channel", pa.string()),
            pa.field("window_start", TIME_TYPE),
            pa.field("window_end", TIME_TYPE),
            *(pa.field(a, pa.int64() if a == "count" else pa.float64()) for a in aggregates),
            pa.field("first_seq", pa.int64()),  # the seq range of the readings summarized
            pa.field("last_seq", pa.int64()),
            pa.field("final", pa.bool_()),
            *(pa.field(c, pa.string()) for c in LINEAGE),
        ]
    )


# -- data -----------------------------------------------------------------------------------


def part_name(part: int) -> str:
    return f"part-{part:04d}"


def capture_dir(capture: str) -> str:
    return f"captures/{check_name(capture, kind='capture name')}"


def capture_part_dir(capture: str, part: int) -> str:
    return f"{capture_dir(capture)}/{part_name(part)}"


def capture_object(capture: str, part: int, run: str, chunk: int) -> str:
    return f"{capture_part_dir(capture, part)}/{check_name(run, kind='run id')}-{chunk:06d}.parquet"


def view_dir(view: str) -> str:
    return f"views/{check_name(view, kind='view name')}"


def view_part_dir(view: str, part: int) -> str:
    return f"{view_dir(view)}/{part_name(part)}"


def segment_name(start_ns: int) -> str:
    """Object name of the view segment whose window starts begin at ``start_ns`` (UTC)."""
    text = np.datetime_as_string(np.datetime64(int(start_ns), "ns"), unit="s")
    return text.replace("-", "").replace(":", "") + "Z.parquet"


def view_segment(view: str, part: int, start_ns: int) -> str:
    return f"{view_part_dir(view, part)}/{segment_name(start_ns)}"


def late_dir(view: str) -> str:
    return f"late/{check_name(view, kind='view name')}"


def documents_dir(capture: str) -> str:
    """Bluesky run and asset documents stored with a capture (``DOCUMENT_LOG_SCHEMA``), one log
    per run: ``documents/<capture>/<run>/part-0000-<chunk>.parquet``."""
    return f"documents/{check_name(capture, kind='capture name')}"


def deadletter_dir(run: str | None = None) -> str:
    return "deadletter" if run is None else f"deadletter/{check_name(run, kind='run id')}"


def archive_manifest(capture: str, run: str) -> str:
    """In an archive store: what an archive run moved there, from which store."""
    return (
        f"{META}/archives/{check_name(capture, kind='capture name')}/"
        f"{check_name(run, kind='run id')}.json"
    )


def deadletter_resolved(run: str | None = None) -> str:
    """Where a retry run records the dead letters it captured (bookkeeping: dead letters are
    never deleted; ``deadletters list`` hides the resolved ones)."""
    folder = f"{META}/deadletter-resolved"
    return folder if run is None else f"{folder}/{check_name(run, kind='run id')}.parquet"


def chunk_object(folder: str, run: str, part: int, chunk: int) -> str:
    """A chunk of an append-only record log (late readings, dead letters) of one run."""
    return f"{folder}/{check_name(run, kind='run id')}/{part_name(part)}-{chunk:06d}.parquet"


def run_summary(run: str) -> str:
    return f"runs/{check_name(run, kind='run id')}.json"


def visible(rel: str) -> bool:
    """A data object: Parquet, and no part of its path is bookkeeping or temporary."""
    return rel.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in rel.split("/"))


# -- bookkeeping ----------------------------------------------------------------------------


def capture_meta_dir(capture: str) -> str:
    return f"{META}/{capture_dir(capture)}"


def capture_doc(capture: str) -> str:
    return f"{capture_meta_dir(capture)}/capture.json"


def commits_dir(capture: str) -> str:
    return f"{capture_meta_dir(capture)}/commits"


def commit_doc(capture: str, n: int) -> str:
    return f"{commits_dir(capture)}/{n:010d}.json"


def commit_number(name: str) -> int | None:
    """The number of a commit document's name, None for anything else."""
    stem, dot, ext = name.partition(".")
    return int(stem) if dot and ext == "json" and stem.isdigit() and len(stem) == 10 else None


def lease_doc(capture: str) -> str:
    return f"{capture_meta_dir(capture)}/lease.json"


def capture_state(capture: str, part: int, suffix: str) -> str:
    """Per-partition bookkeeping of a capture: ``.json`` (next seq), ``.dedup.parquet``."""
    return f"{capture_meta_dir(capture)}/state/{part_name(part)}{suffix}"


def inputs_dir(capture: str) -> str:
    return f"{capture_meta_dir(capture)}/inputs"


def view_meta_dir(view: str) -> str:
    return f"{META}/{view_dir(view)}"


def view_doc(view: str) -> str:
    return f"{view_meta_dir(view)}/view.json"


def view_state(view: str, part: int, table: str) -> str:
    """One table of a view partition's saved window state (``series``, ``open``, ...)."""
    return f"{view_meta_dir(view)}/state/{part_name(part)}.{table}.parquet"


def staging_dir(run: str) -> str:
    return f"{META}/staging/{check_name(run, kind='run id')}"


def cluster_plan(run: str) -> str:
    """The options a cluster's process 0 prepared, for its other processes to run."""
    return f"{META}/cluster/{check_name(run, kind='run id')}.json"


def staged(run: str, rel: str) -> str:
    """Where a run writes ``rel`` until its commit moves it into place."""
    return f"{staging_dir(run)}/{rel}"
