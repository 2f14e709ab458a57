"""Exploring a store from Python (notebooks): captures and views as tables, payloads, replays.

Input: a store URL (a folder, ``s3://bucket/prefix`` or ``memory://name``). Output: pandas
DataFrames (or Arrow tables) of what the store holds; ``ingest`` and ``replay`` run the same
dataflows as the ``obsflow`` command, in this process. Reading never changes the store.

``open_store(url)`` returns an ``Explorer``. (Issue 7 sketched this as ``Store("data/store")``;
that name already belongs to ``connectors.store.Store``, the byte-level store every connector
uses, so the notebook API is ``open_store``/``Explorer`` and the byte store is
``Explorer.store``.)

    >>> from obsflow.flows.explore import open_store
    >>> s = open_store("data/store")
    >>> s.view_names()
    ['demo_10s', 'demo_1m']
    >>> df = s.view("demo_10s", source="sim-000", channel="temperature", start="2026-01-01")

Filters are pushed down to Parquet, not applied after reading everything: a source's readings
and its view rows all live in one capture partition (crc32 of its id), so a read restricted to
some sources opens only those partitions' files; the rest of the filter (source, channel, time
range ``[start, until)``) goes to pyarrow's scanner, which skips row groups by their min/max
statistics and reads only the requested columns. Views filter on ``window_start``, captures and
late readings on ``time``. Times are UTC: naive inputs mean UTC, and timestamp columns come back
as ``datetime64[ns, UTC]``.

Payload arrays are fetched by reference and verified (size and sha256) by
``obsflow.connectors.payloads.PayloadStore``; a mismatch raises ``PayloadCorruptError``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from numpy.typing import NDArray

from obsflow.connectors.capture import (
    CaptureInfo,
    capture_info,
    captured_inputs,
    input_fingerprint,
    list_captures,
    open_capture,
    partition_of,
    record_inputs,
)
from obsflow.connectors.capture_source import partition_files
from obsflow.connectors.deadletters import read_deadletters
from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.ids import check_name
from obsflow.connectors.payloads import Payload, PayloadRef, PayloadStore
from obsflow.connectors.schema import READING_SCHEMA, TIME_TYPE, InputSpec, to_utc
from obsflow.connectors.simulator import parse_duration
from obsflow.connectors.store import DEFAULT_STORE, Store
from obsflow.connectors.views import finish_commits, list_views, view_dir, view_meta
from obsflow.flows.summary import Counts, summary_dict
from obsflow.flows.viewdef import ViewDef, load_views, parse_views

if TYPE_CHECKING:
    from matplotlib.axes import Axes

TimeLike = str | datetime | pd.Timestamp | np.datetime64
Names = str | Sequence[str] | None
ViewsLike = str | ViewDef | Sequence[ViewDef]

CHANNEL_UNITS = {
    "temperature": "°C",
    "pressure": "hPa",
    "salinity": "PSU",
    "sea_water_temperature": "°C",
}
"""Units of the simulator's channels and of the buoy sample, for axis labels."""

VIEW_KEYS = ("source", "channel", "window_start", "window_end")
CAPTURE_KEYS = ("source", "channel", "time", "seq")
LATE_SCHEMA = pa.schema(
    [*READING_SCHEMA, *(pa.field(c, pa.string()) for c in ("view", "reason", "run"))]
)
_VIEW_FILE = re.compile(r"^part-(?P<part>\d{4})-\d{6}\.parquet$")
_PAYLOAD_INTS = ("payload_raw_size", "payload_stored_size")
_RUN_COLUMNS = (
    *("run", "mode", "capture", "input", "accepted", "rejected", "duplicates", "late"),
    *("balanced", "views", "seconds", "readings_per_s", "finished"),
)


def open_store(url: str | Store = DEFAULT_STORE, *, demo: bool = False) -> Explorer:
    """An ``Explorer`` over ``url``; with ``demo``, first run ``obsflow demo`` into it if it
    has no ``demo`` capture (4 simulated instruments, views ``demo_10s`` and ``demo_1m``)."""
    explorer = Explorer(url)
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


