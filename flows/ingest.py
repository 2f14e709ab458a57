"""Ingest: input files or simulated instruments -> a capture and windowed views.

Input: ``RawBatch`` micro-batches from ``FileSource``/``SimSource`` (or a ``TestingSource``).
Output: the capture ``<store>/captures/<name>/``, each view's final rows in
``<store>/views/<view>/`` (late readings in ``<store>/late/<view>/``), rejected records in
``<store>/deadletter/``, and a run summary ``<store>/runs/<run>.json``.
Guarantee: every input record is accounted for once: accepted, rejected (kept with a reason)
or a duplicate; ``input == accepted + rejected + duplicates``.

Run it with ``obsflow ingest ...`` or ``python -m bytewax.run "obsflow.flows.ingest:build_flow(
inputs=['x.parquet'], store='./data/store', capture='demo')"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from obsflow.connectors.batch import DEFAULT_BATCH_ROWS, RawBatch
from obsflow.connectors.capture import (
    PartitionWriter,
    WriterState,
    new_run_id,
    open_capture,
    split_by_partition,
)
from obsflow.connectors.dedup import DEFAULT_HORIZON
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.files import FileSource
from obsflow.connectors.ids import check_name
from obsflow.connectors.payloads import INLINE_LIMIT, PayloadStore
from obsflow.connectors.schema import InputSpec, normalize
from obsflow.connectors.simulator import SimSource
from obsflow.connectors.sinks import ChunkSink
from obsflow.connectors.store import DEFAULT_STORE, Store
from obsflow.flows.chunkstep import ChunkLogic, Step
from obsflow.flows.features import check_features
from obsflow.flows.payloadstep import offload_batch
from obsflow.flows.summary import Counts, add_summary
from obsflow.flows.viewdef import ViewDef, default_views, load_views
from obsflow.flows.viewstep import add_view


@dataclass(frozen=True)
class IngestConfig:
    """Everything an ingest run needs; plain data, validated on construction."""

    inputs: tuple[str, ...]
    store: str = DEFAULT_STORE
    capture: str = "default"
    spec: InputSpec = field(default_factory=InputSpec)
    partitions: int | None = None
    run_id: str = field(default_factory=new_run_id)
    batch_rows: int = DEFAULT_BATCH_ROWS
    progress: bool = True
    views: tuple[ViewDef, ...] | None = None  # None: default_views(capture)
    dedup_horizon: int = DEFAULT_HORIZON  # ns of event time; 0 turns deduplication off
    inline_limit: int = INLINE_LIMIT  # payloads up to this many bytes stay in the capture
    features: tuple[str, ...] = ()  # scalar features derived from each payload
    chunk_expiry: int = 60 * 10**9  # ns of event time a chunk set may stay incomplete

    def __post_init__(self) -> None:
        check_name(self.capture, kind="capture name")
        check_name(self.run_id, kind="run id")


def source_for(inputs: Iterable[str], batch_rows: int = DEFAULT_BATCH_ROWS) -> Source[RawBatch]:
    """A simulator for one ``sim://`` URL, else a file source over all inputs."""
    urls = list(inputs)
    sims = [u for u in urls if u.startswith("sim://")]
    if sims:
        if len(urls) != 1:
            raise ConfigError("a sim:// input cannot be combined with other inputs")
        return SimSource(sims[0])
    return FileSource(urls, batch_rows=batch_rows)


# -- per-batch logic (pure; tested without Bytewax) -----------------------------------------


def normalize_batch(spec: InputSpec, batch: RawBatch) -> tuple[pa.Table, pa.Table, Counts]:
    """Validate a raw batch: (readings with origin columns, rejects, counts delta)."""
    result = normalize(batch.table, spec, origin=batch.origin, offset=batch.offset)
    rejects = (
        pa.concat_tables([batch.rejects, result.rejects])
        if batch.rejects.num_rows
        else result.rejects
    )
    n = result.readings.num_rows
    readings = result.readings.append_column(
        "_origin",
        pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([batch.origin])),
    ).append_column("_row", pa.array(result.rows, pa.int64()))
    return (
        readings,
        rejects,
        Counts(input=batch.records, rejected=rejects.num_rows, reasons=reason_counts(rejects)),
    )


