"""Ingest: input files or simulated instruments -> a capture and windowed views.

Input: ``RawBatch`` micro-batches from ``FileSource``/``SimSource`` (or a ``TestingSource``).
Output, committed together when the run ends (``flows.pipeline.finish``): the capture's new files
in the Delta table ``<store>/captures/<name>/``, each view's rows in ``<store>/views/<view>/`` (late
readings in ``<store>/late/<view>/``), rejected records in ``<store>/deadletter/``, and a run
summary ``<store>/runs/<run>.json``. One Delta commit per table, each carrying the run's number.
Guarantee: every input record is accounted for once: accepted, rejected (kept with a reason)
or a duplicate; ``input == accepted + rejected + duplicates``; exactly once with recovery.

``build_flow`` only builds the graph; it writes nothing. Run it with ``obsflow ingest ...``,
from Python with ``obsflow.flows.pipeline.jobs.ingest``, or with ``python -m bytewax.run
"obsflow.flows.pipeline.ingest:build_flow(inputs=['x.parquet'], store='./data/store',
capture='demo', run_id='r1')" -w 2`` (give every process the same ``run_id``).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import bytewax.operators as op
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source

from obsflow.connectors.algorithms.dedup import DEFAULT_HORIZON
from obsflow.connectors.algorithms.partitions import split_by_partition
from obsflow.connectors.batch import DEFAULT_BATCH_ROWS, RawBatch
from obsflow.connectors.datasets.capture import (
    CaptureMeta,
    capture_exists,
    capture_snapshot,
    captured_inputs,
    input_fingerprint,
    new_run_id,
    planned_capture,
)
from obsflow.connectors.datasets.views import check_view, view_base, view_doc
from obsflow.connectors.errors import ConfigError, ObsflowError
from obsflow.connectors.formats import parquet_files
from obsflow.connectors.formats.normalize import normalize
from obsflow.connectors.formats.registry import format_of, not_text
from obsflow.connectors.formats.schema import MAX_CONTEXT_CHARS, MAX_RECORD_BYTES, TRACE, InputSpec
from obsflow.connectors.ids import check_name
from obsflow.connectors.payloads.format import INLINE_LIMIT
from obsflow.connectors.payloads.offload import PayloadStore
from obsflow.connectors.sources.bluesky.documents import SETTLED
from obsflow.connectors.sources.bluesky.io import BlueskyInput, stored_documents
from obsflow.connectors.sources.files import FileSource, open_input, raw_batches
from obsflow.connectors.sources.simulator import SimSource
from obsflow.connectors.storage import layout
from obsflow.connectors.storage.store import DEFAULT_STORE, Store
from obsflow.flows.kernels.features import check_features
from obsflow.flows.kernels.viewdef import (
    ViewDef,
    default_views,
    stored_views,
    views_option,
    with_lateness,
)
from obsflow.flows.pipeline.finish import Finish
from obsflow.flows.pipeline.runner import (
    DEFAULT_WIRING,
    Wiring,
    check_cluster_run_id,
    entry_point,
    on_base,
)
from obsflow.flows.steps.capture import CaptureLogic
from obsflow.flows.steps.chunks import ChunkLogic, Step
from obsflow.flows.steps.logs import write_log
from obsflow.flows.steps.payloads import offload_batch
from obsflow.flows.steps.routing import partition_key
from obsflow.flows.steps.summary import Counts, summarize
from obsflow.flows.steps.views import window_view


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
    views: tuple[ViewDef, ...] | None = None  # None: the capture's views (see planned_views)
    lateness: int | None = None  # ns; overrides the views' lateness
    dedup_horizon: int = DEFAULT_HORIZON  # ns of event time; 0 turns deduplication off
    inline_limit: int = INLINE_LIMIT  # payloads up to this many bytes stay in the capture
    features: tuple[str, ...] = ()  # scalar features derived from each payload
    chunk_expiry: int = 60 * 10**9  # ns of event time a chunk set may stay incomplete
    base: int | None = None  # the capture's last commit when the run was prepared
    fingerprints: tuple[tuple[str, str], ...] = ()  # (input, sha256) known before the run
    # A live cycle (flows.pipeline.live): ``inputs`` names the broker, the readings come from the
    # source given to build_flow, and no input is fingerprinted, skipped or recorded.
    live: bool = False
    # "bluesky": every input is a Bluesky document stream (connectors.sources.bluesky.io), whose
    # external files are found through ``root_map`` (old prefix -> new) and waited for
    # ``external_wait`` seconds when missing.
    format: str | None = None
    root_map: tuple[tuple[str, str], ...] = ()
    external_wait: float = 10.0
    external_roots: tuple[str, ...] = ()  # external files only from under these (empty: any)
    # A live cycle's broker positions (txn application id -> next position) and its session's
    # fence, recorded with and checked by its commit (``flows.pipeline.live``).
    positions: tuple[tuple[str, int], ...] = ()
    fence: tuple[str, int] | None = None

    def __post_init__(self) -> None:
        check_name(self.capture, kind="capture name")
        check_name(self.run_id, kind="run id")
        if self.format not in (None, "bluesky"):
            raise ConfigError(
                f"input format {self.format!r}: files are read by extension or as bluesky documents"
            )
        if (self.root_map or self.external_roots) and self.format != "bluesky":
            raise ConfigError(
                "--root-map and --external-root are for Bluesky documents (--format bluesky)"
            )
        if not self.external_wait >= 0:
            raise ConfigError("--external-wait must be zero or more seconds")

    kind: ClassVar[str] = "ingest"

    def flow(self, wiring: Wiring = DEFAULT_WIRING) -> Dataflow:
        """The run's dataflow (``build_flow``)."""
        return dataflow(self, wiring)

    def planned(self, store: Store, *, force: bool) -> tuple[IngestConfig, list[tuple[str, str]]]:
        """The run to do: without the inputs a committed run captured with the same options
        (unless ``force``; a live cycle has none), its views checked before it begins; and
        the inputs skipped, each with the run that captured it."""
        if self.live:
            return self, []
        fingerprints = {url: input_fingerprint(url) for url in dict.fromkeys(self.inputs)}
        known = {} if force else captured_inputs(store, self.capture)
        signature = self.input_signature()
        todo, skipped = [], []
        for url, fp in fingerprints.items():
            record = known.get(fp)
            if record is not None and record.get("options", signature) == signature:
                skipped.append((url, str(record.get("run"))))
            else:
                todo.append(url)
        if not self.format:
            refuse_unreadable(todo)
        config = replace(
            self, inputs=tuple(todo), fingerprints=tuple((u, fingerprints[u]) for u in todo)
        )
        if config.inputs:
            planned_views(store, config)  # refuses a bad view before it begins
            if self.format is None:
                for url in config.inputs:
                    check_columns_first(url, self.spec)
        return config, skipped

    def idle(self) -> bool:
        """Whether the run has nothing to read (every input captured already)."""
        return not self.inputs

    def input_signature(self) -> dict[str, Any]:
        """What shapes the readings read from an input (recorded with inputs captured)."""
        signature = self.spec.signature()
        if self.format:  # (only when given: older runs' signatures stay comparable)
            signature["format"] = self.format
        return signature

    def bluesky_input(self, store: Store) -> BlueskyInput | None:
        """How this run reads Bluesky documents: primed with those the capture holds."""
        if self.format != "bluesky":
            return None
        return BlueskyInput(
            prime=stored_documents(store, self.capture, notes=True),
            root_map=self.root_map,
            wait=self.external_wait,
            allowed=self.external_roots,
        )

    @classmethod
    def from_options(cls, **options: Any) -> IngestConfig:
        """A config from ``build_flow``'s keyword arguments, as ``bytewax.run`` passes them:
        ``views`` may be a TOML path or a list of definitions, ``map`` as on the command line
        (``"source=id,time=t"``) or a dict."""
        check_cluster_run_id(options)
        for name in ("inputs", "features", "external_roots"):
            if name in options:
                options[name] = tuple(options[name])
        options["views"] = views_option(options.get("views"), options.get("capture", "default"))
        if options.get("fence") is not None:
            options["fence"] = tuple(options["fence"])
        for name in ("fingerprints", "root_map", "positions"):
            if name in options:
                options[name] = tuple(tuple(x) for x in options[name])
        spec_keys = ("map", "time_unit", "channels", "delimiter", "max_record_size", "decimal")
        if any(k in options for k in spec_keys):
            options["spec"] = InputSpec.parse_map(
                options.pop("map", None),
                options.pop("time_unit", None),
                channels=options.pop("channels", None),
                delimiter=options.pop("delimiter", None),
                max_record_size=options.pop("max_record_size", MAX_RECORD_BYTES),
                decimal=options.pop("decimal", None),
            )
        return cls(**options)

    def options(self) -> dict[str, Any]:
        """``build_flow`` keyword arguments that rebuild this config, literals only (what
        ``python -m bytewax.run`` accepts)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "spec"}
        out.update(
            inputs=list(self.inputs),
            map=dict(self.spec.mapping),
            time_unit=self.spec.time_unit,
            channels=list(self.spec.channels),
            delimiter=self.spec.delimiter,
            max_record_size=self.spec.max_record_size,
            decimal=self.spec.decimal,
            views=None if self.views is None else [v.definition for v in self.views],
            features=list(self.features),
            fingerprints=[list(x) for x in self.fingerprints],
            root_map=[list(x) for x in self.root_map],
            positions=[list(x) for x in self.positions],
            fence=None if self.fence is None else list(self.fence),
            external_roots=list(self.external_roots),
        )
        return out


def refuse_unreadable(urls: Iterable[str]) -> None:
    """``ConfigError`` for an input that is no file of its format at all, before a run reads
    any (a refusal, not a run that fails after others were read): a Parquet file without a
    footer; a CSV or JSON-lines file that is no UTF-8 text (``registry.not_text``). (A file
    whose footer reads but whose pages are corrupt: its records are dead letters.)"""
    for url in urls:
        if url.startswith("sim://"):
            continue
        name = format_of(url).name
        if name not in ("parquet", "csv", "jsonl"):
            continue
        with open_input(url) as f:
            if name == "parquet":
                why = parquet_files.unreadable(f)
                if why is not None:
                    raise ConfigError(
                        f"{url} is not a Parquet file ({why.rstrip('.')}): was it copied "
                        "whole, and is it Parquet? (a file's extension chooses how it is read)"
                    )
                continue
            why = not_text(url, f.read(1 << 16))
        if why is not None:
            raise ConfigError(f"{url} cannot be read as {name}: {why}")


def source_for(
    inputs: Iterable[str],
    batch_rows: int = DEFAULT_BATCH_ROWS,
    delimiter: str | None = None,
    bluesky: BlueskyInput | None = None,
    max_record_size: int = MAX_RECORD_BYTES,
) -> Source[RawBatch]:
    """A simulator for one ``sim://`` URL, else a file source over all inputs."""
    urls = list(inputs)
    sims = [u for u in urls if u.startswith("sim://")]
    if sims:
        if len(urls) != 1 or bluesky:
            raise ConfigError("a sim:// input cannot be combined with other inputs or formats")
        return SimSource(sims[0])
    return FileSource(
        urls,
        batch_rows=batch_rows,
        delimiter=delimiter,
        bluesky=bluesky,
        max_record_size=max_record_size,
    )


