"""Ingest throughput: obsflow vs pandas (plain and tuned) vs DuckDB vs a per-item Bytewax
``fold_window`` pipeline.

All three read the same Parquet file of simulated readings (8 instruments x 2 channels, in
event-time order) and compute the same two views: 1 s and 1 min tumbling windows per
(source, channel) with count/mean/min/max/std.

- obsflow: ``obsflow.flows.pipeline.ingest`` end to end (read, validate, capture write, both views
written).
- pandas: ``read_parquet`` + for each window ``floor`` the time and ``groupby().agg()``.
- pandas tuned: only the four columns, the time as int64 ns, the window start by integer
  floor (``t - t % size``), ``groupby(sort=False).agg()`` per view (issue 16's baseline).
- duckdb: both views as ``GROUP BY`` queries over ``read_parquet`` (``epoch_ns(time) // size``).
- bytewax per-item: one Python item per reading, ``key_on`` (source, channel), two
  ``fold_window`` steps (``EventClock`` on the reading's time with no wait and a frozen system
  clock, ``TumblingWindower`` aligned to the epoch) with a Welford accumulator. The source
  reads the Parquet file in batches and turns rows into Python tuples; that conversion is
  inside the timing (it is part of any per-item pipeline) and is also reported on its own.
  It runs on the first ``--bytewax-readings`` rows (it is slow); rates are compared.

Goals: obsflow >= 0.25x pandas and >= 20x the per-item Bytewax pipeline (in process); issue 16:
``obsflow ingest`` (the CLI) >= 0.5x the tuned pandas job run as a script of its own, each
timed from spawn to exit (start-up and imports included).

Run: ``.venv/bin/python benchmarks/bench_ingest.py [--readings N] [--bytewax-readings N]
[--workers N]``. Each contender runs in its own child process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    AGGREGATES,
    OUT,
    WINDOWS,
    emit,
    input_path,
    pandas_views,
    peak_rss_mb,
    rss_mb,
    run_child,
    run_obsflow,
    write_readings,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
GOAL_VS_PANDAS = 0.25
GOAL_VS_BYTEWAX = 20.0
GOAL_VS_TUNED = 0.5  # issue 16: end to end, start-up included
RTOL = 1e-9  # values must agree with pandas to this relative tolerance
Row = tuple[str, str, datetime, float]  # (source, channel, time, value)
KEYS = ["source", "channel", "window_start"]
Window = tuple[str, str, int, list[float]]  # (view, "source/channel", window id, accumulator)

# -- pandas -------------------------------------------------------------------------------------


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows indexed by (source, channel, window_start in ns), sorted; aggregates only."""
    flat = frame.reset_index()
    flat["window_start"] = flat["window_start"].astype("datetime64[ns, UTC]")
    return flat.set_index(KEYS)[list(AGGREGATES)].sort_index()


def compare(ours: pd.DataFrame, ref: pd.DataFrame) -> dict[str, Any]:
    """Compare view rows indexed by (source, channel, window_start) with pandas' rows."""
    ours = _canonical(ours)
    ref = _canonical(ref)
    same_keys = ours.index.equals(ref.index)
    worst = 0.0
    if same_keys:
        for agg in AGGREGATES:
            a = ours[agg].to_numpy(dtype=np.float64)
            b = ref[agg].to_numpy(dtype=np.float64)
            both_nan = np.isnan(a) & np.isnan(b)
            scale = np.maximum(np.abs(b), 1.0)
            err = np.where(both_nan, 0.0, np.abs(a - b) / scale)
            worst = max(worst, float(np.nan_to_num(err, nan=np.inf).max(initial=0.0)))
    return {
        "rows": len(ours),
        "ref_rows": len(ref),
        "same_windows": bool(same_keys),
        "max_rel_err": worst,
        "ok": bool(same_keys and worst <= RTOL),
    }