def utc(value: TimeLike, what: str = "time") -> pd.Timestamp:
    """A time as a UTC timestamp; naive times and ISO strings without an offset mean UTC."""
    return to_utc(value, what)


def row_filter(
    *,
    sources: Names = None,
    channels: Names = None,
    start: TimeLike | None = None,
    until: TimeLike | None = None,
    time_column: str = "time",
) -> ds.Expression | None:
    """The pyarrow filter for sources, channels and ``start <= time_column < until``."""
    parts: list[ds.Expression] = []
    if (src := _names(sources, "source")) is not None:
        parts.append(pc.field("source").isin(src))
    if (chn := _names(channels, "channel")) is not None:
        parts.append(pc.field("channel").isin(chn))
    if start is not None:
        parts.append(pc.field(time_column) >= pa.scalar(utc(start, "start").value, TIME_TYPE))
    if until is not None:
        parts.append(pc.field(time_column) < pa.scalar(utc(until, "until").value, TIME_TYPE))
    expr = parts[0] if parts else None
    for p in parts[1:]:
        expr = expr & p
    return expr


def _visible(rel: str) -> bool:
    """A data object (not bookkeeping under ``_``, not a temporary ``.`` file)."""
    return rel.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in rel.split("/"))


def _view_schema(definition: Mapping[str, Any]) -> pa.Schema:
    """The columns of a view's rows (for an empty result)."""
    cols = [
        pa.field("source", pa.string()),
        pa.field("channel", pa.string()),
        pa.field("window_start", TIME_TYPE),
        pa.field("window_end", TIME_TYPE),
    ]
    for agg in definition.get("aggregates", ()):
        cols.append(pa.field(agg, pa.int64() if agg == "count" else pa.float64()))
    return pa.schema([*cols, *(pa.field(c, pa.string()) for c in ("capture", "view_hash", "run"))])


def view_defs(views: ViewsLike) -> tuple[ViewDef, ...]:
    """View definitions from a ``ViewDef``, a sequence of them, TOML text or a TOML file path."""
    if isinstance(views, ViewDef):
        return (views,)
    if isinstance(views, str):
        return parse_views(views, origin="views text") if "[[view]]" in views else load_views(views)
    defs = tuple(views)
    if not all(isinstance(v, ViewDef) for v in defs):
        raise ConfigError("views must be ViewDef objects, TOML text or a TOML file path")
    return defs


