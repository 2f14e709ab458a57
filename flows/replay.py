"""Replay: rebuild views from a capture, deterministically, at full speed or paced.

Input: the capture ``<store>/captures/<name>/`` read by ``CaptureSource`` in stored order.
Output: each listed view rebuilt in ``<store>/staging/<run>/`` and swapped into
``<store>/views/<view>/`` (and ``late/<view>/``) only when the run succeeds; a run summary.
Guarantee: the same capture and definitions give the same rows, for any worker or process
count and any speed; an interrupted replay leaves the previous views intact.

Run it with ``obsflow replay ...`` or, e.g. on two processes,
``python -m bytewax.run "obsflow.flows.replay:build_flow(store='s3://b/p', capture='c',
views='views.toml', run_id='r1')" -i 0 -a "h1:2101;h2:2101"`` on each host, then
``obsflow replay --commit r1`` once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from obsflow.connectors.capture import new_run_id, open_capture, partition_of
from obsflow.connectors.capture_source import (
    CaptureSource,
    ReplayBatch,
    ReplaySpec,
    partition_files,
)
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.ids import check_name
from obsflow.connectors.schema import to_utc
from obsflow.connectors.store import DEFAULT_STORE, Store
from obsflow.connectors.views import list_views, stage_commit, view_doc
from obsflow.flows.summary import Counts, add_summary
from obsflow.flows.viewdef import ViewDef, load_views
from obsflow.flows.viewstep import ViewTarget, add_view


def parse_time(text: str | None, what: str) -> int | None:
    """ISO-8601 (naive = UTC) to ns since the epoch."""
    return None if text is None else int(to_utc(text, what).value)


def parse_speed(text: str | float | None) -> float | None:
    """``"max"`` (or None) -> None; ``"10"`` -> 10.0."""
    if text is None or text == "max":
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--speed {text!r} — use max or a positive number like 1 or 10") from None


def stored_views(store: Store, capture: str) -> tuple[ViewDef, ...]:
    """The definitions of the views currently built from ``capture``."""
    return tuple(
        ViewDef(**{**m["definition"], "aggregates": tuple(m["definition"]["aggregates"])})
        for m in list_views(store)
        if m.get("capture") == capture
    )


@dataclass(frozen=True)
class ReplayConfig:
    """A replay run; plain data, validated on construction."""

    capture: str
    views: tuple[ViewDef, ...]
    store: str = DEFAULT_STORE
    sources: tuple[str, ...] = ()
    start: str | None = None
    until: str | None = None
    speed: float | None = None
    run_id: str = field(default_factory=new_run_id)
    progress: bool = True
    batch_rows: int = 65_536

    def __post_init__(self) -> None:
        check_name(self.capture, kind="capture name")
        check_name(self.run_id, kind="run id")
        if not self.views:
            raise ConfigError(f"no views to replay for capture {self.capture!r}: give --views FILE")
        names = [v.name for v in self.views]
        if len(set(names)) != len(names):
            raise ConfigError(f"view names must be unique, got {names}")

    @property
    def spec(self) -> ReplaySpec:
        return ReplaySpec(
            self.capture,
            self.sources,
            parse_time(self.start, "--from"),
            parse_time(self.until, "--until"),
            self.speed,
            self.batch_rows,
        )


def capture_rows(store: Store, capture: str, sources: tuple[str, ...] = ()) -> int:
    """Readings in a capture (or in the partitions of ``sources``), from Parquet footers."""
    meta = open_capture(store, capture)
    parts = (
        set(partition_of(pa.array(sources), meta.partitions).tolist())
        if sources
        else set(range(meta.partitions))
    )
    rows = 0
    for p in sorted(parts):
        for rel in partition_files(store, capture, p):
            with store.fs.open(store.path(rel), "rb") as fh:
                rows += pq.ParquetFile(fh).metadata.num_rows
    return rows


def build_flow(
    config: ReplayConfig | None = None,
    *,
    source: Source[ReplayBatch] | None = None,
    sink: Sink[Any] | None = None,
    **options: Any,
) -> Dataflow:
    """The replay dataflow. ``options`` build a ``ReplayConfig`` when ``config`` is not given;
    ``views`` may be a TOML path, and defaults to the views already built from the capture."""
    if config is None:
        store = Store(options.get("store", DEFAULT_STORE))
        views = options.get("views")
        if views is None:
            views = stored_views(store, options["capture"])
        elif isinstance(views, str):
            views = load_views(views)
        options["views"] = tuple(views)
        if "sources" in options:
            options["sources"] = tuple(options["sources"])
        options["speed"] = parse_speed(options.get("speed"))
        config = ReplayConfig(**options)
    store = Store(config.store)
    meta = open_capture(store, config.capture)
    spec = config.spec
    target = ViewTarget.staging(config.run_id)

    flow = Dataflow("replay")
    batches = op.input("read_capture", flow, source or CaptureSource(store, spec))
    # (3, readings of capture partition 3, in stored order)
    keyed = op.map("key_by_partition", batches, lambda pt: (f"{pt[0]:04d}", pt))
    # ("0003", (3, readings))
    counts = op.merge(
        "merge_counts",
        op.map(
            "count_read", batches, lambda pt: Counts(input=pt[1].num_rows, accepted=pt[1].num_rows)
        ),
        *(
            add_view(
                keyed,
                v,
                store=store,
                capture=config.capture,
                run_id=config.run_id,
                partitions=meta.partitions,
                target=target,
            )
            for v in config.views
        ),
    )
    total = capture_rows(store, config.capture, config.sources) if config.progress else None
    add_summary(
        counts,
        store,
        config.run_id,
        "replay",
        config.progress,
        sink,
        total=total,
        capture=config.capture,
        store_url=store.uri(),
        mode="replay",
        views_replayed=[v.name for v in config.views],
    )
    return flow


def commit(config: ReplayConfig) -> None:
    """Swap the staged views of a finished replay into place."""
    stage_commit(
        Store(config.store),
        config.run_id,
        [view_doc(v.name, v.definition, v.hash, config.capture) for v in config.views],
    )
