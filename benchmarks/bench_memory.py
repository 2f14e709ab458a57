"""Peak memory of obsflow ingest and replay as the input grows: state is per open window and
per dedup horizon, not per reading.

Runs the same job as ``bench_ingest.py`` (1 s and 1 min tumbling views, count/mean/min/max/std)
over 1 to 16 million simulated readings, each size in a fresh child process, then replays the
capture it made into the same views (``bench_replay.py``'s job), and prints each run's peak RSS
(``VmHWM``). Inputs are single Parquet files written with 64k-row row groups; obsflow reads
them (and the capture) in batches, so it never needs the whole input. For contrast, pandas
(``read_parquet`` + the same two groupbys) holds everything at once.

Run: ``.venv/bin/python benchmarks/bench_memory.py [--sizes 1M,2M,4M,8M,16M] [--workers N]
[--no-pandas]``.
"""

from __future__ import annotations

# isort: off
# First, as the CLI does: obsflow sets allocator options that must precede pyarrow's loading.
import obsflow.connectors  # noqa: F401
# isort: on

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_replay import child_obsflow as child_replay
from common import (
    OUT,
    emit,
    input_path,
    pandas_views,
    peak_rss_mb,
    rss_mb,
    run_child,
    run_obsflow,
    write_readings,
)

ARROW_BYTES_PER_READING = 37  # source/channel offsets + short strings, seq, time, value
FLAT_RATIO = 1.25  # "flat": the largest run's peak RSS is at most this times the smallest's


def parse_size(text: str) -> int:
    """``"8M"`` -> 8_000_000, ``"500k"`` -> 500_000, ``"1000"`` -> 1000."""
    t = text.strip().lower()
    scale = {"k": 10**3, "m": 10**6}.get(t[-1:], 1)
    return int(float(t.rstrip("km")) * scale)


def child_pandas(path: str) -> dict[str, Any]:
    """pandas reference: read everything, then both groupbys."""
    base = rss_mb()
    started = time.perf_counter()
    frame = pd.read_parquet(path)
    pandas_views(frame)
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": base,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sizes", default="1M,2M,4M,8M,16M", help="input sizes (default 1M,2M,4M,8M,16M)"
    )
    p.add_argument("--workers", type=int, default=1, help="Bytewax workers (default 1)")
    p.add_argument("--sources", type=int, default=8, help="simulated instruments (default 8)")
    p.add_argument("--rate", type=float, default=50.0, help="Hz per channel (default 50)")
    p.add_argument("--no-pandas", action="store_true", help="skip the pandas reference runs")
    p.add_argument("--child", choices=["obsflow", "replay", "pandas"], help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child == "obsflow":
        emit(run_obsflow([args.input], Path(args.store), args.workers))
        return 0
    if args.child == "replay":
        emit(child_replay(args.store, args.workers))
        return 0
    if args.child == "pandas":
        emit(child_pandas(args.input))
        return 0

    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    script = str(Path(__file__).resolve())
    store = OUT / "store-memory"
    print(
        f"obsflow ingest, views w1s + w1m, {args.workers} worker(s); "
        f"{args.sources} sources x 2 channels at {args.rate:g} Hz; one child process per run"
    )
    results: list[tuple[int, dict[str, Any], dict[str, Any], dict[str, Any] | None]] = []
    for n in sizes:
        path = input_path(n, sources=args.sources, rate=args.rate)
        write_readings(path, n, sources=args.sources, rate=args.rate)
        print(f"running {n:,} readings ...", flush=True)
        common = ["--input", str(path), "--workers", str(args.workers)]
        obs = run_child(script, ["--child", "obsflow", "--store", str(store), *common])
        rep = run_child(script, ["--child", "replay", "--store", str(store), *common])
        shutil.rmtree(store, ignore_errors=True)
        if obs["accepted"] != n or not obs["balanced"] or rep["input"] != n:
            print(f"  a run did not take all readings: ingest {obs}, replay {rep}")
            return 1
        ref = None if args.no_pandas else run_child(script, ["--child", "pandas", *common])
        results.append((n, obs, rep, ref))

    print()
    head = (
        f"{'readings':>11} {'ingest s':>8} {'readings/s':>11} {'peak RSS':>9} {'vs first':>8}"
        f"   {'replay s':>8} {'peak RSS':>9} {'vs first':>8}   {'pandas peak':>11} {'vs first':>8}"
    )
    print(head)
    print("-" * len(head))
    first_obs, first_rep = results[0][1]["peak_rss_mb"], results[0][2]["peak_rss_mb"]
    first_pd = results[0][3]["peak_rss_mb"] if results[0][3] else None
    for n, obs, rep, ref in results:
        pd_cols = (
            f"{ref['peak_rss_mb']:>7.0f} MiB {ref['peak_rss_mb'] / first_pd:>7.2f}x"
            if ref and first_pd
            else f"{'-':>11} {'-':>8}"
        )
        print(
            f"{n:>11,} {obs['seconds']:>8.2f} {n / obs['seconds']:>11,.0f} "
            f"{obs['peak_rss_mb']:>5.0f} MiB {obs['peak_rss_mb'] / first_obs:>7.2f}x   "
            f"{rep['seconds']:>8.2f} {rep['peak_rss_mb']:>5.0f} MiB "
            f"{rep['peak_rss_mb'] / first_rep:>7.2f}x   {pd_cols}"
        )
    print(f"(RSS after imports, before the job: {results[0][1]['rss_before_mb']:.0f} MiB)")

    flat = True
    (n0, o0, r0, _), (n1, o1, r1, _) = results[0], results[-1]
    for job, first, last in (("ingest", o0, o1), ("replay", r0, r1)):
        ratio = last["peak_rss_mb"] / first["peak_rss_mb"]
        per_reading = (last["peak_rss_mb"] - first["peak_rss_mb"]) * 2**20 / max(n1 - n0, 1)
        flat &= ratio <= FLAT_RATIO
        print(
            f"\nobsflow {job} peak RSS {n1 / n0:.0f}x the input: {first['peak_rss_mb']:.0f} -> "
            f"{last['peak_rss_mb']:.0f} MiB ({ratio:.2f}x), {per_reading:.1f} bytes per extra "
            f"reading (holding readings would cost >= {ARROW_BYTES_PER_READING} bytes each)"
        )
    print(f"flat (largest <= {FLAT_RATIO}x smallest, ingest and replay): {'YES' if flat else 'NO'}")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