def _payload_item(item: Payload | PayloadRef | Mapping[str, Any] | pd.Series) -> Any:
    """A row of a DataFrame as the mapping ``PayloadStore.fetch`` takes (pandas turns integer
    columns with nulls into floats; references need them as integers)."""
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
    ``obsflow.connectors.store.Store``, ``payload_store`` its ``PayloadStore``.
    """

    def __init__(self, url: str | Store = DEFAULT_STORE) -> None:
        self.store = url if isinstance(url, Store) else Store(url)
        self.url = self.store.url

    def __repr__(self) -> str:
        return f"open_store({self.url!r})"

    # listing -----------------------------------------------------------------------------

    def capture_names(self) -> list[str]:
        """Names of the captures, sorted."""
        return list_captures(self.store)

    def view_names(self) -> list[str]:
        """Names of the views, sorted."""
        return [m["name"] for m in list_views(self.store)]

    def captures(self) -> pd.DataFrame:
        """One row per capture: partitions, files, rows, bytes, sources, first and last time."""
        rows = [capture_info(self.store, name).__dict__ for name in self.capture_names()]
        frame = pd.DataFrame(rows, columns=[f.name for f in fields(CaptureInfo)])
        for col in ("first", "last", "created"):
            frame[col] = pd.to_datetime(frame[col], utc=True, format="ISO8601")
        return frame

    def views(self) -> pd.DataFrame:
        """One row per view: its capture and definition (durations as ``Timedelta``)."""
        rows = []
        for m in list_views(self.store):
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
        d = view_meta(self.store, name)["definition"]
        return ViewDef(**{**d, "aggregates": tuple(d["aggregates"])})

    # reading rows ------------------------------------------------------------------------

    def _partitions(self, capture: str | None, sources: list[str] | None) -> set[int] | None:
        """Capture partitions that hold ``sources`` (None: all, or unknown)."""
        if sources is None or capture is None:
            return None
        try:
            meta = open_capture(self.store, capture)
        except StoreError:  # the capture is gone: the view cannot be pruned by partition
            return None
        return {int(p) for p in partition_of(pa.array(sources, pa.string()), meta.partitions)}

    def view_files(self, name: str, *, source: Names = None) -> list[str]:
        """Store-relative paths of the view objects a read of ``source`` opens."""
        meta = view_meta(self.store, name)
        parts = self._partitions(meta.get("capture"), _names(source, "source"))
        files = [f for f in self.store.walk_files(view_dir(name)) if _visible(f)]
        if parts is None:
            return files
        return [
            f
            for f in files
            if (m := _VIEW_FILE.match(f.rsplit("/", 1)[-1])) is None or int(m["part"]) in parts
        ]

    def capture_files(self, name: str, *, source: Names = None) -> list[str]:
        """Store-relative paths of the capture objects a read of ``source`` opens."""
        meta = open_capture(self.store, name)
        parts = self._partitions(name, _names(source, "source"))
        return [
            rel
            for p in range(meta.partitions)
            if parts is None or p in parts
            for rel in partition_files(self.store, name, p)
        ]

    def _scan(
        self,
        files: list[str],
        expr: ds.Expression | None,
        columns: Sequence[str] | None,
        keys: Sequence[str],
        empty: pa.Schema,
    ) -> pa.Table:
        """Rows of ``files`` matching ``expr``, sorted by ``keys``; only ``columns`` read."""
        if files:
            dataset = ds.dataset(
                [self.store.path(f) for f in files], filesystem=self.store.fs, format="parquet"
            )
            # Objects written by different versions may differ in optional columns (payload
            # references): read them all under one schema, missing columns as nulls.
            schema = pa.unify_schemas([f.physical_schema for f in dataset.get_fragments()])
            dataset = dataset.replace_schema(schema)
        else:
            dataset = ds.dataset(empty.empty_table())
        names = dataset.schema.names
        wanted = list(names if columns is None else columns)
        missing = [c for c in wanted if c not in names]
        if missing:
            raise ConfigError(f"no column(s) {missing}; columns are {names}")
        sort = [k for k in keys if k in names]
        table = dataset.to_table(filter=expr, columns=list(dict.fromkeys([*wanted, *sort])))
        if sort:
            table = table.sort_by([(k, "ascending") for k in sort])
        return table.select(wanted)

    def view_table(
        self,
        name: str,
        *,
        source: Names = None,
        channel: Names = None,
        start: TimeLike | None = None,
        until: TimeLike | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """A view's rows as an Arrow table, windows with ``start <= window_start < until``,
        sorted by source, channel and window."""
        meta = view_meta(self.store, name)
        expr = row_filter(
            sources=source, channels=channel, start=start, until=until, time_column="window_start"
        )
        files = self.view_files(name, source=source)
        return self._scan(files, expr, columns, VIEW_KEYS, _view_schema(meta["definition"]))

    def view(
        self,
        name: str,
        *,
        source: Names = None,
        channel: Names = None,
        start: TimeLike | None = None,
        until: TimeLike | None = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """A view's rows as a DataFrame (see ``view_table``)."""
        table = self.view_table(
            name, source=source, channel=channel, start=start, until=until, columns=columns
        )
        frame: pd.DataFrame = table.to_pandas()
        return frame

    def capture_table(
        self,
        name: str,
        *,
        source: Names = None,
        channel: Names = None,
        start: TimeLike | None = None,
        until: TimeLike | None = None,
        columns: Sequence[str] | None = None,
        payloads: bool = False,
    ) -> pa.Table:
        """A capture's readings as an Arrow table, ``start <= time < until``, sorted by source,
        channel, time and seq. Columns: the reading fields, plus the ``payload_*`` reference
        columns with ``payloads`` (null on readings without one), or exactly ``columns``."""
        expr = row_filter(sources=source, channels=channel, start=start, until=until)
        files = self.capture_files(name, source=source)
        if columns is None and not payloads:
            columns = READING_SCHEMA.names
        return self._scan(files, expr, columns, CAPTURE_KEYS, READING_SCHEMA)

    def capture(
        self,
        name: str,
        *,
        source: Names = None,
        channel: Names = None,
        start: TimeLike | None = None,
        until: TimeLike | None = None,
        columns: Sequence[str] | None = None,
        payloads: bool = False,
    ) -> pd.DataFrame:
        """A capture's readings as a DataFrame (see ``capture_table``)."""
        table = self.capture_table(
            name,
            source=source,
            channel=channel,
            start=start,
            until=until,
            columns=columns,
            payloads=payloads,
        )
        frame: pd.DataFrame = table.to_pandas()
        return frame

    # run accounting ----------------------------------------------------------------------

    def run(self, run_id: str) -> dict[str, Any]:
        """The whole summary of one run (``<store>/runs/<run>.json``)."""
        doc: dict[str, Any] = self.store.read_json(f"runs/{check_name(run_id, kind='run id')}.json")
        return doc

    def runs(self) -> pd.DataFrame:
        """One row per run, in the order they finished: counts, late readings, views, timing."""
        rows = []
        for n in self.store.listdir("runs"):
            if n.endswith(".json"):
                doc = self.store.read_json(f"runs/{n}")
                row = {k: doc.get(k) for k in _RUN_COLUMNS}
                row["run"] = doc.get("run", n.removesuffix(".json"))
                row["mode"] = doc.get("mode", "ingest")
                row["late"] = sum(doc.get("late", {}).values())
                row["views"] = ",".join(doc.get("views", {}))
                rows.append(row)
        frame = pd.DataFrame(rows, columns=list(_RUN_COLUMNS))
        frame["finished"] = pd.to_datetime(frame["finished"], utc=True, format="ISO8601")
        return frame.sort_values(["finished", "run"], kind="stable").reset_index(drop=True)

    def late(
        self,
        view: str,
        *,
        source: Names = None,
        channel: Names = None,
        start: TimeLike | None = None,
        until: TimeLike | None = None,
    ) -> pd.DataFrame:
        """Readings that came too late for ``view`` (and count in no window of it), with the
        run that set them aside, sorted like a capture."""
        folder = f"late/{check_name(view, kind='view name')}"
        files = [f for f in self.store.walk_files(folder) if _visible(f)]
        expr = row_filter(sources=source, channels=channel, start=start, until=until)
        frame: pd.DataFrame = self._scan(
            files, expr, LATE_SCHEMA.names, CAPTURE_KEYS, LATE_SCHEMA
        ).to_pandas()
        return frame

    def deadletters(self, *, run: str | None = None, reason: str | None = None) -> pd.DataFrame:
        """Rejected input records: origin, row, reason, message, raw (JSON) and run."""
        frame: pd.DataFrame = read_deadletters(self.store, run=run, reason=reason).to_pandas()
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

    # running dataflows -------------------------------------------------------------------

    def demo(self, duration: str = "60s") -> None:
        """Run ``obsflow demo`` into this store (replaces its ``demo`` capture and views)."""
        from obsflow.flows.cli import main

        if main(["demo", "--store", self.url, "--duration", duration]) != 0:
            raise StoreError(f"obsflow demo into {self.store.uri()} failed")

    def ingest(
        self,
        inputs: str | Iterable[str],
        *,
        capture: str = "default",
        views: ViewsLike | None = None,
        map: str | None = None,  # the name of the CLI option
        time_unit: str = "ns",
        partitions: int | None = None,
        dedup_horizon: str = "10m",
        workers: int = 1,
    ) -> dict[str, Any]:
        """Ingest files (or one ``sim://`` URL) into ``capture``, as ``obsflow ingest`` does,
        and return the run summary. Inputs whose content the capture already holds are skipped.

        ``views``: ``None`` builds ``<capture>_1m``; ``()`` builds none; otherwise ``ViewDef``
        objects, TOML text or a TOML file path. ``map`` names input columns
        (``"source=source_id,time=event_time"``).
        """
        from obsflow.flows import ingest
        from obsflow.flows.cli import _finish_summary
        from obsflow.flows.runner import run_flow

        urls = list(dict.fromkeys([inputs] if isinstance(inputs, str) else inputs))
        check_name(capture, kind="capture name")
        fingerprints = {url: input_fingerprint(url) for url in urls}
        known = captured_inputs(self.store, capture)
        todo = [u for u, fp in fingerprints.items() if fp not in known]
        skipped = [u for u in urls if u not in todo]
        if not todo:
            return summary_dict(Counts(), capture=capture, skipped_inputs=skipped)
        config = ingest.IngestConfig(
            inputs=tuple(todo),
            store=self.url,
            capture=capture,
            spec=InputSpec.parse_map(map, time_unit),
            partitions=partitions,
            progress=False,
            views=None if views is None else view_defs(views),
            dedup_horizon=round(parse_duration(dedup_horizon) * 1e9),
        )
        started = time.monotonic()
        run_flow(ingest.build_flow(config), workers)
        summary = _finish_summary(self.store, config.run_id, started, None, quiet=True)
        record_inputs(self.store, capture, {u: fingerprints[u] for u in todo}, config.run_id)
        return {**summary, "skipped_inputs": skipped}

    def replay(
        self,
        capture: str,
        views: ViewsLike | None = None,
        *,
        source: Names = None,
        start: TimeLike | None = None,
        until: TimeLike | None = None,
        speed: float | None = None,
        workers: int = 1,
    ) -> dict[str, Any]:
        """Rebuild views from ``capture``, as ``obsflow replay`` does, and return the run summary.

        ``views``: ``ViewDef`` objects, TOML text or a TOML file path (default: the views
        already built from the capture). The new views replace the old ones only when the
        whole replay succeeds. ``speed`` None is as fast as possible, 1 the original pace.
        """
        from obsflow.flows import replay
        from obsflow.flows.cli import _finish_summary
        from obsflow.flows.runner import run_flow

        finish_commits(self.store)
        defs = replay.stored_views(self.store, capture) if views is None else view_defs(views)
        config = replay.ReplayConfig(
            capture=capture,
            views=defs,
            store=self.url,
            sources=tuple(_names(source, "source") or ()),
            start=None if start is None else utc(start, "start").isoformat(),
            until=None if until is None else utc(until, "until").isoformat(),
            speed=speed,
            progress=False,
        )
        config.spec  # noqa: B018 - validates times and speed before anything runs
        started = time.monotonic()
        run_flow(replay.build_flow(config), workers)
        replay.commit(config)
        return _finish_summary(self.store, config.run_id, started, None, quiet=True)