FIXED_COLUMNS = ("csv", "parquet")
"""Formats whose columns are known before the records are read (CSV's header, the schema)."""


def check_columns_first(url: str, spec: InputSpec, rows: int = 64) -> None:
    """Refuse, before anything is read or written, a column named by ``--map`` or
    ``--channels`` that an input does not have — for formats whose columns are fixed
    (``FIXED_COLUMNS``; a JSON-lines record has its own). An input that cannot be read at
    all is left to the run, which says so in its own words."""
    named = {**{f"--map {f}={c}": c for f, c in spec.mapping.items()}}
    named.update({f"--channels {c}": c for c in spec.channels})
    if not named or url.startswith("sim://") or format_of(url).name not in FIXED_COLUMNS:
        return
    local = url.removeprefix("file://")
    if "://" not in local and not (os.path.exists(local) and stat.S_ISREG(os.stat(local).st_mode)):
        return
    try:
        with open_input(url) as f:
            first = next(iter(raw_batches(url, f, rows, spec.delimiter, spec.max_record_size)))
    except (OSError, ValueError, StopIteration, ObsflowError):
        return
    have = first.table.column_names
    for option, column in named.items():
        if column not in have:
            raise ConfigError(
                f"{url}: {option} names no column of it (columns: {', '.join(have) or 'none'})"
                " — nothing was read"
            )


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
        # A wide record counts as the readings it holds (one per numeric cell).
        Counts(
            input=batch.rejects.num_rows + result.input,
            rejected=rejects.num_rows,
            reasons=reason_counts(rejects),
            epoch_units={result.epoch_unit: result.input} if result.epoch_unit else {},
            records=batch.records,
        ),
    )


