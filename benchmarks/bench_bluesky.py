"""Bluesky documents into a capture and two views: ``obsflow ingest --format bluesky`` against
pandas on the same JSON lines.

Input: one run as suitcase-jsonl writes it (``[name, doc]`` per line), made with event-model's
``compose_run`` and cached under ``benchmarks/out/``: a descriptor of 8 numeric keys owned by 4
devices, then ``--events`` events (10 ms apart, each key with its own timestamp), then a stop.
Each event is 8 readings.

Contenders, each in its own child process (its own peak RSS):

- obsflow: ``jobs.execute`` of an ingest with ``format="bluesky"`` and the two benchmark views
  (1 s and 1 min tumbling, count/mean/min/max/std): documents validated with event-model's
  schemas, readings written to the capture, the run documents stored, the views written.
- pandas: ``json.loads`` of every line, each event's ``data`` and ``timestamps`` as two frames,
  melted to readings (device from ``object_keys``), and the same two views by integer floor of
  the time and ``groupby().agg()`` — no validation, nothing written.

Run: ``.venv/bin/python benchmarks/bench_bluesky.py [--events N]`` (default 200,000 events:
1.6 M readings).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from common import OUT, emit, pandas_views, peak_rss_mb, rss_mb, run_child, views

KEYS = 8
DEVICES = 4


def documents_path(events: int) -> Path:
    """The cached input: one run of ``events`` events, JSON lines."""
    path = OUT / f"bluesky-{events}.jsonl"
    if path.exists():
        return path
    import event_model

    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(15)
    t0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    run = event_model.compose_run(time=t0)
    keys = [f"k{i}" for i in range(KEYS)]
    desc = run.compose_descriptor(
        name="primary",
        data_keys={k: {"source": "sim", "dtype": "number", "shape": []} for k in keys},
        object_keys={f"d{j}": keys[j::DEVICES] for j in range(DEVICES)},
        time=t0,
    )
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        f.write(json.dumps(["start", run.start_doc]) + "\n")
        f.write(json.dumps(["descriptor", desc.descriptor_doc]) + "\n")
        values = rng.normal(20, 2, (events, KEYS)).round(4)
        for i in range(events):
            t = t0 + i * 0.01
            event = desc.compose_event(
                data=dict(zip(keys, values[i].tolist(), strict=True)),
                timestamps={k: t + j * 1e-4 for j, k in enumerate(keys)},
                seq_num=i + 1,
                time=t,
                validate=False,
            )
            f.write(json.dumps(["event", event]) + "\n")
        f.write(json.dumps(["stop", run.compose_stop(time=t0 + events * 0.01)]) + "\n")
    tmp.rename(path)
    return path


def child_obsflow(path: Path) -> dict[str, Any]:
    from obsflow.flows.pipeline import jobs
    from obsflow.flows.pipeline.ingest import IngestConfig

    store = Path(tempfile.mkdtemp(prefix="bench-bluesky-")) / "store"
    base = rss_mb()
    config = IngestConfig(
        inputs=(str(path),),
        store=str(store),
        capture="bench",
        progress=False,
        views=views(),
        format="bluesky",
    )
    started = time.perf_counter()
    summary = jobs.execute(config).summary
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": base,
        "readings": summary["accepted"],
        "balanced": summary["balanced"],
        "view_rows": {k: v["rows"] + v["provisional"] for k, v in summary["views"].items()},
    }


def child_pandas(path: Path) -> dict[str, Any]:
    base = rss_mb()
    started = time.perf_counter()
    data, stamps, owner = [], [], {}
    with path.open() as f:
        for line in f:
            name, doc = json.loads(line)
            if name == "event":
                data.append(doc["data"])
                stamps.append(doc["timestamps"])
            elif name == "descriptor":
                owner = {k: d for d, ks in doc["object_keys"].items() for k in ks}
    values = pd.DataFrame.from_records(data)
    times = pd.DataFrame.from_records(stamps)
    frame = pd.DataFrame(
        {
            "source": np.tile([owner[k] for k in values.columns], len(values)),
            "channel": np.tile(values.columns.to_numpy(), len(values)),
            "time": pd.to_datetime(
                np.round(times[values.columns].to_numpy().ravel() * 1e9).astype("int64"),
                utc=True,
            ),
            "value": values.to_numpy().ravel(),
        }
    )
    out = pandas_views(frame)
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": base,
        "readings": len(frame),
        "view_rows": {k: len(v) for k, v in out.items()},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--child", choices=["obsflow", "pandas"])
    p.add_argument("--input")
    args = p.parse_args()
    if args.child:
        run = child_obsflow if args.child == "obsflow" else child_pandas
        emit(run(Path(args.input)))
        return 0
    path = documents_path(args.events)
    mb = path.stat().st_size / 2**20
    print(f"input: {path.name}, {args.events:,} events x {KEYS} keys, {mb:,.0f} MiB of JSON lines")
    results = {
        name: run_child(__file__, ["--child", name, "--input", str(path)])
        for name in ("pandas", "obsflow")
    }
    for name, r in results.items():
        rate = r["readings"] / r["seconds"]
        print(
            f"  {name:8s} {r['seconds']:6.2f} s  {rate / 1e6:5.2f} M readings/s  "
            f"peak RSS {r['peak_rss_mb']:,.0f} MiB  views {r['view_rows']}"
        )
    ours, theirs = results["obsflow"], results["pandas"]
    assert ours["readings"] == theirs["readings"] == args.events * KEYS
    assert ours["view_rows"] == theirs["view_rows"], (ours["view_rows"], theirs["view_rows"])
    print(f"obsflow / pandas throughput: {theirs['seconds'] / ours['seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