def offload(store: PayloadStore, features: tuple[str, ...], step: Step) -> Step:
    """Offload a partition batch's payloads (``flows.payloadstep``); count what it did."""
    readings = step.readings
    if readings.num_rows == 0 or "_payload" not in readings.column_names:
        return step
    n_payloads = readings.num_rows - readings.column("_payload").null_count
    before = readings.num_rows
    out, bad = offload_batch(readings, store, features)
    derived = out.num_rows - (before - bad.num_rows)
    rejects = pa.concat_tables([step.rejects, bad]) if bad.num_rows else step.rejects
    return Step(
        step.part,
        out,
        rejects,
        step.counts
        + Counts(
            input=derived,
            derived=derived,
            rejected=bad.num_rows,
            reasons=reason_counts(bad),
            payloads=n_payloads - bad.num_rows,
        ),
    )


def reason_counts(rejects: pa.Table) -> dict[str, int]:
    if rejects.num_rows == 0:
        return {}
    vc = pc.value_counts(rejects.column("reason"))
    return {str(r["values"]): int(r["counts"]) for r in vc.to_pylist()}


# -- stateful steps -----------------------------------------------------------------------------

PartTable = tuple[int, pa.Table]  # (capture partition, readings)


@dataclass(frozen=True)
class Captured:
    """What the capture step did with one batch of a partition."""

    part: int
    rows: pa.Table  # as written to the capture
    conflicts: pa.Table  # REJECT_SCHEMA
    duplicates: int

    @property
    def counts(self) -> Counts:
        n = self.conflicts.num_rows
        return Counts(
            accepted=self.rows.num_rows,
            duplicates=self.duplicates,
            rejected=n,
            reasons={"conflict": n} if n else {},
        )


class CaptureLogic(StatefulBatchLogic[PartTable, Captured, WriterState]):
    """Owns one capture partition: drops duplicates, sets conflicts aside, numbers readings and
    appends them to the partition's files.

    Emits the rows as captured, so everything downstream sees exactly the capture's content.
    Bytewax builds the logic without telling it its key, so the partition number travels with
    each item and the writer is made on the first batch (or from the resume state).
    """

    def __init__(
        self, store: Store, capture: str, run_id: str, horizon: int, resume: WriterState | None
    ) -> None:
        self.store, self.capture, self.run_id, self.horizon = store, capture, run_id, horizon
        self.writer: PartitionWriter | None = None
        if resume is not None:
            self.writer = PartitionWriter(store, capture, resume.part, resume.run_id, resume=resume)
            self.writer.discard_after(resume.chunk)  # objects written after the snapshot

    def on_batch(self, values: list[PartTable]) -> tuple[Iterable[Captured], bool]:
        if self.writer is None:
            self.writer = PartitionWriter(
                self.store, self.capture, values[0][0], self.run_id, horizon=self.horizon
            )
        out = []
        for part, table in values:
            a = self.writer.append(table)
            out.append(Captured(part, a.rows, a.conflicts, a.duplicates))
        return out, self.RETAIN

    def on_eof(self) -> tuple[Iterable[Captured], bool]:
        if self.writer is not None:
            self.writer.close()
        return [], self.RETAIN

    def snapshot(self) -> WriterState:
        assert self.writer is not None  # Bytewax snapshots only logics that have seen an item
        return self.writer.snapshot()


