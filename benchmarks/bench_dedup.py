"""Duplicates older than the dedup memory: what finding them in the capture costs.

A capture of 20 M readings holds a 1 M-reading file F (8 instruments x 2 channels at 50 Hz).
Later readings, 13 hours of event time on, move every series far beyond the in-memory dedup
horizon (10 min), so when F is ingested again (``--force``) only the capture itself can tell
its readings were captured already (``connectors.datasets.dedup_index``). The benchmark times, in
each
round on a fresh copy of the same 19 M-reading base capture, each in its own child process:

- fresh: ingest F into the 19 M capture (F is new: nothing to find);
- again: after the later readings, ingest F again: every reading must be a duplicate.

It prints seconds, readings/s and peak RSS of both, and checks that the second run added 0
readings and counted 1 M duplicates. No views, so the numbers are the capture side's.

Run: ``.venv/bin/python benchmarks/bench_dedup.py [--base 19M] [--file 1M] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, emit, peak_rss_mb, rss_mb, run_child, write_readings

GOAL = 1.5  # the second ingest may cost at most this times the first


def child_ingest(path: str, store: str, force: bool) -> dict[str, Any]:
    from obsflow.flows.pipeline import jobs
    from obsflow.flows.pipeline.ingest import IngestConfig

    base = rss_mb()
    config = IngestConfig(inputs=(path,), store=store, capture="c", progress=False, views=())
    started = time.perf_counter()
    summary = jobs.execute(config, force=force).summary
    seconds = time.perf_counter() - started
    keys = ("input", "accepted", "duplicates", "rejected", "balanced")
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": base} | {
        k: summary[k] for k in keys
    }


def count(text: str) -> int:
    return int(float(text[:-1]) * 1_000_000) if text.endswith("M") else int(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="19M", help="readings in the capture before F (19M)")
    p.add_argument("--file", default="1M", help="readings in F (1M)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path")
    p.add_argument("--store")
    p.add_argument("--force", action="store_true")
    args = p.parse_args()
    if args.child:
        emit(child_ingest(args.path, args.store, args.force))
        return

    n_base, n_file = count(args.base), count(args.file)
    base_in = write_readings(OUT / f"dedup-base-{n_base}.parquet", n_base, seed=1)
    f_in = write_readings(
        OUT / f"dedup-file-{n_file}.parquet", n_file, seed=2, start="2026-01-02T00:00:00Z"
    )
    later = write_readings(
        OUT / "dedup-later.parquet", 16_000, seed=3, start="2026-01-02T13:00:00Z"
    )
    base_store = OUT / f"store-dedup-{n_base}"
    if not (base_store / "_obsflow").exists():
        print(f"building the base capture of {n_base:,} readings (once; it is reused) ...")
        shutil.rmtree(base_store, ignore_errors=True)
        run_child(__file__, ["--child", "--path", str(base_in), "--store", str(base_store)])

    def ingest(path: Path, store: Path, force: bool = False) -> dict[str, Any]:
        extra = ["--force"] if force else []
        return run_child(__file__, ["--child", "--path", str(path), "--store", str(store), *extra])

    fresh, again = [], []
    for i in range(args.repeat):
        print(f"round {i + 1}/{args.repeat}: copy the base, ingest F, later readings, F again")
        store = OUT / "store-dedup-round"
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(base_store, store)
        fresh.append(ingest(f_in, store))
        ingest(later, store)
        again.append(ingest(f_in, store, force=True))
    shutil.rmtree(OUT / "store-dedup-round", ignore_errors=True)

    best_fresh = min(fresh, key=lambda r: r["seconds"])
    best_again = min(again, key=lambda r: r["seconds"])
    print(f"\ncapture: {n_base:,} readings, then F ({n_file:,}) and 16,000 later readings")
    print(f"{'run':<34}{'seconds':>9}{'readings/s':>13}{'peak RSS':>10}  counts")
    runs = (("fresh: F into the capture", best_fresh), ("again: F, all duplicates", best_again))
    for name, r in runs:
        print(
            f"{name:<34}{r['seconds']:>9.2f}{r['input'] / r['seconds']:>13,.0f}"
            f"{r['peak_rss_mb']:>7.0f} MiB  {r['accepted']:,} accepted, "
            f"{r['duplicates']:,} duplicates"
        )
    print(
        "seconds are the best of the rounds; all rounds: fresh "
        + "/".join(f"{r['seconds']:.2f}" for r in fresh)
        + "; again "
        + "/".join(f"{r['seconds']:.2f}" for r in again)
    )
    ok = all(r["accepted"] == 0 and r["duplicates"] == n_file and r["balanced"] for r in again)
    print(
        f"\nsanity: every second ingest added 0 readings and counted {n_file:,} duplicates: "
        f"{'ok' if ok else 'FAILED'}"
    )
    ratio = best_again["seconds"] / best_fresh["seconds"]
    rss = best_again["peak_rss_mb"] / best_fresh["peak_rss_mb"]
    print(f"goal: again <= {GOAL}x fresh: {ratio:.2f}x {'MET' if ratio <= GOAL else 'NOT MET'}")
    print(f"memory: peak RSS again / fresh = {rss:.2f}x")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
