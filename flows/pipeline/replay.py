"""Replay: rebuild views from a capture, deterministically, at full speed or paced.

Input: the capture read by ``CaptureSource`` in capture order (commit by commit), with each
commit's boundary so that windows become final exactly where they did during ingest.
Output, committed when the run ends (``flows.pipeline.finish``): the views it rebuilds (rows, late
readings, window state) and a run summary.
Guarantee: the same capture and definitions give the same rows — the rows ingest built — for
any worker or process count and any speed; an interrupted replay changes nothing.

Three ways: a full replay rebuilds each view whole (its old rows are dropped at the commit); a
filtered replay (``sources``, ``start``/``until``) recomputes only the rows of windows of those
sources overlapping the range, from everything the capture holds on them, and leaves every
other row as it was; ``as_name`` builds a new view from only the readings of the slice.

``build_flow`` only builds the graph; it writes nothing. Run it with ``obsflow replay ...``,
from Python with ``obsflow.flows.pipeline.jobs.replay``, or on several processes with ``python -m
bytewax.run "obsflow.flows.pipeline.replay:build_flow(store='s3://b/p', capture='c',
views='views.toml', run_id='r1')" -i 0 -a "h1:2101;h2:2101"`` on each host.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import bytewax.operators as op
import pyarrow as pa
from bytewax.dataflow import Dataflow

from obsflow.connectors.algorithms.partitions import partitions_of
from obsflow.connectors.batch import DEFAULT_BATCH_ROWS
from obsflow.connectors.datasets.capture import new_run_id, open_capture
from obsflow.connectors.datasets.capture_source import (
    Boundary,
    CaptureSource,
    ReplaySpec,
    capture_plan,
)
from obsflow.connectors.datasets.views import (
    Scope,
    ViewBase,
    check_view,
    read_view_doc,
    view_base,
    view_doc,
    view_head,
)
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.parsing import parse_time
from obsflow.connectors.ids import check_name
from obsflow.connectors.storage import layout
from obsflow.connectors.storage.store import DEFAULT_STORE, Store
from obsflow.flows.kernels.viewdef import (
    ViewDef,
    definition_changes,
    stored_views,
    views_option,
)
from obsflow.flows.pipeline.finish import Finish
from obsflow.flows.pipeline.runner import (
    DEFAULT_WIRING,
    Wiring,
    check_cluster_run_id,
    entry_point,
    on_base,
)
from obsflow.flows.steps.routing import partition_key
from obsflow.flows.steps.summary import Counts, summarize
from obsflow.flows.steps.views import ViewTarget, window_view


def parse_speed(text: str | float | None) -> float | None:
    """``"max"`` (or None) -> None; ``"10"`` -> 10.0."""
    if text is None or text == "max":
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--speed {text!r} — use max or a positive number like 1 or 10") from None


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
    batch_rows: int = DEFAULT_BATCH_ROWS
    as_name: str | None = None  # build the slice as a new view of this name
    base: int | None = None  # the capture's last commit when the run was prepared
    upto: int | None = None  # replay the capture as of this commit (None: the base)

    def __post_init__(self) -> None:
        check_name(self.capture, kind="capture name")
        check_name(self.run_id, kind="run id")
        if not self.views:
            raise ConfigError(f"no views to replay for capture {self.capture!r}: give --views FILE")
        names = [v.name for v in self.views]
        if len(set(names)) != len(names):
            raise ConfigError(f"view names must be unique, got {names}")
        if self.as_name is not None:
            check_name(self.as_name, kind="view name")
            if len(self.views) != 1:
                raise ConfigError(
                    f"--as names one view, but {len(self.views)} are replayed "
                    f"({', '.join(names)}): give --views a file holding only the one to slice"
                )
        self.spec  # noqa: B018 - the times and the slice are checked before anything runs

    kind: ClassVar[str] = "replay"

    def flow(self, wiring: Wiring = DEFAULT_WIRING) -> Dataflow:
        """The run's dataflow (``build_flow``); its input is the capture, never a source."""
        if wiring.source is not None:
            raise ConfigError("a replay reads its capture: it takes no other source")
        return dataflow(self, wiring)

    def planned(self, store: Store, *, force: bool) -> tuple[ReplayConfig, list[tuple[str, str]]]:
        """The run to do (a replay skips nothing)."""
        return self, []

    def idle(self) -> bool:
        return False

    @classmethod
    def from_options(cls, **options: Any) -> ReplayConfig:
        """A config from ``build_flow``'s keyword arguments (``views`` may be a TOML path and
        defaults to the views already built from the capture)."""
        check_cluster_run_id(options)
        views = views_option(options.get("views"), options.get("capture"))
        if views is None:
            views = stored_views(Store(options.get("store", DEFAULT_STORE)), options["capture"])
        options["views"] = views
        if "sources" in options:
            options["sources"] = tuple(options["sources"] or ())
        options["speed"] = parse_speed(options.get("speed"))
        return cls(**options)

    def options(self) -> dict[str, Any]:
        """``build_flow`` keyword arguments that rebuild this config, literals only."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(views=[v.definition for v in self.views], sources=list(self.sources))
        return out

    @property
    def filtered(self) -> bool:
        return bool(self.sources) or self.start is not None or self.until is not None

    @property
    def in_place(self) -> bool:
        """A filtered replay into the views themselves: only rows in the slice change."""
        return self.filtered and self.as_name is None

    @property
    def slice(self) -> dict[str, Any] | None:
        """What a view built by ``as_name`` holds (recorded in its ``view.json``)."""
        if self.as_name is None or not self.filtered:
            return None
        return {"sources": list(self.sources), "start": self.start, "until": self.until}

    @property
    def targets(self) -> tuple[ViewDef, ...]:
        """The views written: the replayed ones, or the one renamed by ``as_name``."""
        if self.as_name is None:
            return self.views
        return (replace(self.views[0], name=self.as_name),)

    def redefines(self, store: Store) -> dict[str, list[str]]:
        """The existing views this replay gives another definition, each with what changes
        (``lateness 0 -> 3h``): the replay rebuilds them with it, and it stays theirs."""
        out = {}
        for v in self.targets:
            head = view_head(store, v.name)
            if head is not None and head.doc and head.doc.get("hash") != v.hash:
                out[v.name] = definition_changes(head.doc["definition"], v.definition)
        return out

    @property
    def spec(self) -> ReplaySpec:
        # In place, windows of the slice are recomputed from all the sources' readings, so
        # that they come out as a full replay would make them.
        start, until = parse_time(self.start, "--from"), parse_time(self.until, "--until")
        if start is not None and until is not None and until <= start:
            raise ConfigError("--until must be later than --from")
        return ReplaySpec(
            self.capture,
            self.sources,
            None if self.in_place else start,
            None if self.in_place else until,
            self.speed,
            self.batch_rows,
            self.upto if self.upto is not None else self.base,
        )

    @property
    def target(self) -> ViewTarget:
        if self.in_place:
            scope = Scope(
                self.sources, parse_time(self.start, "--from"), parse_time(self.until, "--until")
            )
            return ViewTarget(scope=scope, end_at_eof=False)
        return ViewTarget(fresh=True, end_at_eof=False)


def capture_rows(store: Store, config: ReplayConfig) -> int:
    """Readings the replay reads (before time restrictions), from the table's statistics."""
    plan = capture_plan(store, config.capture, config.spec.upto)
    files = plan.files
    if config.sources:
        meta = open_capture(store, config.capture)
        wanted = {layout.part_name(p) for p in partitions_of(list(config.sources), meta.partitions)}
        files = tuple(f for f in files if f.path.split("/")[2] in wanted)
    return sum(f.rows for f in files)


