"""Reading a store's tables the way other tools do, independently of obsflow's readers.

Tests compare obsflow's reads with these: deltalake's own list of a version's files, each
file read with pyarrow, and Polars' ``scan_delta``. Times come from the exact ``*_ns``
columns (Delta's timestamps are microseconds).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

TIMES = ("time", "window_start", "window_end")


def _uri(store: str | Path, table: str) -> tuple[str, dict[str, str]]:
    url = str(store)
    if url.startswith("s3://"):
        options = {"AWS_ALLOW_HTTP": "true"}
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["AWS_ENDPOINT_URL"] = endpoint
        return f"{url.rstrip('/')}/{table}", options
    return str(Path(url) / table), {}


def delta_table(store: str | Path, table: str, version: int | None = None) -> DeltaTable:
    uri, options = _uri(store, table)
    return DeltaTable(uri, version=version, storage_options=options)


def exact_times(frame: pd.DataFrame) -> pd.DataFrame:
    """Each time column from its exact ``_ns`` twin (as ``datetime64[ns, UTC]``), twins
    dropped."""
    frame = frame.copy()
    for c in TIMES:
        if f"{c}_ns" in frame.columns:
            frame[c] = pd.to_datetime(frame.pop(f"{c}_ns").astype("int64"), utc=True)
    return frame


def table_frame(path: str | Path, version: int | None = None) -> pd.DataFrame:
    """The Delta table at ``path`` (a local folder) read by Polars, times exact."""
    frame = pl.scan_delta(str(path), version=version).collect()
    return exact_times(frame.to_pandas())


def polars_frame(store: str | Path, table: str, version: int | None = None) -> pd.DataFrame:
    """A table version read by Polars (``scan_delta``), times exact, as pandas."""
    uri, options = _uri(store, table)
    frame = pl.scan_delta(uri, version=version, storage_options=options or None).collect()
    return exact_times(frame.to_pandas())


def files_in_order(store: str | Path, table: str, version: int | None = None) -> list[str]:
    """A version's files as deltalake lists them, sorted by path."""
    return sorted(delta_table(store, table, version).file_uris())


def capture_commits(store: str | Path, capture: str, columns: list[str]) -> list[pd.DataFrame]:
    """A local capture as replay must read it, one frame per commit: every file of the latest
    version (deltalake's list), read whole with pyarrow in path order, rows grouped by the
    commit that captured them in the order they were written. Times as int64 ns."""
    parts: list[pa.Table] = []
    for uri in files_in_order(store, f"captures/{capture}"):
        path = uri.removeprefix("file://")
        t = pq.read_table(path)
        parts.append(t)
    if not parts:
        return []
    table = pa.concat_tables(parts, promote_options="default")
    frame = exact_times(table.to_pandas())
    out = []
    for _, df in frame.groupby("commit", sort=True):
        # (files of one commit in path order: partition, then chunk; rows as written)
        df = df[columns].reset_index(drop=True)
        if "time" in df.columns:
            df["time"] = df["time"].astype("int64")
        for c in ("source", "channel"):
            if c in df.columns:
                df[c] = df[c].astype(str)
        out.append(df)
    return out


def rows(store: str | Path, table: str, **kw: Any) -> int:
    return len(polars_frame(store, table, **kw))
