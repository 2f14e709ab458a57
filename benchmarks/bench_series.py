"""Many series and quantiles: ``obsflow ingest`` vs a pandas script vs DuckDB, whole processes.

Cases (4 M simulated readings each, in event-time order, 2 channels per source):

- ``many``: 100,000 series (50,000 sources at 1 Hz: 40 one-second windows per series), views
  1 s + 1 min tumbling with count/mean/min/max/std;
- ``few``: 16 series (8 sources at 50 Hz), the same two views;
- ``plain`` / ``quantiles``: the 16-series input, one 1 s view with count/mean/min/max/std,
  without and with p50/p90/p99 (what quantiles add to the same run).

Every contender is a process of its own, timed from spawn to exit (start-up and imports
included), its peak RSS from ``wait4``: ``obsflow ingest`` of this checkout (fresh store each
time), with ``--before DIR`` the same command of another checkout (``DIR/.venv/bin/obsflow``),
a pandas script (the tuned one of ``bench_ingest.py``: four columns, integer floor, one
``groupby().agg()`` per view; ``quantile(..., interpolation="lower")`` for pNN) and DuckDB
(``GROUP BY`` over ``read_parquet``; ``quantile_disc`` for pNN). Rounds are interleaved (each
round runs every case and contender once, the order of the obsflow trees alternating) and the
medians are printed with their ratios.

Run: ``.venv/bin/python benchmarks/bench_series.py [--before DIR] [--rounds 3]
[--cases many,few,plain,quantiles]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, input_path, write_readings

READINGS = 4_000_000
BASIC = ("count", "mean", "min", "max", "std")
QUANTILES = ("p50", "p90", "p99")
# case: (sources, rate Hz, views as (name, seconds, aggregates))
CASES: dict[str, tuple[int, float, tuple[tuple[str, int, tuple[str, ...]], ...]]] = {
    "many": (50_000, 1.0, (("w1s", 1, BASIC), ("w1m", 60, BASIC))),
    "few": (8, 50.0, (("w1s", 1, BASIC), ("w1m", 60, BASIC))),
    "plain": (8, 50.0, (("q1s", 1, BASIC),)),
    "quantiles": (8, 50.0, (("q1s", 1, BASIC + QUANTILES),)),
}

PANDAS = """
import sys
import pandas as pd
frame = pd.read_parquet(sys.argv[1], columns=["source", "channel", "time", "value"])
ns = frame["time"].astype("int64").to_numpy()
for spec in sys.argv[2:]:
    seconds, aggs = spec.split(":")
    aggs = aggs.split(",")
    window = pd.Series(ns - ns % (int(seconds) * 10**9), index=frame.index, name="window_start")
    rows = frame.groupby([frame["source"], frame["channel"], window], sort=False)["value"]
    rows.agg([a for a in aggs if not a.startswith("p")])
    qs = [int(a[1:]) / 100 for a in aggs if a.startswith("p")]
    if qs:
        rows.quantile(qs, interpolation="lower")
"""

DUCKDB = """
import sys
import duckdb
con = duckdb.connect()
for spec in sys.argv[2:]:
    seconds, aggs = spec.split(":")
    size = int(seconds) * 10**9
    sql = {"count": "count(value)", "mean": "avg(value)", "min": "min(value)",
           "max": "max(value)", "std": "stddev_samp(value)"}
    cols = [sql.get(a) or f"quantile_disc(value, {int(a[1:]) / 100})" for a in aggs.split(",")]
    query = (f"SELECT source, channel, epoch_ns(time) // {size} * {size} AS w, "
             f"{', '.join(cols)} FROM read_parquet(?) GROUP BY ALL")
    con.execute(query, [sys.argv[1]]).fetchnumpy()
"""


def run(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process, from spawn to exit."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {err[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def views_toml(path: Path, views: tuple[tuple[str, int, tuple[str, ...]], ...]) -> Path:
    path.write_text(
        "".join(
            f'[[view]]\nname = "{n}"\nkind = "tumbling"\nsize = "{s}s"\n'
            f"aggregates = [{', '.join(repr(a).replace(chr(39), chr(34)) for a in aggs)}]\n\n"
            for n, s, aggs in views
        )
    )
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", metavar="DIR", help="another checkout with its own .venv")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    args = p.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    here = Path(sys.executable).with_name("obsflow")
    trees = {"obsflow": str(here)}
    if args.before:
        trees["before"] = str(Path(args.before) / ".venv" / "bin" / "obsflow")
    work = OUT / "series"
    work.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for case in cases:
        sources, rate, views = CASES[case]
        path = input_path(READINGS, sources=sources, rate=rate)
        write_readings(path, READINGS, sources=sources, rate=rate)
        inputs[case] = (path, views_toml(work / f"{case}.toml", views))
    print(
        f"{READINGS:,} readings per case; rounds: {args.rounds}; trees: "
        + ", ".join(f"{k} = {v}" for k, v in trees.items())
        + f"; load average {os.getloadavg()[0]:.2f} at start"
    )
    times: dict[tuple[str, str], list[float]] = {}
    rss: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for case in cases:
            path, toml = inputs[case]
            specs = [f"{s}:{','.join(a)}" for _, s, a in CASES[case][2]]
            names = list(trees) if r % 2 == 0 else list(trees)[::-1]
            commands = {
                name: [
                    trees[name],
                    "ingest",
                    str(path),
                    "--store",
                    str(work / "store"),
                    "--capture",
                    "bench",
                    "--views",
                    str(toml),
                    "--quiet",
                ]
                for name in names
            }
            commands["pandas"] = [sys.executable, "-c", PANDAS, str(path), *specs]
            commands["duckdb"] = [sys.executable, "-c", DUCKDB, str(path), *specs]
            for name, command in commands.items():
                shutil.rmtree(work / "store", ignore_errors=True)
                seconds, peak = run(command)
                times.setdefault((case, name), []).append(seconds)
                rss.setdefault((case, name), []).append(peak)
                print(
                    f"round {r + 1} {case:<9} {name:<8} {seconds:7.2f} s {peak:6.0f} MiB",
                    flush=True,
                )
    shutil.rmtree(work / "store", ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nmedians of {args.rounds} rounds (seconds from spawn to exit; peak RSS: the largest)")
    head = (
        f"{'case':<10} {'contender':<9} {'seconds':>8} {'x pandas':>8} {'x duckdb':>8} "
        f"{'peak RSS':>9}"
    )
    print(head)
    print("-" * len(head))
    for case in cases:
        for name in [*trees, "pandas", "duckdb"]:
            t = med[(case, name)]
            print(
                f"{case:<10} {name:<9} {t:>8.2f} {t / med[(case, 'pandas')]:>7.2f}x "
                f"{t / med[(case, 'duckdb')]:>7.2f}x {max(rss[(case, name)]):>5.0f} MiB"
            )
        if "before" in trees:
            ratio = med[(case, "before")] / med[(case, "obsflow")]
            print(f"{case:<10} before / after: {ratio:.2f}x (above 1: faster now)")
    if {"plain", "quantiles"} <= set(cases):
        for name in trees:
            added = med[("quantiles", name)] / med[("plain", name)] - 1
            print(f"p50/p90/p99 add {added:+.0%} to the 1 s view run ({name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
