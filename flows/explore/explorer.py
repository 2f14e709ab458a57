"""Exploring a store from Python (notebooks): captures and views as tables, payloads, runs.

Input: a store URL (a folder, ``s3://bucket/prefix`` or ``memory://name``). Output: pandas
DataFrames (or Arrow tables) of what the store holds, read by ``connectors.datasets.reads`` with the
filters pushed down to Parquet. ``ingest``, ``replay`` and ``close`` run what the ``obsflow``
command runs (``flows.pipeline.jobs``, ``flows.pipeline.closing``), in this process. Reading never
changes the store.

    >>> from obsflow.flows.explore.explorer import open_store
    >>> s = open_store("data/store")
    >>> s.view_names()
    ['demo_10s', 'demo_1m']
    >>> df = s.view("demo_10s", source="sim-000", channel="temperature", start="2026-01-01")

Views hold final rows and the provisional rows of windows still open (``final`` false);
``final_only=True`` reads only the former. Times are UTC: naive inputs mean UTC, and timestamp
columns come back as ``datetime64[ns, UTC]``. Payload arrays are fetched by reference and
verified (size and sha256); a mismatch raises ``PayloadCorruptError``. Plots and analysis
helpers are in ``flows.explore.plotting`` and ``flows.explore.analysis``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields, replace
from datetime import datetime
from typing import Any, TypedDict, Unpack

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from obsflow.connectors.datasets import reads
from obsflow.connectors.datasets.capture import (
    CaptureInfo,
    capture_info,
    list_captures,
    new_run_id,
)
from obsflow.connectors.datasets.views import list_views, read_view_doc
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.parsing import to_utc
from obsflow.connectors.formats.schema import CONTEXT_FIELDS, READING_SCHEMA, TRACE
from obsflow.connectors.payloads.format import PAYLOAD_SCHEMA, Payload, PayloadRef, PayloadRefError
from obsflow.connectors.payloads.offload import PayloadStore
from obsflow.connectors.sources.bluesky import io as bluesky_io
from obsflow.connectors.storage import layout
from obsflow.connectors.storage.commits import AsOf, parse_as_of
from obsflow.connectors.storage.migrate import check_layout
from obsflow.connectors.storage.store import DEFAULT_STORE, Store
from obsflow.flows.kernels.viewdef import ViewDef, stored_views
from obsflow.flows.pipeline import jobs
from obsflow.flows.pipeline.ingest import demo_config
from obsflow.flows.pipeline.options import DEFAULTS, IngestOptions, view_defs
from obsflow.flows.pipeline.replay import ReplayConfig

TimeLike = str | datetime | pd.Timestamp | np.datetime64
Names = str | Sequence[str] | None
ViewsLike = str | ViewDef | Sequence[ViewDef]

_PAYLOAD_INTS = ("payload_raw_size", "payload_stored_size")
_RUN_COLUMNS = (
    *("run", "mode", "capture", "commit", "input", "accepted", "rejected", "duplicates", "late"),
    *("balanced", "views", "seconds", "readings_per_s", "finished"),
)


def open_store(
    url: str | Store = DEFAULT_STORE, *, demo: bool = False, as_of: int | TimeLike | None = None
) -> Explorer:
    """An ``Explorer`` over ``url``; with ``demo``, first run ``obsflow demo`` into it if it
    has no ``demo`` capture (4 simulated instruments, views ``demo_10s`` and ``demo_1m``);
    with ``as_of`` (a capture's commit number, or a time), the store as it was then."""
    explorer = Explorer(url, as_of=as_of)
    if demo and "demo" not in explorer.capture_names():
        explorer.demo()
    return explorer


def _names(value: Names, what: str) -> list[str] | None:
    """One name or several as a list (None: no restriction)."""
    if value is None:
        return None
    names = [value] if isinstance(value, str) else list(value)
    if not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{what} must be a string or a non-empty list of strings, not {value!r}")
    return names


class Rows(TypedDict, total=False):
    """Which rows and columns ``view_table``, ``capture_table`` and ``late`` read: ``source``
    and ``channel`` (a name or several; default all), times with ``start <= t < until``
    (default unbounded) and ``columns`` (default: the table's usual ones)."""

    source: Names
    channel: Names
    start: TimeLike | None
    until: TimeLike | None
    columns: Sequence[str] | None


def _selection(rows: Rows) -> reads.Selection:
    """The ``reads.Selection`` of the ``Rows`` keywords a notebook passed."""
    known = Rows.__optional_keys__
    if unknown := sorted(set(rows) - known):  # (``**rows`` takes any keyword at run time)
        raise TypeError(f"unknown keyword(s) {unknown}: rows are picked by {sorted(known)}")
    return reads.Selection(
        sources=_names(rows.get("source"), "source"),
        channels=_names(rows.get("channel"), "channel"),
        start=rows.get("start"),
        until=rows.get("until"),
        columns=rows.get("columns"),
    )


def utc(value: TimeLike, what: str = "time") -> pd.Timestamp:
    """A time as a UTC timestamp; naive times and ISO strings without an offset mean UTC."""
    return to_utc(value, what)


def _payload_item(item: Payload | PayloadRef | Mapping[str, Any] | pd.Series) -> Any:
    """A row of a DataFrame as the mapping ``PayloadStore.fetch`` takes (pandas turns integer
    columns with nulls into floats; references need them as integers)."""
    if isinstance(item, pd.Series | Mapping) and "payload_sha256" not in item:
        raise PayloadRefError(
            "this row has no payload columns: read the frame with payloads=True "
            "(e.g. ex.capture(name, payloads=True)), then pass one of its rows"
        )
    if isinstance(item, pd.Series):
        row = item.to_dict()
        for key in _PAYLOAD_INTS:
            value = row.get(key)
            if isinstance(value, float) and value.is_integer():
                row[key] = int(value)
        return row
    return item


class Explorer:
    """Read-mostly access to one store for notebooks and scripts (see the module docstring).

    Cheap to build; opens nothing until asked. ``store`` is the underlying
    ``connectors.storage.store.Store``, ``payload_store`` its ``PayloadStore``.
    """

    def __init__(
        self, url: str | Store = DEFAULT_STORE, *, as_of: int | TimeLike | None = None
    ) -> None:
        self.store = url if isinstance(url, Store) else Store(url)
        self.url = self.store.url
        self.as_of: AsOf = parse_as_of(as_of)
        self._checked = False

    def __repr__(self) -> str:
        if self.as_of is not None:
            return f"open_store({self.url!r}, as_of={self.as_of!r})"
        return f"open_store({self.url!r})"

    def at(self, as_of: int | TimeLike | None) -> Explorer:
        """The same store as it was at ``as_of``: a capture's commit number (what a run summary
        calls ``commit``), or a time (naive: UTC). Reads of tables of other captures than the
        one the number is of need a time."""
        return Explorer(self.store, as_of=as_of)

    def _ready(self) -> Store:
        if not self._checked:
            check_layout(self.store)
            self._checked = True
        return self.store

    # listing -----------------------------------------------------------------------------

    def capture_names(self) -> list[str]:
        """Names of the captures, sorted."""
        return list_captures(self._ready())

    def view_names(self) -> list[str]:
        """Names of the views, sorted."""
        return [m["name"] for m in list_views(self._ready())]

    def captures(self) -> pd.DataFrame:
        """One row per capture: partitions, files, rows, bytes, sources, first and last time."""
        rows = [
            capture_info(self._ready(), name, as_of=self.as_of).__dict__
            for name in self.capture_names()
        ]
        frame = pd.DataFrame(rows, columns=[f.name for f in fields(CaptureInfo)])
        for col in ("first", "last", "created"):
            frame[col] = pd.to_datetime(frame[col], utc=True, format="ISO8601")
        return frame

    def views(self) -> pd.DataFrame:
        """One row per view: its capture and definition (durations as ``Timedelta``)."""
        rows = []
        for m in list_views(self._ready()):
            d = m["definition"]
            rows.append(
                {
                    "name": m["name"],
                    "capture": m["capture"],
                    "kind": d["kind"],
                    **{
                        k: pd.Timedelta(d[k], unit="ns") if d[k] else pd.NaT
                        for k in ("size", "step", "gap")
                    },
                    "lateness": pd.Timedelta(d["lateness"], unit="ns"),
                    "aggregates": ",".join(d["aggregates"]),
                    "hash": m["hash"],
                }
            )
        columns = ["name", "capture", "kind", "size", "step", "gap", "lateness", "aggregates"]
        return pd.DataFrame(rows, columns=[*columns, "hash"])

    def view_definition(self, name: str) -> ViewDef:
        """The definition a view was built with."""
        return ViewDef.from_definition(read_view_doc(self._ready(), name)["definition"])

    def view_files(self, name: str, *, source: Names = None) -> list[str]:
        """Store-relative paths of the view files a read of ``source`` opens."""
        files = reads.view_files_read(
            self._ready(), name, _names(source, "source"), as_of=self.as_of
        )
        return [f.path for f in files]

    def capture_files(self, name: str, *, source: Names = None) -> list[str]:
        """Store-relative paths of the capture files a read of ``source`` opens."""
        files = reads.capture_files_read(
            self._ready(), name, _names(source, "source"), as_of=self.as_of
        )
        return [f.path for f in files]

    # reading rows ------------------------------------------------------------------------

    def view_table(self, name: str, *, final_only: bool = False, **rows: Unpack[Rows]) -> pa.Table:
        """A view's rows (``Rows``: ``start``/``until`` bound ``window_start``) as an Arrow table,
        sorted by source, channel and window; with ``final_only``, windows still open left
        out."""
        return reads.read_view(
            self._ready(), name, _selection(rows), final_only=final_only, as_of=self.as_of
        )

    def view(self, name: str, **filters: Any) -> pd.DataFrame:
        """A view's rows as a DataFrame (see ``view_table`` for the filters)."""
        frame: pd.DataFrame = self.view_table(name, **filters).to_pandas()
        return frame

    def capture_table(
        self,
        name: str,
        *,
        payloads: bool = False,
        run_uid: Names = None,
        trace_id: Names = None,
        **rows: Unpack[Rows],
    ) -> pa.Table:
        """A capture's readings (``Rows``: ``start <= time < until``) as an Arrow table, sorted
        by source, channel, time and seq. Columns: the reading fields, plus the ``payload_*``
        reference columns with ``payloads`` (null on readings without one), or exactly
        ``columns`` (the context columns ``run_uid``, ``stream``, ``descriptor``, ``trace_id``
        among them). ``run_uid`` keeps the readings of those Bluesky runs, ``trace_id`` those of
        these trace ids (both with the context columns)."""
        select = _selection(rows)
        runs, traces = _names(run_uid, "run uid"), _names(trace_id, "trace id")
        if (runs is not None or traces is not None) and select.columns is None:  # say which
            columns = [*READING_SCHEMA.names, *CONTEXT_FIELDS]
            columns += [f.name for f in PAYLOAD_SCHEMA] if payloads else []
            select = replace(select, columns=columns)
        wanted = None
        for field_name, values in (("run_uid", runs), (TRACE, traces)):
            if values is not None:
                cond = pc.field(field_name).isin(values)
                wanted = cond if wanted is None else wanted & cond
        return reads.read_capture(
            self._ready(), name, select, payloads=payloads, filter=wanted, as_of=self.as_of
        )

    def capture(self, name: str, **filters: Any) -> pd.DataFrame:
        """A capture's readings as a DataFrame (see ``capture_table`` for the filters)."""
        frame: pd.DataFrame = self.capture_table(name, **filters).to_pandas()
        return frame

    # Bluesky -----------------------------------------------------------------------------

    def bluesky_runs(self, capture: str) -> pd.DataFrame:
        """The Bluesky runs a capture holds: uid, plan, scan id, start, stop, exit status,
        streams, events, and the obsflow run that stored the start document."""
        frame: pd.DataFrame = bluesky_io.runs(self._ready(), capture).to_pandas()
        return frame

    def bluesky_documents(
        self, capture: str, run_uid: str | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """The run and asset documents (start, descriptor, stop, resource, datum, ...) stored
        with a capture, of one Bluesky run or all, as ``(name, doc)`` in stored order."""
        return bluesky_io.stored_documents(self._ready(), capture, run_uid=run_uid)

    # run accounting ----------------------------------------------------------------------

    def run(self, run_id: str) -> dict[str, Any]:
        """The whole summary of one run (``<store>/runs/<run>.json``)."""
        doc: dict[str, Any] = self._ready().read_json(layout.run_summary(run_id))
        return doc

    def runs(self) -> pd.DataFrame:
        """One row per run, in the order they finished: counts, late readings, views, timing."""
        rows = []
        for doc in reads.run_summaries(self._ready()):
            row = {k: doc.get(k) for k in _RUN_COLUMNS}
            row["mode"] = doc.get("mode", "ingest")
            row["late"] = sum(doc.get("late", {}).values())
            row["views"] = ",".join(doc.get("views", {}))
            rows.append(row)
        frame = pd.DataFrame(rows, columns=list(_RUN_COLUMNS))
        frame["finished"] = pd.to_datetime(frame["finished"], utc=True, format="ISO8601")
        return frame.sort_values(["finished", "run"], kind="stable").reset_index(drop=True)

    def late(self, view: str, *, trace_id: Names = None, **rows: Unpack[Rows]) -> pd.DataFrame:
        """Readings that came too late for ``view`` (and count in no window of it), with their
        trace id and the run that set them aside, as ``Rows`` picks them; ``trace_id`` keeps
        those of these ids."""
        frame: pd.DataFrame = reads.read_late(
            self._ready(),
            view,
            _selection(rows),
            trace_ids=_names(trace_id, "trace id"),
            as_of=self.as_of,
        ).to_pandas()
        return frame

    def deadletters(
        self,
        *,
        run: str | None = None,
        reason: str | None = None,
        unresolved: bool = False,
        trace_id: Names = None,
    ) -> pd.DataFrame:
        """Rejected input records: origin, row, reason, message, raw (JSON), run and trace_id;
        with ``unresolved`` only those no ``obsflow deadletters retry`` has captured since,
        with ``trace_id`` those of these ids."""
        frame: pd.DataFrame = reads.read_deadletters(
            self._ready(),
            run=run,
            reason=reason,
            unresolved=unresolved,
            trace_ids=_names(trace_id, "trace id"),
            as_of=self.as_of if isinstance(self.as_of, datetime) else None,
        ).to_pandas()
        return frame

    def sql(self, query: str) -> pd.DataFrame:
        """The result of one SQL query (DuckDB) over the store's tables: ``capture_<name>``,
        ``view_<name>``, ``late_<view>``, ``deadletters`` and ``runs``
        (``connectors.datasets.sql``)."""
        from obsflow.connectors.datasets import sql

        frame: pd.DataFrame = sql.query(self._ready(), query, as_of=self.as_of).to_pandas()
        return frame

    # payloads ----------------------------------------------------------------------------

    @property
    def payload_store(self) -> PayloadStore:
        """The store's payload objects (``put``, ``maybe_offload``, ``fetch``, ``verify``)."""
        return PayloadStore(self.store)

    def payload(self, item: Payload | PayloadRef | Mapping[str, Any] | pd.Series) -> NDArray[Any]:
        """The array a reference points to (a ``PayloadRef``, a ``Payload`` or a row with the
        ``payload_*`` columns), read-only, after checking its size and sha256."""
        return self.payload_store.fetch(_payload_item(item))

    def payloads(self, rows: pd.DataFrame | pa.Table) -> list[NDArray[Any] | None]:
        """The array of each row (None for rows without a payload), each verified."""
        frame = rows.to_pandas() if isinstance(rows, pa.Table) else rows
        ps = self.payload_store
        return [
            None if pd.isna(r.get("payload_sha256")) else ps.fetch(_payload_item(r))
            for _, r in frame.iterrows()
        ]

    # running jobs ------------------------------------------------------------------------

    def demo(self, duration: str = "60s") -> dict[str, Any]:
        """Run ``obsflow demo`` into this store: the ``demo`` capture and its views (a second
        call finds the same simulated input captured and changes nothing)."""
        return jobs.execute(demo_config(self.url, duration)).summary

    def ingest(
        self,
        inputs: str | Iterable[str],
        *,
        capture: str = DEFAULTS.capture,
        views: ViewsLike | None = DEFAULTS.views,
        map: str | None = DEFAULTS.map,  # the name of the CLI option
        time_unit: str = DEFAULTS.time_unit,
        channels: str | Sequence[str] | None = DEFAULTS.channels,
        delimiter: str | None = DEFAULTS.delimiter,
        max_record_size: int | str = DEFAULTS.max_record_size,
        decimal: str = DEFAULTS.decimal,
        partitions: int | None = DEFAULTS.partitions,
        lateness: str | None = DEFAULTS.lateness,
        dedup_horizon: str = DEFAULTS.dedup_horizon,
        inline_limit: int = DEFAULTS.inline_limit,
        features: str | Sequence[str] = DEFAULTS.features,
        format: str | None = DEFAULTS.format,
        root_map: Mapping[str, str] | Sequence[str] = DEFAULTS.root_map,
        external_roots: Sequence[str] = DEFAULTS.external_roots,
        external_wait: str = DEFAULTS.external_wait,
        batch_rows: int = DEFAULTS.batch_rows,
        workers: int = 1,
        force: bool = False,
    ) -> dict[str, Any]:
        """Ingest files (or one ``sim://`` URL) into ``capture``, as ``obsflow ingest`` does,
        with the same options and defaults (``flows.pipeline.options.IngestOptions``), and
        return the run summary. Inputs a committed run already captured with the same options
        are skipped (listed in ``skipped_inputs``) unless ``force``.

        ``views``: ``ViewDef`` objects, TOML text or a TOML file path; ``None`` builds
        ``<capture>_1m`` into a new capture. Views already built from the capture are always
        built too, so that none falls behind it. ``map`` names input columns
        (``"source=source_id,time=event_time"``); ``channels`` picks the columns of a wide
        input, ``delimiter`` splits CSV fields, ``decimal`` ``","`` reads ``21,5``,
        ``max_record_size`` (``"1MiB"`` or bytes) caps a line (all as on the command line). With
        ``format="bluesky"`` every input is a Bluesky document stream; ``root_map`` relocates
        its external files (old prefix -> new), missing ones waited for ``external_wait``.
        ``features`` derives scalar channels from each payload (``mean``, ``sum``, ...).
        """
        options = IngestOptions(
            capture=capture,
            views=views,
            map=map,
            time_unit=time_unit,
            channels=channels,
            delimiter=delimiter,
            max_record_size=max_record_size,
            decimal=decimal,
            partitions=partitions,
            lateness=lateness,
            dedup_horizon=dedup_horizon,
            inline_limit=inline_limit,
            features=features,
            format=format,
            root_map=root_map,
            external_roots=external_roots,
            external_wait=external_wait,
            batch_rows=batch_rows,
        )
        urls = [inputs] if isinstance(inputs, str) else inputs
        config = options.config(urls, self.url, progress=False)
        result = jobs.execute(config, workers=workers, force=force)
        return {**result.summary, "skipped_inputs": [u for u, _ in result.skipped]}

    def replay(
        self,
        capture: str,
        views: ViewsLike | None = None,
        *,
        source: Names = None,
        start: TimeLike | None = None,
        until: TimeLike | None = None,
        speed: float | None = None,
        as_name: str | None = None,
        workers: int = 1,
    ) -> dict[str, Any]:
        """Rebuild views from ``capture``, as ``obsflow replay`` does, and return the run summary.

        ``views``: ``ViewDef`` objects, TOML text or a TOML file path (default: the views
        already built from the capture). A full replay replaces the views when it commits; with
        ``source``/``start``/``until`` it recomputes only the rows of windows in that slice,
        or with ``as_name`` builds the slice as a new view. ``speed`` None is as fast as
        possible, 1 the original pace.
        """
        store = self._ready()
        defs = stored_views(store, capture) if views is None else view_defs(views)
        config = ReplayConfig(
            capture=capture,
            views=defs,
            store=self.url,
            sources=tuple(_names(source, "source") or ()),
            start=None if start is None else utc(start, "start").isoformat(),
            until=None if until is None else utc(until, "until").isoformat(),
            speed=speed,
            progress=False,
            as_name=as_name,
        )
        return jobs.execute(config, workers=workers).summary

    def close(
        self, view: str, *, source: Names = None, until: TimeLike | None = None
    ) -> dict[str, Any]:
        """Declare ``view``'s data complete (of ``source``; up to ``until``), as
        ``obsflow views close`` does: its open windows become final."""
        from obsflow.flows.pipeline.closing import close_view

        end = None if until is None else int(utc(until, "until").value)
        return close_view(
            self._ready(), view, new_run_id(), sources=_names(source, "source"), until=end
        )
