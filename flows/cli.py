"""The ``obsflow`` command: the friendly front door to the dataflows.

Each sub-command builds the same flows that ``python -m bytewax.run`` would run, runs them in
this process with N workers, and prints a run summary. Errors in what the user asked for exit
with status 2 and a one-line message saying what to do; bad *records* never stop a run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from obsflow.connectors.capture import (
    capture_info,
    captured_inputs,
    input_fingerprint,
    list_captures,
    new_run_id,
    read_capture,
    record_inputs,
)
from obsflow.connectors.deadletters import count_by_run_and_reason, read_deadletters
from obsflow.connectors.errors import ConfigError, ObsflowError
from obsflow.connectors.files import format_of
from obsflow.connectors.ids import check_name
from obsflow.connectors.payloads import PAYLOAD_SCHEMA, PayloadStore, check_sha256
from obsflow.connectors.schema import TIME_UNITS, InputSpec
from obsflow.connectors.simulator import SimSpec, generate, parse_duration
from obsflow.connectors.store import DEFAULT_STORE, Store
from obsflow.connectors.views import finish_commits, list_views, read_view, window_filter
from obsflow.flows import ingest, replay
from obsflow.flows.runner import Recovery, free_port, run_flow
from obsflow.flows.summary import Counts, summary_dict
from obsflow.flows.viewdef import ViewDef, load_views

DEMO_VIEWS = (
    ViewDef(
        "demo_10s",
        "tumbling",
        size=10 * 10**9,
        aggregates=("count", "mean", "min", "max", "std", "p90"),
    ),
    ViewDef(
        "demo_1m",
        "tumbling",
        size=60 * 10**9,
        aggregates=("count", "mean", "min", "max", "std", "first", "last"),
    ),
)


def _finish_summary(
    store: Store, run_id: str, started: float, path: str | None, quiet: bool
) -> dict[str, Any]:
    """Complete the run summary the flow wrote, print it, and copy it to ``--summary``."""
    rel = f"runs/{run_id}.json"
    if not store.exists(rel):
        raise ObsflowError(f"the run ended without a summary ({store.uri(rel)} is missing)")
    summary: dict[str, Any] = store.read_json(rel)
    elapsed = time.monotonic() - started
    summary["seconds"] = round(elapsed, 3)
    summary["readings_per_s"] = round(summary["input"] / elapsed) if elapsed > 0 else None
    store.write_json(rel, summary)
    if path:
        Path(path).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if not quiet:
        ok = "adds up" if summary["balanced"] else "DOES NOT ADD UP"
        lines = [
            f"run {run_id}: {summary['input']:,} input = {summary['accepted']:,} accepted"
            f" + {summary['rejected']:,} rejected + {summary['duplicates']:,} duplicates ({ok})",
            f"  {elapsed:.2f} s, {summary['readings_per_s'] or 0:,} readings/s",
        ]
        for reason, n in summary.get("rejected_by_reason", {}).items():
            lines.append(f"  rejected {reason}: {n:,}")
        for view, v in summary.get("views", {}).items():
            late = summary.get("late", {}).get(view, 0)
            lines.append(
                f"  view {view}: {v['rows']:,} rows, {late:,} late readings"
                f" -> {store.uri('views/' + view)}"
            )
        if summary["rejected"]:
            lines.append(f"  dead letters: {store.uri('deadletter/' + run_id)}")
        lines.append(f"  summary: {store.uri(rel)}")
        print("\n".join(lines), file=sys.stderr)
    return summary


def recovery_of(args: argparse.Namespace) -> Recovery | None:
    if not args.recovery:
        return None
    return Recovery(Path(args.recovery), args.snapshot_interval)


def cmd_ingest(args: argparse.Namespace) -> int:
    recovery = recovery_of(args)
    store = Store(args.store)
    check_name(args.capture, kind="capture name")
    ingest.source_for(args.inputs)  # validates the inputs' formats before reading anything
    run_id = recovery.run_id("ingest") if recovery else new_run_id()
    fingerprints = {url: input_fingerprint(url) for url in dict.fromkeys(args.inputs)}
    # Inputs a finished run already captured are skipped; a resumed run (same run id) is not.
    known = {
        fp: doc
        for fp, doc in captured_inputs(store, args.capture).items()
        if doc.get("run") != run_id
    }
    inputs = [u for u, fp in fingerprints.items() if fp not in known]
    for url in (u for u in fingerprints if u not in inputs):
        print(
            f"skipping {url}: the same content is already in capture {args.capture!r} "
            f"(run {known[fingerprints[url]]['run']})",
            file=sys.stderr,
        )
    if not inputs:
        print("nothing to ingest", file=sys.stderr)
        if args.summary:
            doc = summary_dict(Counts(), capture=args.capture, skipped_inputs=list(fingerprints))
            Path(args.summary).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return 0
    config = ingest.IngestConfig(
        inputs=tuple(inputs),
        store=args.store,
        capture=args.capture,
        spec=InputSpec.parse_map(args.map, args.time_unit),
        partitions=args.partitions,
        run_id=run_id,
        batch_rows=args.batch_rows,
        progress=not args.quiet,
        views=load_views(args.views) if args.views else None,
        dedup_horizon=round(parse_duration(args.dedup_horizon) * 1e9),
        inline_limit=args.inline_limit,
        features=tuple(f for f in (args.features or "").split(",") if f),
    )
    started = time.monotonic()
    run_flow(ingest.build_flow(config), args.workers, recovery)
    summary = _finish_summary(store, config.run_id, started, args.summary, args.quiet)
    record_inputs(store, args.capture, {u: fingerprints[u] for u in inputs}, config.run_id)
    return 0 if summary["balanced"] else 1


def cmd_replay(args: argparse.Namespace) -> int:
    store = Store(args.store)
    recovery = recovery_of(args)
    run_id = args.commit or (recovery.run_id("replay") if recovery else new_run_id())
    for run in finish_commits(store, keep=run_id):
        print(f"finished swapping in the views of interrupted replay {run}", file=sys.stderr)
    views = load_views(args.views) if args.views else replay.stored_views(store, args.capture)
    config = replay.ReplayConfig(
        capture=args.capture,
        views=views,
        store=args.store,
        sources=tuple(args.source or ()),
        start=args.start,
        until=args.until,
        speed=replay.parse_speed(args.speed),
        run_id=run_id,
        progress=not args.quiet,
    )
    config.spec  # noqa: B018 - validates times and speed before anything runs
    started = time.monotonic()
    if not args.commit:
        if args.processes > 1:
            run_processes(config, args.views, args.processes, args.workers)
        else:
            run_flow(replay.build_flow(config), args.workers, recovery)
    replay.commit(config)
    summary = _finish_summary(store, config.run_id, started, args.summary, args.quiet)
    return 0 if summary["balanced"] else 1


def run_processes(
    config: replay.ReplayConfig, views_file: str | None, processes: int, workers: int
) -> None:
    """Run the replay as a Bytewax cluster of local processes (as on several hosts)."""
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    options = {
        "store": config.store,
        "capture": config.capture,
        "views": views_file,
        "sources": list(config.sources),
        "start": config.start,
        "until": config.until,
        "speed": config.speed,
        "run_id": config.run_id,
        "progress": config.progress,
    }
    expr = (
        "obsflow.flows.replay:build_flow("
        + ", ".join(f"{k}={v!r}" for k, v in options.items())
        + ")"
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bytewax.run",
                expr,
                "-w",
                str(workers),
                "-i",
                str(i),
                "-a",
                addresses,
            ]
        )
        for i in range(processes)
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise ObsflowError(f"replay process exit codes {codes}; the previous views are intact")


def write_table(table: pa.Table, out: str) -> None:
    """Write a reading table to a local file in the format its extension names."""
    fmt = format_of(out)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(table, out)
    elif fmt == "csv":
        pacsv.write_csv(table, out)
    else:
        table.to_pandas().to_json(
            out, orient="records", lines=True, date_format="iso", date_unit="ns"
        )


def cmd_simulate(args: argparse.Namespace) -> int:
    spec = SimSpec.from_strings(
        {
            "sources": args.sources,
            "channels": args.channels,
            "rate": args.rate,
            "duration": args.duration,
            "start": args.start,
            "seed": args.seed,
            "payloads": ",".join(args.payload or []),
            "payload_rate": args.payload_rate,
        }
    )
    table = generate(spec)
    write_table(table, args.out)
    print(
        f"wrote {table.num_rows:,} readings of {spec.sources} sources x "
        f"{len(spec.channels)} channels to {args.out}",
        file=sys.stderr,
    )
    return 0


def cmd_payload(args: argparse.Namespace) -> int:
    store = Store(args.store)
    sha = check_sha256(args.sha256)
    captures = [args.capture] if args.capture else list_captures(store)
    for name in captures:
        rows = (
            read_capture(store, name, payloads=True, filter=pc.field("payload_sha256") == sha)
            .slice(0, 1)
            .to_pylist()
        )
        if rows:
            array = PayloadStore(store).fetch(rows[0])  # bounded read, size and sha256 verified
            np.save(args.out, array, allow_pickle=False)
            print(
                f"{sha}: {array.dtype} {array.shape} (from capture {name!r}) -> {args.out}",
                file=sys.stderr,
            )
            return 0
    raise ObsflowError(
        f"no reading in {', '.join(captures) or 'any capture'} refers to payload {sha}"
    )


def cmd_verify(store: Store, name: str) -> int:
    table = read_capture(
        store, name, payloads=True, columns=[f.name for f in PAYLOAD_SCHEMA]
    ).filter(pc.is_valid(pc.field("payload_sha256")))
    pstore = PayloadStore(store)
    seen: set[str] = set()
    problems = 0
    for row in table.to_pylist():  # one per payload reference, not per reading
        if row["payload_sha256"] in seen:
            continue
        seen.add(row["payload_sha256"])
        problem = pstore.verify(row)
        if problem:
            problems += 1
            print(f"{row['payload_sha256']}: {problem}")
    print(
        f"capture {name!r}: {len(seen):,} payloads checked, {problems:,} dangling or corrupt",
        file=sys.stderr,
    )
    return 1 if problems else 0


def cmd_capture(args: argparse.Namespace) -> int:
    store = Store(args.store)
    if args.action == "verify":
        if not args.name:
            raise ConfigError("capture verify needs a capture NAME")
        return cmd_verify(store, args.name)
    if args.action == "list":
        names = list_captures(store)
        if not names:
            print(f"no captures in {store.uri()}", file=sys.stderr)
        for name in names:
            print(name)
        return 0
    if not args.name:
        raise ConfigError("capture info needs a capture NAME")
    info = capture_info(store, args.name)
    if args.json:
        print(json.dumps(info.__dict__, indent=2))
    else:
        width = max(len(k) for k in info.__dict__)
        for key, value in info.__dict__.items():
            shown = f"{value:,}" if isinstance(value, int) else value
            print(f"{key:<{width}}  {shown}")
        print(f"{'path':<{width}}  {store.uri('captures/' + info.name)}")
    return 0


def cmd_views(args: argparse.Namespace) -> int:
    store = Store(args.store)
    if args.action == "list":
        metas = list_views(store)
        if not metas:
            print(f"no views in {store.uri()}", file=sys.stderr)
        for m in metas:
            d = m["definition"]
            shape = {
                "tumbling": f"size {_dur(d['size'])}",
                "hopping": f"size {_dur(d['size'])} step {_dur(d['step'])}",
                "session": f"gap {_dur(d['gap'])}",
            }[d["kind"]]
            print(
                f"{m['name']:<20} {d['kind']:<9} {shape:<20} lateness {_dur(d['lateness']):<6}"
                f" {','.join(d['aggregates']):<40} capture {m['capture']}  hash {m['hash']}"
            )
        return 0
    if not args.name:
        raise ConfigError("views show needs a view NAME")
    expr = window_filter(
        sources=args.source, channels=args.channel, start=args.start, until=args.until
    )
    table = read_view(store, args.name, filter=expr)
    frame = table.drop_columns(
        [c for c in ("run", "capture", "view_hash") if c in table.column_names]
    ).to_pandas()
    if frame.empty:
        print(f"view {args.name!r}: no rows match", file=sys.stderr)
        return 0
    shown = frame if args.limit <= 0 else frame.head(args.limit)
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    if len(shown) < len(frame):
        print(f"... {len(frame) - len(shown):,} more rows (--limit 0 shows all)", file=sys.stderr)
    return 0


def cmd_deadletters(args: argparse.Namespace) -> int:
    store = Store(args.store)
    table = read_deadletters(store, run=args.run, reason=args.reason)
    if table.num_rows == 0:
        print(f"no dead letters in {store.uri('deadletter')}", file=sys.stderr)
        return 0
    if args.action == "list":
        print(count_by_run_and_reason(table).to_pandas().to_string(index=False))
        return 0
    frame = table.to_pandas()
    shown = frame if args.limit <= 0 else frame.head(args.limit)
    with pd.option_context("display.width", 250, "display.max_colwidth", 80):
        print(shown.to_string(index=False))
    if len(shown) < len(frame):
        print(f"... {len(frame) - len(shown):,} more rows (--limit 0 shows all)", file=sys.stderr)
    return 0


def _dur(ns: int) -> str:
    for unit, size in (
        ("d", 86_400 * 10**9),
        ("h", 3_600 * 10**9),
        ("m", 60 * 10**9),
        ("s", 10**9),
        ("ms", 10**6),
    ):
        if ns and ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"


def cmd_demo(args: argparse.Namespace) -> int:
    store = Store(args.store)
    for folder in (
        "captures/demo",
        "deadletter",
        *(f"{d}/{v.name}" for v in DEMO_VIEWS for d in ("views", "late")),
    ):
        store.delete(folder, recursive=True)  # the demo starts from scratch each time
    url = f"sim://?sources=4&rate=10&duration={args.duration}&seed=7"
    print(
        f"demo: simulating 4 instruments x 2 channels at 10 Hz for {args.duration} "
        f"of event time ({url})",
        file=sys.stderr,
    )
    config = ingest.IngestConfig(
        inputs=(url,),
        store=args.store,
        capture="demo",
        run_id=new_run_id(),
        progress=False,
        views=DEMO_VIEWS,
    )
    started = time.monotonic()
    run_flow(ingest.build_flow(config), args.workers)
    summary = _finish_summary(store, config.run_id, started, None, quiet=False)
    info = capture_info(store, "demo")
    print(
        f"\ncapture 'demo': {info.rows:,} readings from {info.sources} sources, "
        f"{info.first} .. {info.last}\n  in {store.uri('captures/demo')} "
        f"({info.files} Parquet files, {info.partitions} partitions)\n"
        f"views: {', '.join(v.name for v in DEMO_VIEWS)} in {store.uri('views')}\n"
        f"Try:  .venv/bin/obsflow views show demo_10s --store {args.store} --source sim-000",
        file=sys.stderr,
    )
    return 0 if summary["balanced"] else 1


def recovery_opts(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--recovery",
        metavar="DIR",
        help="local recovery directory: snapshots state; rerun the same command to "
        "resume after a crash",
    )
    sp.add_argument(
        "--snapshot-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between recovery snapshots (default 10)",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="obsflow", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def store_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--store",
            default=DEFAULT_STORE,
            help=f"store URL: a folder, s3://bucket/prefix or memory:// (default {DEFAULT_STORE})",
        )

    sp = sub.add_parser("ingest", help="ingest files or a sim:// URL into a capture")
    sp.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="Parquet/CSV/JSONL files (by extension) or one sim:// URL",
    )
    store_opt(sp)
    sp.add_argument("--capture", default="default", help="capture name (default: default)")
    sp.add_argument("--map", help="rename input columns: source=source_id,time=event_time")
    sp.add_argument(
        "--time-unit",
        default="ns",
        choices=list(TIME_UNITS),
        help="unit of integer epoch times (default ns)",
    )
    sp.add_argument(
        "--partitions", type=int, help="capture partitions, fixed at creation (default 4)"
    )
    sp.add_argument("--workers", type=int, default=1, help="worker threads (default 1)")
    sp.add_argument(
        "--views",
        metavar="FILE",
        help="TOML view definitions (default: per-minute stats of every series)",
    )
    sp.add_argument("--batch-rows", type=int, default=65_536, help=argparse.SUPPRESS)
    sp.add_argument("--summary", metavar="FILE", help="also write the JSON run summary here")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress or summary lines")
    sp.add_argument(
        "--inline-limit",
        type=int,
        default=64 * 1024,
        metavar="BYTES",
        help="payloads up to this size stay in the capture (default 65536)",
    )
    sp.add_argument(
        "--features",
        metavar="F,F",
        help="scalar channels derived from each payload: mean,max,min,sum,std,rms",
    )
    sp.add_argument(
        "--dedup-horizon",
        default="10m",
        help="how long (event time) identities are remembered; 0 turns dedup off",
    )
    recovery_opts(sp)
    sp.set_defaults(func=cmd_ingest)

    sp = sub.add_parser("simulate", help="write simulated instrument readings to a file")
    sp.add_argument("out", metavar="OUT", help="output file: .parquet, .csv or .jsonl")
    sp.add_argument("--sources", type=int, default=4)
    sp.add_argument("--channels", default="temperature,pressure")
    sp.add_argument("--rate", type=float, default=10.0, help="Hz per channel (default 10)")
    sp.add_argument("--duration", default="60s", help="event time span (default 60s)")
    sp.add_argument("--start", default="2026-01-01T00:00:00Z", help="ISO-8601 start time")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument(
        "--payload",
        action="append",
        metavar="NAME:SHAPE:DTYPE",
        help="add array payloads, e.g. frame:512x512:uint16 (repeatable; Parquet only)",
    )
    sp.add_argument(
        "--payload-rate", type=float, default=1.0, help="payloads per second per source (default 1)"
    )
    sp.set_defaults(func=cmd_simulate)

    sp = sub.add_parser("payload", help="fetch a payload array by its sha256")
    sp.add_argument("action", choices=["get"])
    sp.add_argument("sha256")
    store_opt(sp)
    sp.add_argument("--capture", help="capture to look the reference up in (default: all)")
    sp.add_argument("-o", "--out", required=True, help="output .npy file")
    sp.set_defaults(func=cmd_payload)

    sp = sub.add_parser("capture", help="list captures, describe one, or verify its payloads")
    sp.add_argument("action", choices=["list", "info", "verify"])
    sp.add_argument("name", nargs="?")
    store_opt(sp)
    sp.add_argument("--json", action="store_true", help="info as JSON")
    sp.set_defaults(func=cmd_capture)

    sp = sub.add_parser("replay", help="rebuild views from a capture (full speed or paced)")
    store_opt(sp)
    sp.add_argument("--capture", required=True, help="capture to replay")
    sp.add_argument(
        "--views",
        metavar="FILE",
        help="TOML view definitions (default: the views built from this capture)",
    )
    sp.add_argument("--from", dest="start", metavar="ISO", help="readings at or after this time")
    sp.add_argument("--until", metavar="ISO", help="readings before this time")
    sp.add_argument("--source", action="append", help="only this source (repeatable)")
    sp.add_argument(
        "--speed",
        default="max",
        help="max (default) or X times the original event-time rate (1 = real time)",
    )
    sp.add_argument("--workers", type=int, default=1, help="worker threads per process")
    sp.add_argument(
        "--processes", type=int, default=1, help="run as a Bytewax cluster of N local processes"
    )
    sp.add_argument(
        "--commit",
        metavar="RUN",
        help="only swap in the views staged by RUN (after a bytewax.run cluster run)",
    )
    sp.add_argument("--summary", metavar="FILE", help="also write the JSON run summary here")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress or summary lines")
    recovery_opts(sp)
    sp.set_defaults(func=cmd_replay)

    sp = sub.add_parser("views", help="list views or show a view's rows")
    sp.add_argument("action", choices=["list", "show"])
    sp.add_argument("name", nargs="?")
    store_opt(sp)
    sp.add_argument("--source", action="append", help="only this source (repeatable)")
    sp.add_argument("--channel", action="append", help="only this channel (repeatable)")
    sp.add_argument("--from", dest="start", metavar="TIME", help="windows starting at or after")
    sp.add_argument("--until", metavar="TIME", help="windows starting before")
    sp.add_argument("--limit", type=int, default=50, help="rows to print (0 = all)")
    sp.set_defaults(func=cmd_views)

    sp = sub.add_parser("deadletters", help="rejected records: counts by run and reason, or rows")
    sp.add_argument("action", choices=["list", "show"])
    store_opt(sp)
    sp.add_argument("--run", help="only this run")
    sp.add_argument("--reason", help="only this reason code (bad_id, bad_time, conflict, ...)")
    sp.add_argument("--limit", type=int, default=50, help="rows to print (0 = all)")
    sp.set_defaults(func=cmd_deadletters)

    sp = sub.add_parser("demo", help="simulate instruments and ingest them into ./data/store")
    store_opt(sp)
    sp.add_argument("--duration", default="60s")
    sp.add_argument("--workers", type=int, default=1)
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ObsflowError as exc:
        print(f"obsflow: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Errors inside a running dataflow come back wrapped by Bytewax: report our own.
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, ObsflowError):
            cause = cause.__cause__
        if cause is None:
            raise
        print(f"obsflow: error: {cause}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