# -- comparing and plotting -----------------------------------------------------------------


def compare_views(
    before: pd.DataFrame, after: pd.DataFrame, columns: Sequence[str] = ("count", "mean")
) -> pd.DataFrame:
    """Two reads of a view side by side, one row per (series, window) in either.

    Columns: the window keys, ``<col>_before`` and ``<col>_after`` for each of ``columns``,
    and ``change``: ``added``, ``removed``, ``changed`` (a value differs; floats by more than
    1e-9 relative) or ``same``.
    """
    keys = list(VIEW_KEYS)
    cols = list(columns)
    merged = before[keys + cols].merge(
        after[keys + cols], on=keys, how="outer", suffixes=("_before", "_after"), indicator=True
    )
    differs = np.zeros(len(merged), dtype=bool)
    for c in cols:
        a = merged[f"{c}_before"].to_numpy(dtype=np.float64, na_value=np.nan)
        b = merged[f"{c}_after"].to_numpy(dtype=np.float64, na_value=np.nan)
        differs |= ~np.isclose(a, b, rtol=1e-9, atol=0.0, equal_nan=True)
    where = merged.pop("_merge").astype(str).to_numpy()
    merged["change"] = np.select(
        [where == "right_only", where == "left_only", differs],
        ["added", "removed", "changed"],
        default="same",
    )
    return merged.sort_values(keys, kind="stable").reset_index(drop=True)