def offload(store: PayloadStore, features: tuple[str, ...], step: Step) -> Step:
    """Offload a partition batch's payloads (``flows.steps.payloads``); count what it did."""
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


def with_trace(rejects: pa.Table, spec: InputSpec) -> pa.Table:
    """Rejected records with the trace id their raw record holds (its ``trace_id`` field, or
    the one ``--map trace_id=...`` names), as a column; null where there is none. Only records
    whose raw text names the field are parsed."""
    column = spec.column(TRACE)
    ids: list[str | None] = [None] * rejects.num_rows
    raw = rejects.column("raw")
    named = pc.fill_null(pc.match_substring(raw, json.dumps(column)), False)
    for i in np.flatnonzero(named.to_numpy(zero_copy_only=False)):
        try:
            record = json.loads(raw[int(i)].as_py())
        except ValueError:  # a malformed line that happens to contain the name
            continue
        value = record.get(column) if isinstance(record, dict) else None
        if value is not None:
            ids[int(i)] = str(value)[:MAX_CONTEXT_CHARS]
    return rejects.append_column(TRACE, pa.array(ids, pa.string()))


def reason_counts(rejects: pa.Table) -> dict[str, int]:
    if rejects.num_rows == 0:
        return {}
    vc = pc.value_counts(rejects.column("reason"))
    return {str(r["values"]): int(r["counts"]) for r in vc.to_pylist()}