def child_pandas(path: str, check_store: str | None) -> dict[str, Any]:
    """Time read + both groupbys; then (untimed) check obsflow's views against the result."""
    base = rss_mb()
    started = time.perf_counter()
    frame = pd.read_parquet(path)
    read_s = time.perf_counter() - started
    result = pandas_views(frame)
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    out: dict[str, Any] = {
        "seconds": seconds,
        "read_seconds": read_s,
        "peak_rss_mb": peak,
        "rss_before_mb": base,
        "readings": len(frame),
        "view_rows": {k: len(v) for k, v in result.items()},
    }
    if check_store:
        from deltalake import DeltaTable  # (the views are tables: read as any tool would)

        checks = {}
        for name, _ in WINDOWS:
            view = DeltaTable(str(Path(check_store) / "views" / name)).to_pandas()
            view["window_start"] = pd.to_datetime(view.pop("window_start_ns"), utc=True)
            view = view.set_index(KEYS)[list(AGGREGATES)]
            checks[name] = compare(view, result[name])
        out["obsflow_check"] = checks
    return out


def child_tuned(path: str) -> dict[str, Any]:
    """pandas as one would tune it: only the columns needed, the time as int64 ns, the window
    start by integer floor, one groupby per view (issue 16's baseline)."""
    base = rss_mb()
    started = time.perf_counter()
    frame = pd.read_parquet(path, columns=["source", "channel", "time", "value"])
    ns = frame["time"].astype("int64").to_numpy()
    counts = {}
    for name, seconds in WINDOWS:
        size = seconds * 10**9
        window = pd.Series(ns - ns % size, index=frame.index, name="window_start")
        rows = frame.groupby([frame["source"], frame["channel"], window], sort=False)["value"]
        counts[name] = len(rows.agg(list(AGGREGATES)))
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": base,
        "readings": len(frame),
        "view_rows": counts,
    }


def child_duckdb(path: str) -> dict[str, Any]:
    """DuckDB on the same file: both views as GROUP BY queries over ``read_parquet``."""
    import duckdb

    base = rss_mb()
    started = time.perf_counter()
    con = duckdb.connect()
    counts = {}
    for name, seconds in WINDOWS:
        size = seconds * 10**9
        query = f"""
            SELECT source, channel, epoch_ns(time) // {size} * {size} AS window_start,
                   count(value), avg(value), min(value), max(value), stddev_samp(value)
            FROM read_parquet(?) GROUP BY ALL"""
        counts[name] = len(con.execute(query, [path]).fetchnumpy()["source"])
    readings = con.execute("SELECT count(*) FROM read_parquet(?)", [path]).fetchone()
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": base,
        "readings": int(readings[0]) if readings else 0,
        "view_rows": counts,
    }


# -- end to end: the commands a user would run, timed from spawn to exit --------------------

TUNED_SCRIPT = """
import sys
import pandas as pd
frame = pd.read_parquet(sys.argv[1], columns=["source", "channel", "time", "value"])
ns = frame["time"].astype("int64").to_numpy()
for seconds in (1, 60):
    window = pd.Series(ns - ns % (seconds * 10**9), index=frame.index, name="window_start")
    rows = frame.groupby([frame["source"], frame["channel"], window], sort=False)["value"]
    rows.agg(["count", "mean", "min", "max", "std"])
"""


def views_toml(path: Path) -> Path:
    """The benchmark's two views as a ``--views`` file."""
    path.write_text(
        "".join(
            f'[[view]]\nname = "{name}"\nkind = "tumbling"\nsize = "{seconds}s"\n'
            f"aggregates = {list(AGGREGATES)!r}\n\n".replace("'", '"')
            for name, seconds in WINDOWS
        )
    )
    return path


def end_to_end(path: str, store: Path, workers: int, before: str | None = None) -> dict[str, float]:
    """Wall seconds of ``obsflow ingest`` (the CLI, start-up and imports included), of the
    tuned pandas job as a script of its own (``python -c``, start-up and imports included)
    and, with ``before`` (another installation's Python), of that obsflow's ``ingest``."""
    toml = views_toml(OUT / "bench-views.toml")
    out = {}
    commands = [("obsflow", str(Path(sys.executable).with_name("obsflow")))]
    if before:
        commands.append(("before", str(Path(before).with_name("obsflow"))))
    for name, program in commands:
        shutil.rmtree(store, ignore_errors=True)
        argv = [program, "ingest", path, "--store", str(store), "--capture", "bench"]
        argv += ["--views", str(toml), "--workers", str(workers), "--quiet"]
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        out[name] = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", TUNED_SCRIPT, path], check=True, stdout=subprocess.DEVNULL
    )
    out["tuned"] = time.perf_counter() - started
    shutil.rmtree(store, ignore_errors=True)
    return out


