"""Shared pieces of the benchmarks: simulated input files, the obsflow job, child processes, RSS.

Every contender runs in its own child process (``python <script> --child NAME ...``) so that its
peak RSS (``VmHWM``) is its own. A child prints one ``RESULT {json}`` line on stdout; the parent
collects those and prints the tables.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from anywhere: import the project
    sys.path.insert(0, str(ROOT))

from obsflow.connectors.sources.simulator import SimSpec, generate_block  # noqa: E402
from obsflow.flows.kernels.viewdef import ViewDef  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
AGGREGATES = ("count", "mean", "min", "max", "std")
WINDOWS = (("w1s", 1), ("w1m", 60))  # (view name, tumbling window length in seconds)
CHANNELS = ("temperature", "pressure")
ROW_GROUP_ROWS = 65_536  # small row groups: a batch reader never holds a big group in memory
RESULT_TAG = "RESULT "


def views() -> tuple[ViewDef, ...]:
    """The two obsflow views every benchmark computes."""
    return tuple(
        ViewDef(name, "tumbling", size=seconds * 10**9, aggregates=AGGREGATES)
        for name, seconds in WINDOWS
    )


# -- input data ------------------------------------------------------------------------------


def sim_spec(
    readings: int, *, sources: int, rate: float, seed: int = 1, start: str | None = None
) -> SimSpec:
    """A simulation with a little more than ``readings`` readings (gaps drop about 0.3 %)."""
    per_series = readings / (sources * len(CHANNELS))
    extra = {"start": start} if start else {}
    return SimSpec(
        sources=sources,
        channels=CHANNELS,
        rate=rate,
        duration=per_series * 1.02 / rate + 1.0,
        seed=seed,
        **extra,
    )


def write_readings(
    path: Path,
    readings: int,
    *,
    sources: int = 8,
    rate: float = 50.0,
    seed: int = 1,
    start: str | None = None,
) -> Path:
    """Write exactly ``readings`` simulated readings to a Parquet file, in event-time order.

    The file is built block by block (all sources' block ``b`` cover the same time span), so
    memory stays small and the rows come out as a merged, time-ordered instrument stream. An
    existing file with the right row count is reused.
    """
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == readings:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = sim_spec(readings, sources=sources, rate=rate, seed=seed, start=start)
    tmp = path.with_suffix(".tmp")
    written = 0
    writer: pq.ParquetWriter | None = None
    try:
        for block in range(spec.blocks):
            table = pa.concat_tables([generate_block(spec, s, block) for s in range(sources)])
            table = table.take(pc.sort_indices(table, [("time", "ascending")]))
            table = table.slice(0, readings - written)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            written += table.num_rows
            if written >= readings:
                break
    finally:
        if writer is not None:
            writer.close()
    if written != readings:
        raise RuntimeError(f"simulated only {written:,} of {readings:,} readings")
    tmp.replace(path)
    return path


def input_path(readings: int, *, sources: int, rate: float) -> Path:
    """Where the input file of a given size lives (reused across runs)."""
    return OUT / f"sim-{readings}-s{sources}-r{rate:g}.parquet"


def pandas_views(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Both views with pandas: floor time to the window, group, aggregate."""
    out = {}
    for name, seconds in WINDOWS:
        window = frame["time"].dt.floor(f"{seconds}s").rename("window_start")
        out[name] = frame.groupby(
            [frame["source"], frame["channel"], window], observed=True, sort=False
        )["value"].agg(list(AGGREGATES))
    return out


# -- process and memory -------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mb() -> float:
    """Current resident set size of this process, in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def emit(result: dict[str, Any]) -> None:
    """Hand a child's result to the parent."""
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_child(script: str, args: list[str], python: str | None = None) -> dict[str, Any]:
    """Run ``script --child ...`` in a fresh interpreter (``python``: another installation's,
    to compare obsflow before and after a change); return the result it emitted."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [python or sys.executable, script, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        check=False,
    )
    results = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not results:
        sys.stdout.write(proc.stdout)
        raise RuntimeError(f"child {args} failed with exit status {proc.returncode}")
    result: dict[str, Any] = json.loads(results[-1][len(RESULT_TAG) :])
    return result


# -- the obsflow job ----------------------------------------------------------------------------


def run_obsflow(inputs: list[str], store: Path, workers: int) -> dict[str, Any]:
    """Ingest ``inputs`` with the two views into a fresh store; time the whole run.

    Runs in the calling process (call it from a child). Returns seconds, peak RSS and the run
    summary's counts.
    """
    from obsflow.flows.pipeline import jobs
    from obsflow.flows.pipeline.ingest import IngestConfig

    shutil.rmtree(store, ignore_errors=True)
    base = rss_mb()
    config = IngestConfig(
        inputs=tuple(inputs), store=str(store), capture="bench", progress=False, views=views()
    )
    started = time.perf_counter()
    summary = jobs.execute(config, workers=workers).summary
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    return {
        "seconds": seconds,
        "peak_rss_mb": peak,
        "rss_before_mb": base,
        "input": summary["input"],
        "accepted": summary["accepted"],
        "balanced": summary["balanced"],
        "late": summary["late"],
        "view_rows": {k: v["rows"] for k, v in summary["views"].items()},
    }