DEMO_VIEWS = (
    ViewDef(
        "demo_10s",
        "tumbling",
        size=10 * 10**9,
        aggregates=("count", "mean", "min", "max", "std", "p90"),
    ),
    ViewDef(
        "demo_1m",
        "tumbling",
        size=60 * 10**9,
        aggregates=("count", "mean", "min", "max", "std", "first", "last"),
    ),
)


def demo_config(store: str, duration: str = "60s") -> IngestConfig:
    """What ``obsflow demo`` ingests: 4 simulated instruments into capture ``demo``."""
    url = f"sim://?sources=4&rate=10&duration={duration}&seed=7"
    return IngestConfig(
        inputs=(url,), store=store, capture="demo", progress=False, views=DEMO_VIEWS
    )


def planned_views(
    store: Store, config: IngestConfig
) -> tuple[tuple[ViewDef, ...], tuple[dict[str, Any], ...]]:
    """The views a run builds, and the ``view.json`` documents of those that are new.

    Into a new capture: those given (default ``<capture>_1m``). Into an existing one: those
    given and every view already built from it, so that no view falls behind its capture; a
    view new to a capture that holds readings is refused (it would start in the middle of the
    data: a replay builds it). ``lateness`` applies to all of them. The capture is taken as
    of the run's base, if it has one (a run loses to one that committed since, at its commit).
    """
    exists = capture_exists(store, config.capture)
    if config.base is not None:  # (as of the run's base: a dropped capture is new again)
        exists = (
            config.base > 0
            and capture_snapshot(store, config.capture, as_of=config.base) is not None
        )
    if not exists:
        views = config.views if config.views is not None else default_views(config.capture)
    else:
        given = config.views or ()
        names = {v.name for v in given}
        views = (*given, *(v for v in stored_views(store, config.capture) if v.name not in names))
    views = with_lateness(views, config.lateness)
    new = tuple(
        doc
        for doc in (view_doc(v.name, v.definition, v.hash, config.capture) for v in views)
        if not check_view(store, doc)
    )
    as_of = None if config.base is None else config.base
    snap = capture_snapshot(store, config.capture, as_of=as_of) if new and exists else None
    held = snap.rows if snap is not None else 0
    if held:
        raise ConfigError(
            f"view {new[0]['name']!r} is new, and capture {config.capture!r} already holds "
            f"{held:,} readings: build it over them first with `obsflow replay --capture "
            f"{config.capture} --views FILE`; later ingests then keep it current"
        )
    return views, new