# -- Bytewax, one Python item per reading ---------------------------------------------------


def parquet_rows(path: str, limit: int, batch_rows: int) -> Iterator[list[Row]]:
    """The first ``limit`` rows of a Parquet file as lists of Python tuples, batch by batch."""
    left = limit
    # pre_buffer=False: pyarrow's default (True) would buffer the whole file up front.
    for rb in pq.ParquetFile(path, pre_buffer=False).iter_batches(
        batch_size=batch_rows, columns=["source", "channel", "time", "value"]
    ):
        if left <= 0:
            return
        rb = rb.slice(0, left)
        left -= rb.num_rows
        micros = (rb.column("time").cast(pa.int64()).to_numpy() // 1000).tolist()
        times = [EPOCH + US * t for t in micros]
        yield list(
            zip(
                rb.column("source").to_pylist(),
                rb.column("channel").to_pylist(),
                times,
                rb.column("value").to_pylist(),
                strict=True,
            )
        )


def welford_new() -> list[float]:
    """Accumulator [n, mean, m2, min, max]."""
    return [0, 0.0, 0.0, math.inf, -math.inf]


def welford_fold(acc: list[float], row: Row) -> list[float]:
    x = row[3]
    n = acc[0] + 1
    d = x - acc[1]
    mean = acc[1] + d / n
    acc[0], acc[1] = n, mean
    acc[2] += d * (x - mean)
    if x < acc[3]:
        acc[3] = x
    if x > acc[4]:
        acc[4] = x
    return acc


def welford_merge(a: list[float], b: list[float]) -> list[float]:
    """Chan's parallel merge (only session windows merge; required by ``fold_window``)."""
    n = a[0] + b[0]
    if n == 0:
        return a
    d = b[1] - a[1]
    m2 = a[2] + b[2] + d * d * a[0] * b[0] / n
    return [n, a[1] + d * b[0] / n, m2, min(a[3], b[3]), max(a[4], b[4])]


def tagger(view: str) -> Callable[[tuple[str, tuple[int, list[float]]]], Window]:
    """Turn ``fold_window`` output ``(key, (window id, acc))`` into a ``Window`` of ``view``."""

    def tag(kv: tuple[str, tuple[int, list[float]]]) -> Window:
        return (view, kv[0], kv[1][0], kv[1][1])

    return tag


def child_bytewax(path: str, limit: int, workers: int, batch_rows: int) -> dict[str, Any]:
    """Time the per-item pipeline; then (untimed) check its windows against pandas."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
    from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
    from bytewax.run import cli_main
    from bytewax.testing import TestingSink

    class RowsPartition(StatefulSourcePartition[Row, None]):
        def __init__(self) -> None:
            self._batches = parquet_rows(path, limit, batch_rows)

        def next_batch(self) -> list[Row]:
            return next(self._batches)  # StopIteration ends the input

        def snapshot(self) -> None:
            return None

    class RowsSource(FixedPartitionedSource[Row, None]):
        def list_parts(self) -> list[str]:
            return ["0"]

        def build_part(self, step_id: str, for_part: str, resume: None) -> RowsPartition:
            return RowsPartition()

    windows: list[Window] = []
    late: list[Any] = []
    flow = Dataflow("per_item")
    rows = op.input("read", flow, RowsSource())
    keyed = op.key_on("key", rows, lambda r: f"{r[0]}/{r[1]}")
    # Pure event time, like obsflow: the watermark is the largest event time seen. A frozen
    # system clock is needed for that: with the real one, the watermark also advances with wall
    # time between batches, and replayed readings less than that far apart become "late".
    clock: EventClock[Row] = EventClock(
        lambda r: r[2], wait_for_system_duration=timedelta(0), now_getter=lambda: EPOCH
    )
    for name, length in WINDOWS:
        out = fold_window(
            f"fold_{name}",
            keyed,
            clock,
            TumblingWindower(length=timedelta(seconds=length), align_to=EPOCH),
            welford_new,
            welford_fold,
            welford_merge,
        )
        op.output(
            f"out_{name}", op.map(f"tag_{name}", out.down, tagger(name)), TestingSink(windows)
        )
        op.output(f"late_{name}", out.late, TestingSink(late))

    base = rss_mb()
    started = time.perf_counter()
    # What run_flow does, without importing the project into the baseline's process.
    cli_main(flow, workers_per_process=workers, epoch_interval=timedelta(seconds=2))  # type: ignore[no-untyped-call]
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()

    started = time.perf_counter()
    n_read = sum(len(b) for b in parquet_rows(path, limit, batch_rows))
    convert_s = time.perf_counter() - started

    # Untimed sanity check: the same windows and values as pandas on the same rows.
    frame = pq.read_table(path).slice(0, limit).to_pandas()
    ref = pandas_views(frame)
    checks = {}
    for name, length in WINDOWS:
        got = [
            (
                k.split("/")[0],
                k.split("/")[1],
                pd.Timestamp(wid * length * 10**9, tz="UTC"),
                a[0],
                a[1],
                a[3],
                a[4],
                math.sqrt(max(a[2] / (a[0] - 1), 0.0)) if a[0] > 1 else math.nan,
            )
            for v, k, wid, a in windows
            if v == name
        ]
        ours = pd.DataFrame(got, columns=["source", "channel", "window_start", *AGGREGATES])
        checks[name] = compare(ours.set_index(KEYS), ref[name])
    return {
        "seconds": seconds,
        "convert_seconds": convert_s,
        "peak_rss_mb": peak,
        "rss_before_mb": base,
        "readings": n_read,
        "late": len(late),
        "view_rows": {k: c["rows"] for k, c in checks.items()},
        "pandas_check": checks,
    }


# -- parent: run the contenders, print the table ---------------------------------------------


def fmt_rate(r: float) -> str:
    return f"{r:,.0f}"


def worst(checks: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per view, the check of all rounds with the largest error (any failure wins)."""
    return {
        view: max((c[view] for c in checks), key=lambda c: (not c["ok"], c["max_rel_err"]))
        for view in checks[0]
    }


def best(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of repeated runs, with the highest peak RSS of all of them."""
    out = dict(min(results, key=lambda r: r["seconds"]))
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
    out["all_seconds"] = [r["seconds"] for r in results]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readings", type=int, default=4_000_000, help="input size (default 4M)")
    p.add_argument(
        "--bytewax-readings",
        type=int,
        default=1_000_000,
        help="rows (first N of the file) for the slow per-item pipeline (default 1M)",
    )
    p.add_argument("--workers", type=int, default=1, help="Bytewax workers (default 1)")
    p.add_argument("--sources", type=int, default=8, help="simulated instruments (default 8)")
    p.add_argument("--rate", type=float, default=50.0, help="Hz per channel (default 50)")
    p.add_argument("--repeat", type=int, default=3, help="rounds; best time counts (default 3)")
    p.add_argument("--batch-rows", type=int, default=10_000, help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help="keep the obsflow store afterwards")
    p.add_argument(
        "--before",
        metavar="PYTHON",
        help="another obsflow installation's Python (e.g. an older checkout's .venv/bin/python): "
        "its `obsflow ingest` runs end to end beside this one's, interleaved, on the same input",
    )
    p.add_argument(
        "--child",
        choices=["obsflow", "pandas", "tuned", "duckdb", "bytewax"],
        help=argparse.SUPPRESS,
    )
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--check-store", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child == "obsflow":
        emit(run_obsflow([args.input], Path(args.store), args.workers))
        return 0
    if args.child == "pandas":
        emit(child_pandas(args.input, args.check_store))
        return 0
    if args.child == "tuned":
        emit(child_tuned(args.input))
        return 0
    if args.child == "duckdb":
        emit(child_duckdb(args.input))
        return 0
    if args.child == "bytewax":
        emit(child_bytewax(args.input, args.bytewax_readings, args.workers, args.batch_rows))
        return 0

    started = time.perf_counter()
    path = input_path(args.readings, sources=args.sources, rate=args.rate)
    write_readings(path, args.readings, sources=args.sources, rate=args.rate)
    print(
        f"input: {path.relative_to(OUT.parent.parent)}: {args.readings:,} readings, "
        f"{args.sources} sources x 2 channels at {args.rate:g} Hz, event-time order "
        f"({path.stat().st_size / 2**20:.0f} MiB, ready in {time.perf_counter() - started:.1f} s)"
    )
    print(f"views: {', '.join(f'{n} ({s} s tumbling)' for n, s in WINDOWS)}: {AGGREGATES}")
    print(
        f"workers: {args.workers}; machine: {_cpus()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f} at start; Python {sys.version.split()[0]}"
    )

    script = str(Path(__file__).resolve())
    store = OUT / "store-ingest"
    common = ["--input", str(path), "--workers", str(args.workers)]
    n_bw = min(args.bytewax_readings, args.readings)
    bw_args = ["--bytewax-readings", str(n_bw), "--batch-rows", str(args.batch_rows)]
    runs: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("obsflow", "pandas", "tuned", "duckdb", "bytewax")
    }
    e2e: list[dict[str, float]] = []
    for i in range(args.repeat):
        # Interleaved rounds, so a busy moment on the machine hits every contender alike.
        print(
            f"round {i + 1}/{args.repeat}: obsflow, pandas, bytewax per-item "
            f"(first {n_bw:,} readings) ...",
            flush=True,
        )
        runs["obsflow"].append(
            run_child(script, ["--child", "obsflow", "--store", str(store), *common])
        )
        runs["pandas"].append(
            run_child(script, ["--child", "pandas", "--check-store", str(store), *common])
        )
        for name in ("tuned", "duckdb"):
            runs[name].append(run_child(script, ["--child", name, *common]))
        runs["bytewax"].append(run_child(script, ["--child", "bytewax", *bw_args, *common]))
        e2e.append(end_to_end(str(path), store, args.workers, args.before))
    obs, pdr, tuned, duck, bw = (
        best(runs[k]) for k in ("obsflow", "pandas", "tuned", "duckdb", "bytewax")
    )
    if not args.keep:
        shutil.rmtree(store, ignore_errors=True)

    rate = {
        "obsflow": obs["input"] / obs["seconds"],
        "pandas": pdr["readings"] / pdr["seconds"],
        "pandas tuned": tuned["readings"] / tuned["seconds"],
        "duckdb": duck["readings"] / duck["seconds"],
        "bytewax per-item": bw["readings"] / bw["seconds"],
    }
    rows = [
        ("obsflow", obs["input"], obs),
        ("pandas", pdr["readings"], pdr),
        ("pandas tuned", tuned["readings"], tuned),
        ("duckdb", duck["readings"], duck),
        ("bytewax per-item", bw["readings"], bw),
    ]
    print()
    head = (
        f"{'contender':<17} {'readings':>11} {'seconds':>8} {'readings/s':>12} "
        f"{'vs pandas':>9} {'obsflow x':>9} {'peak RSS':>9}"
    )
    print(head)
    print("-" * len(head))
    for name, n, r in rows:
        print(
            f"{name:<17} {n:>11,} {r['seconds']:>8.2f} {fmt_rate(rate[name]):>12} "
            f"{rate[name] / rate['pandas']:>8.2f}x {rate['obsflow'] / rate[name]:>8.1f}x "
            f"{r['peak_rss_mb']:>6.0f} MiB"
        )
    print(
        f"\nseconds are the best of {args.repeat} interleaved rounds; all rounds: "
        + "; ".join(
            f"{name} " + "/".join(f"{t:.2f}" for t in r["all_seconds"]) for name, _, r in rows
        )
    )
    print(
        f"(pandas: {pdr['read_seconds']:.2f} s of its {pdr['seconds']:.2f} s is read_parquet; "
        f"bytewax per-item: {bw['convert_seconds']:.2f} s of its {bw['seconds']:.2f} s is reading "
        "the file and making Python tuples; RSS after imports, before the job: "
        f"obsflow {obs['rss_before_mb']:.0f}, pandas {pdr['rss_before_mb']:.0f}, "
        f"bytewax {bw['rss_before_mb']:.0f} MiB)"
    )

    print("\nsanity checks (the worst of all rounds)")
    sane = True
    ok = all(
        r["balanced"] and r["accepted"] == args.readings and not any(r["late"].values())
        for r in runs["obsflow"]
    )
    sane &= ok
    print(
        f"  obsflow run summary: {obs['input']:,} input, {obs['accepted']:,} accepted, "
        f"late {obs['late']}: {'ok' if ok else 'FAIL'}"
    )
    for label, checks in (
        ("obsflow views", worst([r["obsflow_check"] for r in runs["pandas"]])),
        (
            f"bytewax per-item ({n_bw:,} readings)",
            worst([r["pandas_check"] for r in runs["bytewax"]]),
        ),
    ):
        for view, c in checks.items():
            sane &= c["ok"]
            print(
                f"  {label} {view}: {c['rows']:,} windows vs pandas {c['ref_rows']:,}, "
                f"max rel. error {c['max_rel_err']:.1e}: {'ok' if c['ok'] else 'FAIL'}"
            )
    for name in ("tuned", "duckdb"):  # the same windows as pandas: the same job
        same = all(r["view_rows"] == pdr["view_rows"] for r in runs[name])
        sane &= same
        print(f"  {name} windows {runs[name][0]['view_rows']}: {'ok' if same else 'FAIL'}")
    late = max(r["late"] for r in runs["bytewax"])
    sane &= late == 0
    print(f"  bytewax per-item late readings: {late}: {'ok' if late == 0 else 'FAIL'}")

    vs_tuned = rate["obsflow"] / rate["pandas tuned"]
    vs_pandas = rate["obsflow"] / rate["pandas"]
    vs_bytewax = rate["obsflow"] / rate["bytewax per-item"]
    met_p, met_b = vs_pandas >= GOAL_VS_PANDAS, vs_bytewax >= GOAL_VS_BYTEWAX
    print("\ngoals")
    print(
        f"  obsflow >= {GOAL_VS_PANDAS}x pandas:           {vs_pandas:.2f}x  "
        f"{'MET' if met_p else 'NOT MET'}"
    )
    print(
        f"  obsflow >= {GOAL_VS_BYTEWAX:.0f}x bytewax per-item: {vs_bytewax:.1f}x  "
        f"{'MET' if met_b else 'NOT MET'}"
    )
    print(
        f"  (in process, imports excluded: obsflow {vs_tuned:.2f}x tuned pandas, "
        f"{rate['obsflow'] / rate['duckdb']:.2f}x DuckDB)"
    )
    fast = {k: min(r[k] for r in e2e) for k in ("obsflow", "tuned")}
    vs_tuned_e2e = fast["tuned"] / fast["obsflow"]
    met_t = vs_tuned_e2e >= GOAL_VS_TUNED
    print(
        f"  obsflow >= {GOAL_VS_TUNED}x tuned pandas, end to end: {vs_tuned_e2e:.2f}x  "
        f"{'MET' if met_t else 'NOT MET'} (issue 16: `obsflow ingest` {fast['obsflow']:.2f} s vs "
        f"the tuned script {fast['tuned']:.2f} s, each from spawn to exit, best of "
        f"{len(e2e)}: " + "; ".join(f"{r['obsflow']:.2f}/{r['tuned']:.2f}" for r in e2e) + ")"
    )
    if args.before:
        then = min(r["before"] for r in e2e)
        print(
            f"  before and after (`obsflow ingest` of {args.before} and of this checkout, end "
            f"to end, interleaved): {then:.2f} s vs {fast['obsflow']:.2f} s = "
            f"{then / fast['obsflow']:.2f}x (above 1: faster now); rounds "
            + "; ".join(f"{r['before']:.2f}/{r['obsflow']:.2f}" for r in e2e)
        )
    return 0 if sane and met_p and met_b and met_t else 1


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