def dataflow(config: ReplayConfig, wiring: Wiring = DEFAULT_WIRING) -> Dataflow:
    """The replay dataflow (its input a ``ReplayBatch`` source in place of the capture, if
    ``wiring`` says so)."""
    store = Store(config.store)
    open_capture(store, config.capture)
    config, base, _state = on_base(config, store)
    spec, target = config.spec, config.target
    source, sink, durable = wiring.source, wiring.sink, wiring.durable
    docs = tuple(
        view_doc(v.name, v.definition, v.hash, config.capture, sliced=config.slice)
        for v in config.targets
    )
    if config.in_place:
        for doc in docs:  # rows are only replaced by the same definition's rows
            if not check_view(store, doc):
                raise ConfigError(
                    f"view {doc['name']!r} does not exist: a filtered replay recomputes rows of "
                    "an existing view; give --as NAME to build the slice as a new view"
                )
    finish = Finish(
        store=config.store,
        capture=config.capture,
        run=config.run_id,
        kind="replay",
        base=base,
        views=tuple(read_view_doc(store, d["name"]) for d in docs) if config.in_place else docs,
        replaced_views=() if config.in_place else tuple(d["name"] for d in docs),
        extra={"mode": "replay", "views_replayed": [d["name"] for d in docs]},
    )

    flow = Dataflow("replay")
    items = op.input("read_capture", flow, source or CaptureSource(store, spec))
    # (3, readings of capture partition 3 | Boundary), in capture order
    keyed = op.map("key_by_partition", items, lambda pt: (partition_key(pt[0]), pt))
    # ("0003", (3, readings | Boundary))
    counts = op.merge(
        "merge_counts",
        op.map("count_read", items, _count_read),
        *(
            window_view(
                f"view_{v.name}",
                keyed,
                v,
                store=store,
                capture=config.capture,
                run_id=config.run_id,
                base=view_base(store, v.name) if config.in_place else ViewBase(),
                target=target,
                durable=durable,
            )
            for v in config.targets
        ),
    )
    total = capture_rows(store, config) if config.progress else None
    summarize("summary", counts, "replay", config.progress, sink or finish, total=total)
    return flow


def _count_read(item: tuple[int, pa.Table | Boundary]) -> Counts:
    data = item[1]
    n = 0 if isinstance(data, Boundary) else data.num_rows
    return Counts(input=n, accepted=n)


build_flow = entry_point(ReplayConfig.from_options, dataflow)