def find_gaps(frame: pd.DataFrame, expected_count: int) -> pd.DataFrame:
    """Windows of a tumbling view with fewer than ``expected_count`` readings, per series,
    including windows with none at all (a view has no row for those): each series' windows
    are laid on a regular grid from its first window to its last.

    Columns: source, channel, window_start, window_end, count, missing (expected − count).
    """
    out = []
    for (source, channel), g in frame.groupby(["source", "channel"], sort=True):
        size = (g["window_end"] - g["window_start"]).min()
        grid = pd.date_range(g["window_start"].min(), g["window_start"].max(), freq=size)
        counts = g.set_index("window_start")["count"].reindex(grid, fill_value=0)
        short = counts[counts < expected_count]
        out.append(
            pd.DataFrame(
                {
                    "source": source,
                    "channel": channel,
                    "window_start": short.index,
                    "window_end": short.index + size,
                    "count": short.to_numpy(dtype=np.int64),
                    "missing": expected_count - short.to_numpy(dtype=np.int64),
                }
            )
        )
    columns = ["source", "channel", "window_start", "window_end", "count", "missing"]
    if not out:
        return pd.DataFrame(columns=columns)
    return pd.concat(out, ignore_index=True)[columns]


def find_spikes(frame: pd.DataFrame, k: float = 6.0) -> pd.DataFrame:
    """Windows whose max (or min) is more than ``k`` typical standard deviations away from the
    window mean: a few readings far outside the noise. "Typical" is the median of the series'
    window ``std``, so a spike does not hide by inflating its own window's spread.

    Needs the ``mean``, ``min``, ``max`` and ``std`` aggregates; adds ``spike``: high or low.
    """
    typical = frame.groupby(["source", "channel"])["std"].transform("median")
    high = (frame["max"] - frame["mean"]) > k * typical
    low = (frame["mean"] - frame["min"]) > k * typical
    spikes = frame[high | low].copy()
    spikes["spike"] = np.where(high[high | low], "high", "low")
    return spikes.reset_index(drop=True)


