"""Dedup: the kernel old vs new, the state a run leaves, and (``--archive``) duplicates
older than the dedup memory.

Default part, on two inputs of the same size (``--readings``, 4 M): 16 series (8 sources x 2
channels) and 100,000 series (50,000 x 2), each series' readings 20 ms apart, seq numbered
per source, rows in event-time order:

- kernel: the dedup kernel of this tree against the one of ``--before`` (a git revision,
  loaded from ``git show``), fed the same 256 Ki-row batches of one partition, rounds
  interleaved, medians: readings/s, and the state each would save (Parquet bytes of
  ``to_table()``);
- end to end: ``obsflow ingest`` (no views) with dedup on vs ``--dedup-horizon 0``, whole
  processes interleaved, medians; and the dedup state that run left against the capture's bytes
  (goal: <= 5 %).

``--archive`` (the part below, as before):

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

Run: ``.venv/bin/python benchmarks/bench_dedup.py [--readings 4000000] [--rounds 3]
[--before REV]`` or ``... --archive [--base 19M] [--file 1M] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, emit, peak_rss_mb, rss_mb, run_child, write_readings

GOAL = 1.5  # the second ingest may cost at most this times the first
STATE_GOAL = 0.05  # the dedup state a run leaves, as a fraction of the capture's bytes
BATCH = 1 << 18  # rows per batch, as ingest reads them
ROOT = Path(__file__).resolve().parent.parent


def series_input(path: Path, readings: int, series: int) -> Path:
    """``readings`` readings of ``series`` series (two channels per source), 20 ms apart per
    series, seq numbered per source, in event-time order (written once, then reused)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.exists() and pq.ParquetFile(path).metadata.num_rows == readings:
        return path
    i = np.arange(readings)
    k, s = i // series, i % series
    names = pa.array([f"src{j:05d}" for j in range(series // 2)])
    table = pa.table(
        {
            "source": pa.DictionaryArray.from_arrays(pa.array(s // 2, pa.int32()), names),
            "seq": k * 2 + s % 2,
            "time": pa.array(1_780_000_000 * 10**9 + k * 20_000_000, pa.timestamp("ns", "UTC")),
            "channel": pa.DictionaryArray.from_arrays(
                pa.array(s % 2, pa.int32()), pa.array(["temp", "pres"])
            ),
            "value": np.random.default_rng(series).normal(size=readings),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return path


def old_kernel(rev: str) -> Any:
    """The dedup module of git revision ``rev`` of this repository."""
    text = subprocess.run(
        ["git", "show", f"{rev}:connectors/algorithms/dedup.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    spec = importlib.util.spec_from_loader("old_dedup", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_dedup"] = module  # (dataclasses look their module up)
    exec(compile(text, f"{rev}:dedup.py", "exec"), module.__dict__)  # our own history
    return module


def kernel_round(kind: Any, batches: list[Any]) -> tuple[float, int, int]:
    """(seconds, readings accepted, state bytes) of one Deduper over ``batches``."""
    from obsflow.connectors.storage.parquet import parquet_bytes

    d = kind()
    accepted = 0
    started = time.perf_counter()
    for b in batches:
        accepted += int(d.check(b)[0].sum())
    seconds = time.perf_counter() - started
    return seconds, accepted, len(parquet_bytes(d.to_table()))


def kernels(inputs: dict[str, Path], rounds: int, before: str) -> None:
    import pyarrow.parquet as pq

    from obsflow.connectors.algorithms import dedup
    from obsflow.connectors.algorithms.partitions import encode_ids

    old = old_kernel(before)
    print(
        f"\nkernel: this tree vs {before}, one partition, {BATCH:,}-row batches, median of "
        f"{rounds} interleaved rounds"
    )
    print(f"{'input':<16}{'kernel':<8}{'readings/s':>14}{'seconds':>9}{'state bytes':>14}")
    for name, path in inputs.items():
        table = encode_ids(pq.read_table(path))
        batches = [table.slice(o, BATCH) for o in range(0, table.num_rows, BATCH)]
        got: dict[str, list[tuple[float, int, int]]] = {"old": [], "new": []}
        for _ in range(rounds):
            got["old"].append(kernel_round(old.Deduper, batches))
            got["new"].append(kernel_round(dedup.Deduper, batches))
        for k, runs in got.items():
            sec = statistics.median(r[0] for r in runs)
            assert all(r[1] == table.num_rows for r in runs), "every reading is new"
            print(f"{name:<16}{k:<8}{table.num_rows / sec:>14,.0f}{sec:>9.3f}{runs[0][2]:>14,}")
        ratio = statistics.median(r[0] for r in got["old"]) / statistics.median(
            r[0] for r in got["new"]
        )
        print(f"{name:<16}new is {ratio:.1f}x the old kernel's throughput")


def dir_bytes(path: Path, pattern: str) -> int:
    return sum(f.stat().st_size for f in path.glob(pattern) if f.is_file())


def end_to_end(inputs: dict[str, Path], rounds: int) -> bool:
    """``obsflow ingest`` with dedup on vs off, interleaved; the state against the capture."""
    exe = str(Path(sys.executable).parent / "obsflow")
    ok = True
    print(f"\nend to end: obsflow ingest (no views), median of {rounds} interleaved rounds")
    print(
        f"{'input':<16}{'dedup on':>10}{'horizon 0':>11}{'on/off':>8}"
        f"{'capture':>14}{'dedup state':>13}{'state/capture':>15}"
    )
    for name, path in inputs.items():
        secs: dict[str, list[float]] = {"on": [], "off": []}
        sizes = (0, 0)
        for _ in range(rounds):
            for mode in ("on", "off"):
                store = OUT / f"store-dedup-e2e-{mode}"
                shutil.rmtree(store, ignore_errors=True)
                extra = ["--dedup-horizon", "0"] if mode == "off" else []
                cmd = [exe, "ingest", str(path), "--store", str(store), "--capture", "c", "-q"]
                started = time.perf_counter()
                subprocess.run([*cmd, *extra], check=True)
                secs[mode].append(time.perf_counter() - started)
                if mode == "on":
                    sizes = (
                        dir_bytes(store / "captures" / "c", "part-*/*.parquet"),
                        dir_bytes(store / "_obsflow" / "captures" / "c" / "state", "*/*.dedup*"),
                    )
        on, off = statistics.median(secs["on"]), statistics.median(secs["off"])
        share = sizes[1] / sizes[0]
        ok &= share <= STATE_GOAL
        print(
            f"{name:<16}{on:>9.2f}s{off:>10.2f}s{on / off:>7.2f}x{sizes[0]:>14,}"
            f"{sizes[1]:>13,}{share:>14.2%}"
        )
    for mode in ("on", "off"):
        shutil.rmtree(OUT / f"store-dedup-e2e-{mode}", ignore_errors=True)
    print(f"goal: dedup state <= {STATE_GOAL:.0%} of the capture: {'MET' if ok else 'NOT MET'}")
    return ok


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
    p.add_argument("--archive", action="store_true", help="the old-duplicates part")
    p.add_argument("--readings", type=int, default=4_000_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--before", default="65ecb70", help="git revision of the old kernel")
    p.add_argument("--skip-kernel", action="store_true")
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
    if not args.archive:
        inputs = {
            f"{n:,} series": series_input(
                OUT / f"dedup-series-{n}-{args.readings}.parquet", args.readings, n
            )
            for n in (16, 100_000)
        }
        if not args.skip_kernel:
            kernels(inputs, args.rounds, args.before)
        if not end_to_end(inputs, args.rounds):
            sys.exit(1)
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