def build_flow(
    config: IngestConfig | None = None,
    *,
    source: Source[RawBatch] | None = None,
    sink: Sink[Any] | None = None,
    **options: Any,
) -> Dataflow:
    """The ingest dataflow. ``options`` build an ``IngestConfig`` when ``config`` is not given.

    ``source`` replaces the input (tests feed a ``TestingSource`` of ``RawBatch``); ``sink``
    receives the final ``("run", Counts)`` summary instead of the store's ``runs/`` folder.
    """
    if config is None:
        if "inputs" in options:
            options["inputs"] = tuple(options["inputs"])
        if isinstance(options.get("views"), str):
            options["views"] = load_views(options["views"])
        if isinstance(options.get("map"), str) or "time_unit" in options:
            options["spec"] = InputSpec.parse_map(
                options.pop("map", None), options.pop("time_unit", "ns")
            )
        config = IngestConfig(**options)
    store = Store(config.store)
    meta = open_capture(store, config.capture, partitions=config.partitions, create=True)
    spec, run_id = config.spec, config.run_id

    flow = Dataflow("ingest")
    raw = op.input("read_inputs", flow, source or source_for(config.inputs, config.batch_rows))
    # RawBatch
    checked = op.map("normalize", raw, lambda b: normalize_batch(spec, b))
    # (readings, rejects, Counts)
    pstore = PayloadStore(store, inline_limit=config.inline_limit)
    features = check_features(config.features) if config.features else ()
    routed = op.flat_map(
        "route_to_partitions",
        checked,
        lambda r: [(f"{p:04d}", (p, t)) for p, t in split_by_partition(r[0], meta.partitions)],
    )
    # ("0003", (3, readings of the sources in capture partition 3))
    assembled = op.stateful_batch(
        "reassemble_chunks", routed, lambda s: ChunkLogic(pstore, config.chunk_expiry, s)
    )
    # ("0003", Step(3, readings with chunk sets joined, rejects, Counts))
    prepared = op.map(
        "offload_payloads", assembled, lambda kv: (kv[0], offload(pstore, features, kv[1]))
    )
    # ("0003", Step(3, readings with payload references [+ derived features], rejects, Counts))
    ready = op.filter_map(
        "take_ready",
        prepared,
        lambda kv: (kv[0], (kv[1].part, kv[1].readings)) if kv[1].readings.num_rows else None,
    )
    outcome = op.stateful_batch(
        "capture",
        ready,
        lambda s: CaptureLogic(store, config.capture, run_id, config.dedup_horizon, s),
    )
    # ("0003", Captured(3, rows as written, conflicts, duplicates))
    captured = op.filter_map(
        "take_captured",
        outcome,
        lambda kv: (kv[0], (kv[1].part, kv[1].rows)) if kv[1].rows.num_rows else None,
    )
    # ("0003", (3, rows as written to the capture))
    rejects = op.merge(
        "merge_rejects",
        op.filter_map("take_rejects", checked, lambda r: ("0", r[1]) if r[1].num_rows else None),
        op.filter_map(
            "take_step_rejects",
            prepared,
            lambda kv: ("0", kv[1].rejects) if kv[1].rejects.num_rows else None,
        ),
        op.filter_map(
            "take_conflicts",
            outcome,
            lambda kv: ("0", kv[1].conflicts) if kv[1].conflicts.num_rows else None,
        ),
    )
    op.output("write_deadletters", rejects, ChunkSink(store, "deadletter", run_id))

    counts = op.merge(
        "merge_counts",
        op.map("count_input", checked, lambda r: r[2]),
        op.map("count_prepared", prepared, lambda kv: kv[1].counts),
        op.map("count_captured", outcome, lambda kv: kv[1].counts),
        *(
            add_view(
                captured,
                v,
                store=store,
                capture=config.capture,
                run_id=run_id,
                partitions=meta.partitions,
            )
            for v in (config.views if config.views is not None else default_views(config.capture))
        ),
    )
    add_summary(
        counts,
        store,
        run_id,
        "ingest",
        config.progress,
        sink,
        capture=config.capture,
        store_url=store.uri(),
    )
    return flow