def dataflow(config: IngestConfig, wiring: Wiring = DEFAULT_WIRING) -> Dataflow:
    """The ingest dataflow (its input a ``RawBatch`` source in place of the files, if
    ``wiring`` says so)."""
    store = Store(config.store)
    meta = planned_capture(store, config.capture, config.partitions)
    config, base, state = on_base(config, store)
    spec, run_id = config.spec, config.run_id
    source, sink, durable = wiring.source, wiring.sink, wiring.durable
    views, _new = planned_views(store, config)

    flow = Dataflow("ingest")
    raw = op.input("read_inputs", flow, source or _source(config, store))
    # RawBatch
    checked = op.map("normalize", raw, lambda b: normalize_batch(spec, b))
    # (readings, rejects, Counts)
    pstore = PayloadStore(store, inline_limit=config.inline_limit)
    features = check_features(config.features) if config.features else ()
    routed = op.flat_map(
        "route_to_partitions",
        checked,
        lambda r: [
            (partition_key(p), (p, t)) for p, t in split_by_partition(r[0], meta.partitions)
        ],
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
    ready = _take("take_ready", prepared, "readings")
    outcome = op.stateful_batch(
        "capture",
        ready,
        lambda s: CaptureLogic(
            store,
            config.capture,
            run_id,
            config.dedup_horizon,
            s,
            n=base + 1,
            state=state,
            recoverable=durable and not config.live,
        ),
    )
    # ("0003", Captured(3, rows as written, conflicts, duplicates, accepted per input))
    captured = _take("take_captured", outcome, "rows")
    # ("0003", (3, rows as written to the capture, ids dictionary-encoded))
    rejects = op.merge(
        "merge_rejects",
        op.filter_map("take_rejects", checked, lambda r: ("0000", r[1]) if r[1].num_rows else None),
        _take("take_step_rejects", prepared, "rejects", log=True),
        _take("take_conflicts", outcome, "conflicts", log=True),
    )
    counts = op.merge(
        "merge_counts",
        op.map("count_input", checked, lambda r: r[2]),
        op.map("count_prepared", prepared, lambda kv: kv[1].counts),
        op.map("count_captured", outcome, lambda kv: kv[1].counts),
        *_logs(config, store, raw, rejects),
        *(_view(captured, v, store, config, durable) for v in views),
    )
    summarize("summary", counts, "ingest", config.progress, sink or _finish(config, meta, views))
    return flow


def _source(config: IngestConfig, store: Store) -> Source[RawBatch]:
    """The run's input: its files, a simulation, or a Bluesky run's documents."""
    spec = config.spec
    bluesky = config.bluesky_input(store)
    return source_for(
        config.inputs, config.batch_rows, spec.delimiter, bluesky, spec.max_record_size
    )


def _view(
    captured: Stream[Any], view: ViewDef, store: Store, config: IngestConfig, durable: bool
) -> Stream[Counts]:
    """The steps that build ``view`` from the run's captured rows; what they counted."""
    return window_view(
        f"view_{view.name}",
        captured,
        view,
        store=store,
        capture=config.capture,
        run_id=config.run_id,
        base=view_base(store, view.name),
        durable=durable and not config.live,
    )


def _finish(config: IngestConfig, meta: CaptureMeta, views: Iterable[ViewDef]) -> Finish:
    """The run's end: its commit on top of ``config.base``."""
    assert config.base is not None
    known = dict(config.fingerprints)
    return Finish(
        store=config.store,
        capture=config.capture,
        run=config.run_id,
        kind="ingest",
        base=config.base,
        capture_meta=meta if config.base == 0 else None,
        views=tuple(view_doc(v.name, v.definition, v.hash, config.capture) for v in views),
        inputs={}
        if config.live
        else {u: (known.get(u), config.input_signature()) for u in config.inputs},
        extra={"mode": "ingest", **({"format": config.format} if config.format else {})},
        positions=config.positions,
        fence=config.fence,
    )


def _logs(
    config: IngestConfig,
    store: Store,
    raw: Stream[RawBatch],
    rejects: Stream[tuple[str, pa.Table]],
) -> tuple[Stream[Counts], Stream[Counts], Stream[Counts]]:
    """The run's record logs: dead letters (each with its trace id) and the Bluesky run and
    asset documents kept with the capture; what each counted."""
    spec, run_id = config.spec, config.run_id
    # ("0000", rejected records): one dead-letter log per run, each with its trace id
    traced = op.map("trace_rejects", rejects, lambda kv: (kv[0], with_trace(kv[1], spec)))
    written = write_log(
        "deadletters", traced, store, layout.DEADLETTER_DIR, run_id, layout.DEADLETTER_SCHEMA
    )
    documents = op.filter_map(
        "take_documents", raw, lambda b: ("0000", b.documents) if b.documents.num_rows else None
    )
    # ("0000", Bluesky run and asset documents): one log per run, kept with the capture
    stored = write_log(
        "documents",
        documents,
        store,
        layout.documents_dir(config.capture),
        run_id,
        layout.DOCUMENT_LOG_SCHEMA,
    )
    # (obsflow's own notes among them are no documents)
    counted = op.map(
        "count_documents",
        raw,
        lambda b: Counts(documents=b.documents.num_rows - _notes(b.documents)),
    )
    return written, stored, counted


def _take(
    step_id: str, results: Stream[tuple[str, Any]], table: str, *, log: bool = False
) -> Stream[tuple[str, Any]]:
    """The non-empty ``table`` of each partition step's result: ``("0003", (3, table))``, or
    with ``log`` ``("0000", table)`` for the run's one dead-letter log."""

    def take(kv: tuple[str, Any]) -> tuple[str, Any] | None:
        rows = getattr(kv[1], table)
        if not rows.num_rows:
            return None
        return ("0000", rows) if log else (kv[0], (kv[1].part, rows))

    return op.filter_map(step_id, results, take)


def _notes(documents: pa.Table) -> int:
    """How many of a batch's stored documents are obsflow's own notes (``bluesky.SETTLED``)."""
    if not documents.num_rows:
        return 0
    return int(pc.sum(pc.equal(documents.column("name"), SETTLED)).as_py() or 0)


build_flow = entry_point(IngestConfig.from_options, dataflow)