def unit_label(channel: str) -> str:
    """``"temperature (°C)"`` for a channel with a known unit, else the channel name."""
    unit = CHANNEL_UNITS.get(channel)
    return f"{channel} ({unit})" if unit else channel


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("plotting needs matplotlib: pip install 'obsflow[notebooks]'") from None
    return plt


def _naive_utc(times: pd.Series) -> pd.Series:
    """UTC times without their zone: matplotlib then shows them as they are, in UTC."""
    naive: pd.Series = times.dt.tz_convert("UTC").dt.tz_localize(None)
    return naive


def _axes(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    new: Axes = _pyplot().subplots(figsize=(10, 3.5), layout="constrained")[1]
    return new


def _finish(
    ax: Axes, frame: pd.DataFrame, value: str, ylabel: str | None, title: str | None
) -> Axes:
    """Axis labels (units, UTC), readable dates, legend."""
    import matplotlib.dates as mdates

    channels = sorted(frame["channel"].unique()) if "channel" in frame else []
    if ylabel is None and not ax.get_ylabel():  # a later plot on the axes keeps its label
        ylabel = unit_label(str(channels[0])) if len(channels) == 1 else value
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    ax.set_xlabel("time (UTC)")
    locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    if title is not None:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return ax


def _label(label: str | None, key: object, groups: int) -> str:
    if label is None:
        return str(key)
    return label if groups == 1 else f"{label}: {key}"


def plot_windows(
    frame: pd.DataFrame,
    *,
    value: str = "mean",
    low: str | None = "min",
    high: str | None = "max",
    by: str = "source",
    ax: Axes | None = None,
    label: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    **style: Any,
) -> Axes:
    """Plot a view's ``value`` over time at window midpoints (UTC), one line per ``by`` group
    (default: per source), with a ``low``–``high`` band (default min/max; None: no band).

    ``label`` names the lines (default: the group); the y label defaults to the frame's one
    channel with its unit; ``style`` goes to ``Axes.plot``. Needs matplotlib
    (``pip install 'obsflow[notebooks]'``).
    """
    ax = _axes(ax)
    groups = frame.groupby(by, sort=True)
    for key, group in groups:
        group = group.sort_values("window_start")
        start = _naive_utc(group["window_start"]).to_numpy()
        end = _naive_utc(group["window_end"]).to_numpy()
        # Break the line where the next window does not follow on, so gaps stay visible.
        after = np.append(end[:-1] < start[1:], False)
        mid = start + (end - start) / 2
        x, y = _broken(mid, group[value].to_numpy(dtype=np.float64), after)
        (line,) = ax.plot(x, y, label=_label(label, key, groups.ngroups), **style)
        if low is None or high is None:
            continue
        lo = group[low].to_numpy(dtype=np.float64)
        hi = group[high].to_numpy(dtype=np.float64)
        if (end[:-1] > start[1:]).any():  # overlapping (hopping) windows: band at midpoints
            bx, blo, bhi = mid, lo, hi
        else:  # each window's band spans exactly the window
            edges = np.column_stack([start, end]).ravel()
            bx, blo = _broken(edges, np.repeat(lo, 2), after, 2)
            _, bhi = _broken(edges, np.repeat(hi, 2), after, 2)
        ax.fill_between(bx, blo, bhi, color=line.get_color(), alpha=0.2, lw=0)
    return _finish(ax, frame, value, ylabel, title)


def _broken(
    x: NDArray[Any], y: NDArray[np.float64], after: NDArray[np.bool_], per: int = 1
) -> tuple[NDArray[Any], NDArray[np.float64]]:
    """``x`` (times) and ``y`` with a NaT/NaN point after each item (of ``per`` points) flagged
    in ``after``: matplotlib breaks lines and bands there."""
    at = (np.flatnonzero(after) + 1) * per
    return np.insert(x, at, np.datetime64("NaT")), np.insert(y, at, np.nan)


def plot_readings(
    frame: pd.DataFrame,
    *,
    value: str = "value",
    by: str = "source",
    ax: Axes | None = None,
    label: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    **style: Any,
) -> Axes:
    """Plot readings (a capture, late readings) as points over time (UTC), per ``by`` group."""
    ax = _axes(ax)
    style = {"marker": ".", "linestyle": "none", "markersize": 3, **style}
    groups = frame.groupby(by, sort=True)
    for key, group in groups:
        ax.plot(
            _naive_utc(group["time"]),
            group[value],
            label=_label(label, key, groups.ngroups),
            **style,
        )
    return _finish(ax, frame, value, ylabel, title)


def mark_windows(
    ax: Axes, windows: pd.DataFrame, *, label: str, color: str = "tab:red", alpha: float = 0.25
) -> Axes:
    """Shade each window ``[window_start, window_end)`` of ``windows`` (gaps, spikes, changes)."""
    starts = _naive_utc(windows["window_start"])
    ends = _naive_utc(windows["window_end"])
    for i, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
        ax.axvspan(lo, hi, color=color, alpha=alpha, lw=0, label=label if i == 0 else None)
    if len(windows):
        ax.legend(fontsize="small")
    return ax
