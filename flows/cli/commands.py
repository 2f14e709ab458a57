"""The ``obsflow`` sub-commands that change a store or write files: ingest, replay and demo
(through the job layer, ``flows.pipeline.jobs``), views close (``flows.pipeline.closing``, a commit
without a dataflow), store migrate and simulate. Each turns arguments into a call, and prints
(what a run did: ``flows.cli.report``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import fields, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from obsflow.connectors.datasets.capture import capture_info, new_run_id, open_capture
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.parsing import parse_duration_ns, parse_time
from obsflow.connectors.formats.registry import encoder, write_table
from obsflow.connectors.formats.schema import InputSpec
from obsflow.connectors.ids import check_name
from obsflow.connectors.sources.bluesky.io import BlueskyInput
from obsflow.connectors.sources.brokers import (
    SCHEMES,
    BrokerClient,
    BrokerURL,
    connect,
    is_broker_url,
    publisher,
)
from obsflow.connectors.sources.brokers.epics import read_pv_file
from obsflow.connectors.sources.simulator import SimSpec, generate
from obsflow.connectors.storage import layout, tables
from obsflow.connectors.storage.commits import commit_at, parse_as_of
from obsflow.connectors.storage.compaction import compact, vacuum
from obsflow.connectors.storage.migrate import check_layout, migrate
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.report import format_summary, plural, print_result, say
from obsflow.flows.kernels.viewdef import load_views, stored_views, with_lateness
from obsflow.flows.pipeline import ingest, jobs, live, replay
from obsflow.flows.pipeline.closing import close_view
from obsflow.flows.pipeline.options import IngestOptions
from obsflow.flows.pipeline.runner import Cluster, Recovery
from obsflow.flows.steps.summary import Progress, summary_dict


def recovery_of(args: argparse.Namespace) -> Recovery | None:
    if not args.recovery:
        return None
    return Recovery(Path(args.recovery), args.snapshot_interval)


def lateness_ns(lateness: str | None) -> int | None:
    return None if lateness is None else parse_duration_ns(lateness)


def cmd_ingest(args: argparse.Namespace) -> int:
    store = Store(args.store)
    check_name(args.capture, kind="capture name")
    if any(is_broker_url(u) for u in args.inputs):
        return cmd_live(args, store)
    if args.topic or args.consumer or args.wait or args.pvs or args.source:
        raise ConfigError(
            "--topic, --consumer, --wait, --pvs and --source are for a broker URL (nats://, "
            "mqtt://, ca://, ...)"
        )
    if args.format not in (None, "bluesky"):
        raise ConfigError(
            f"--format {args.format} is for broker messages; files are read by "
            "their extension, or with --format bluesky as Bluesky documents"
        )
    config = ingest_config(args, tuple(dict.fromkeys(args.inputs)))
    # (validates the inputs' formats before reading anything)
    ingest.source_for(args.inputs, bluesky=BlueskyInput() if config.format else None)
    return print_result(run_job(config, args), store, args)


def run_job(config: jobs.Config, args: argparse.Namespace) -> jobs.RunResult:
    """An ingest or replay as the command line asks: threads, local processes, or one
    process of a cluster across hosts (``--addresses``)."""
    force = bool(getattr(args, "force", False))
    if args.addresses is None:
        if args.process_id is not None or args.run_id is not None:
            raise ConfigError("--process-id and --run-id are for a cluster (--addresses)")
        return jobs.execute(
            config,
            workers=args.workers,
            processes=args.processes,
            recovery=recovery_of(args),
            force=force,
        )
    if args.processes != 1:
        raise ConfigError("--addresses runs one process per host: leave out --processes")
    if not args.run_id:
        raise ConfigError("--addresses needs --run-id: the same id for every process")
    cluster = Cluster.parse(args.addresses, args.process_id)
    config = replace(config, run_id=check_name(args.run_id, kind="run id"))
    return jobs.execute_in_cluster(
        config, cluster, workers=args.workers, recovery=recovery_of(args), force=force
    )


def ingest_config(args: argparse.Namespace, inputs: tuple[str, ...]) -> ingest.IngestConfig:
    """The run ``obsflow ingest`` asks for (its options are ``IngestOptions``' fields)."""
    # (an option not given is None here: the default is IngestOptions')
    given = {f.name: getattr(args, f.name) for f in fields(IngestOptions)}
    given = {k: v for k, v in given.items() if v is not None}
    views = load_views(args.views, capture=args.capture) if args.views else None  # (a file)
    given["views"] = views
    return IngestOptions(**given).config(inputs, args.store, progress=not args.quiet)


def cmd_live(args: argparse.Namespace, store: Store) -> int:
    """``obsflow ingest URL --topic T --consumer NAME``: a live session
    (``flows.pipeline.live``)."""
    if len(args.inputs) != 1:
        raise ConfigError("a broker URL is the only input of a live ingest")
    if args.processes != 1 or args.addresses:
        raise ConfigError("a live ingest runs in one process (--workers for threads)")
    if args.recovery or args.force:
        raise ConfigError(
            "--recovery and --force are for files: a live ingest resumes from the broker "
            "(messages not yet acknowledged come again) — run the same command"
        )
    broker = BrokerURL.parse(args.inputs[0])
    epics = SCHEMES[broker.scheme].names
    if epics:  # PVs: in the URL and --pvs; read as the Arrow batches the client builds
        if args.topic or args.consumer or args.stream or args.format not in (None, "arrow"):
            raise ConfigError(
                f"{broker.scheme}:// takes PV names (in the URL, --pvs FILE), not --topic, "
                "--consumer, --stream or --format"
            )
        topics = read_pv_file(args.pvs) if args.pvs else []
        args.format, consumer = "arrow", "epics"
    else:
        if args.pvs or args.source:
            raise ConfigError("--pvs and --source are for ca:// and pva:// (EPICS PVs)")
        if not args.topic or not args.consumer:
            raise ConfigError("a live ingest needs --topic T (repeatable) and --consumer NAME")
        topics, consumer = args.topic, args.consumer
    url = str(broker)
    seconds = {
        k: None if getattr(args, k) is None else parse_duration_ns(getattr(args, k)) / 1e9
        for k in ("flush_interval", "idle_timeout", "stop_when_idle")
    }
    config = live.LiveConfig(
        ingest=ingest_config(args, (url,)),
        fmt=args.format or "json",
        flush_interval=seconds["flush_interval"] or 1.0,
        max_messages=args.max_batch,
        idle_timeout=seconds["idle_timeout"],
        stop_when_idle=seconds["stop_when_idle"],
    )
    # Twice a cycle's batch in flight: a rerun is not held up by what a killed session took.
    in_flight = 2 * config.max_messages

    def client(positions: Callable[[str], int]) -> BrokerClient:
        return connect(
            url,
            topics,
            consumer,
            stream=args.stream,
            max_in_flight=in_flight,
            positions=positions,
            source=args.source,
        )

    progress = None if args.quiet else Progress("live", None)

    def on_cycle(result: live.LiveResult) -> None:
        if progress is None:
            return
        quiet = result.counts.input == progress.last_input  # nothing new: a line a minute
        if time.monotonic() - progress.last >= (60.0 if quiet else progress.every):
            say(progress.line(result.counts) + f" · {len(result.cycles):,} commits")

    with live.stop_on_signals() as stop:
        result = live.run_live(
            config,
            client,
            workers=args.workers,
            wait=args.wait,
            stop=stop,
            on_cycle=on_cycle,
            on_wait=say,
        )
    c = result.counts
    commits_ = [s["commit"] for s in result.cycles]
    span = f"commits #{commits_[0]}..#{commits_[-1]}" if commits_ else "no commit"
    if args.summary:
        doc = {**summary_dict(c, capture=args.capture, mode="live"), "cycles": result.cycles}
        if epics:
            doc |= {"gaps": result.gaps, "refused": result.refused}
        Path(args.summary).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if not args.quiet:
        ok = "adds up" if c.balanced else "DOES NOT ADD UP"
        say(
            f"live session {result.stopped}: {c.input:,} input = {c.accepted:,} accepted + "
            f"{c.rejected:,} rejected + {c.duplicates:,} duplicates ({ok})\n"
            f"  {len(result.cycles):,} runs ({span} of capture {args.capture!r}), "
            f"{len(result.closes):,} idle closes, {result.seconds:.1f} s"
        )
        for reason, n in sorted(c.reasons.items()):
            say(f"  rejected {reason}: {n:,} (obsflow deadletters show --reason {reason})")
        for pv, why in sorted(result.refused.items()):
            say(f"  PV {pv} refused: {why}")
        for gap in result.gaps:
            what = gap.get("pv") or "every PV"
            until = gap["until"] + (" (the session's end)" if gap.get("open") else "")
            say(f"  gap ({gap['kind']}): {what} from {gap['since']} until {until}")
        for view, n in sorted(c.late.items()):
            if n:
                say(f"  view {view}: {plural(n, 'late reading')} (obsflow late show {view})")
    return 0 if c.balanced else 1


def cmd_replay(args: argparse.Namespace) -> int:
    store = Store(args.store)
    check_layout(store)
    open_capture(store, args.capture)  # a missing capture is the first thing to say
    views = (
        load_views(args.views, capture=args.capture)
        if args.views
        else stored_views(store, args.capture)
    )
    config = replay.ReplayConfig(
        capture=args.capture,
        views=with_lateness(views, lateness_ns(args.lateness)),
        store=args.store,
        sources=tuple(args.source or ()),
        start=args.start,
        until=args.until,
        speed=replay.parse_speed(args.speed),
        progress=not args.quiet,
        as_name=args.as_name,
        upto=commit_at(store, args.capture, parse_as_of(args.as_of)),
    )
    # (read before the run: a replay's definitions become the views' own at its commit)
    redefined = config.redefines(store)
    result = run_job(config, args)
    code = print_result(result, store, args)
    for name, changes in redefined.items() if result.run is not None else ():
        say(
            f"obsflow: view {name} redefined ({'; '.join(changes)}): rebuilt with the new "
            f"definition, which later runs of capture {args.capture!r} keep (--as NEW_VIEW "
            "tries one under a new name)"
        )
    return code


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.to:
        return simulate_live(args)
    if args.out is None:
        raise ConfigError("simulate needs OUT (a file) or --to URL --topic T (a broker)")
    spec = SimSpec.from_strings(
        {
            "sources": args.sources,
            "channels": args.channels,
            "rate": args.rate,
            "duration": args.duration,
            "start": args.start or "2026-01-01T00:00:00Z",
            "seed": args.seed,
            "payloads": ",".join(args.payload or []),
            "payload_rate": args.payload_rate,
        }
    )
    table = generate(spec)
    write_table(table, args.out)
    channels = len(spec.channels) + len(spec.payload_specs)
    say(
        f"wrote {table.num_rows:,} readings of {spec.sources} sources x {channels} channels "
        f"to {args.out}"
    )
    return 0


def simulate_live(args: argparse.Namespace) -> int:
    """``simulate --to URL --topic T``: publish simulated readings as they happen (event time =
    wall time), one JSON reading per message or one Arrow IPC stream per 100 ms."""
    if not args.topic:
        raise ConfigError("simulate --to needs --topic T")
    start = args.start or datetime.now(UTC).replace(microsecond=0).isoformat()
    spec = SimSpec.from_strings(
        {
            "sources": args.sources,
            "channels": args.channels,
            "rate": args.rate,
            "duration": args.duration,
            "start": start,
            "seed": args.seed,
        }
    )
    table = generate(spec).sort_by("time")
    times = table.column("time").cast(pa.int64()).to_numpy()
    out = publisher(args.to, args.topic)
    say(
        f"publishing {table.num_rows:,} readings of {spec.sources} sources x "
        f"{len(spec.channels)} channels at {spec.rate:g} Hz to {args.to} {args.topic} "
        f"({args.format}; Ctrl-C stops)"
    )
    sent = 0
    try:
        while sent < table.num_rows:
            upto = int(np.searchsorted(times, time.time_ns(), side="right"))
            if upto > sent:
                out.publish(encode_messages(table.slice(sent, upto - sent), args.format))
                sent = upto
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        out.close()
    say(f"published {sent:,} readings")
    return 0


# Brokers refuse big messages (NATS and Kafka default to 1 MB): a simulator that falls behind
# (a slow start, a busy machine) catches up in several Arrow messages, not one too big.
MAX_MESSAGE_BYTES = 512 * 1024


def encode_messages(table: pa.Table, fmt: str) -> list[bytes]:
    """Readings as message bodies: one JSON object each, or Arrow IPC streams of at most
    ``MAX_MESSAGE_BYTES`` (one, unless the readings are many)."""
    if fmt == "arrow":
        body = encoder("arrow")(table)
        if len(body) <= MAX_MESSAGE_BYTES or table.num_rows < 2:
            return [body]
        half = table.num_rows // 2
        return encode_messages(table.slice(0, half), fmt) + encode_messages(table.slice(half), fmt)
    frame = table.to_pandas()
    text = frame.to_json(orient="records", lines=True, date_format="iso", date_unit="ns")
    return [line.encode() for line in text.splitlines()]


def cmd_deadletters_retry(args: argparse.Namespace) -> int:
    from obsflow.flows.pipeline import deadletters as retry

    store = Store(args.store)
    check_layout(store)
    config = ingest.IngestConfig(
        inputs=(),
        store=args.store,
        capture=check_name(args.capture, kind="capture name"),
        spec=InputSpec.parse_map(args.map, args.time_unit, channels=args.channels),
        progress=False,
    )
    done = retry.retry(config, run=args.run, reason=args.reason)
    if not done.retried:
        asked = " (of those asked for)" if args.run or args.reason else ""
        say(f"capture {args.capture!r}: no open dead letters to retry{asked}")
        return 0
    still = ", ".join(f"{k} {v:,}" for k, v in sorted(done.reasons.items()))
    if done.run is None:
        say(
            f"retry: none of {done.retried:,} open dead letters passes now ({still}); "
            "nothing changed"
        )
        return 0
    if not args.quiet:
        say(format_summary(done.run.summary, store))
    say(
        f"retry: {done.retried:,} open dead letters: {done.resolved:,} resolved by run "
        f"{done.run.run} ({done.captured:,} captured, {done.duplicates:,} duplicates: already "
        f"in the capture), {done.still_rejected:,} still rejected"
        + (f" ({still})" if still else "")
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    store = Store(args.store)
    check_layout(store)
    config = ingest.demo_config(args.store, args.duration)
    say(
        f"demo: simulating 4 instruments x 2 channels at 10 Hz for {args.duration} "
        f"of event time ({config.inputs[0]})"
    )
    result = jobs.execute(config, workers=args.workers)
    if result.run is None and result.skipped:
        say(f"demo: this store has it already (run {result.skipped[0][1]}); nothing to ingest")
        code = 0
    else:
        code = print_result(result, store, args)
    info = capture_info(store, "demo")
    say(
        f"\ncapture 'demo': {info.rows:,} readings from {info.sources} sources, "
        f"{info.first} .. {info.last}\n  in {store.uri('captures/demo')} "
        f"({info.files} Parquet files, {info.partitions} partitions, "
        f"{plural(info.commits, 'commit')})\n"
        f"views: {', '.join(v.name for v in ingest.DEMO_VIEWS)} in {store.uri('views')}\n"
        f"Try:  .venv/bin/obsflow views show demo_10s --store {args.store} --source sim-000"
    )
    return code


def cmd_compact(args: argparse.Namespace) -> int:
    store = Store(args.store)
    check_layout(store)
    if not tables.exists(store, layout.capture_dir(args.name)):  # (a dropped one: vacuumed)
        open_capture(store, args.name)  # (raises: no such capture, with those there are)
    retain = parse_duration_ns(args.retain) / 3.6e12
    result = compact(store, args.name, new_run_id(), target_rows=args.target_rows)
    if result.version is None:
        say(f"capture {args.name!r}: nothing to compact")
    else:
        say(
            f"capture {args.name!r}: {result.before:,} files ({result.rows:,} readings) "
            f"rewritten as {result.after:,} (version {result.version})"
        )
    cleaned = vacuum(store, args.name, retention_hours=retain)
    say(
        f"capture {args.name!r}: vacuum deleted {plural(cleaned.files, 'file')} and "
        f"{plural(cleaned.folders, 'bookkeeping folder')} no version of the last "
        f"{args.retain} needs"
    )
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    from obsflow.connectors.storage.cold import archive

    store = Store(args.store)
    check_layout(store)
    open_capture(store, args.name)
    before = parse_time(args.before, "--before")
    if before is None:
        raise ConfigError("--before needs a time, e.g. 2025-01-01")
    cold = Store(args.to)
    result = archive(store, args.name, new_run_id(), before=before, to=cold)
    if result.commit is None:
        say(f"capture {args.name!r}: nothing to archive (no file lies wholly before {args.before})")
    else:
        say(
            f"capture {args.name!r}: moved {result.objects:,} files ({result.rows:,} readings, "
            f"{result.bytes:,} bytes) to {cold.uri()} (commit #{result.commit}); "
            f"manifest {result.manifest}; the next `capture compact` past its retention "
            "deletes them here"
        )
    return 0


def cmd_close(args: argparse.Namespace) -> int:
    store = Store(args.store)
    until = parse_time(args.until, "--until")
    summary = close_view(store, args.name, new_run_id(), sources=args.source, until=until)
    for note in summary.get("notes", ()):
        say(f"obsflow: {note}")
    v = summary["views"].get(args.name, {"rows": 0, "provisional": 0})
    say(
        f"view {args.name}: {v['rows']:,} windows made final, {v['provisional']:,} still open "
        f"(commit #{summary['commit']} of capture {summary['capture']!r})"
    )
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    store = Store(args.store)
    moved = migrate(store, say)
    say(f"{store.uri()}: layout is current ({moved} captures and views migrated)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``obsflow serve``: the web app (``flows.serve``) until Ctrl-C."""
    from obsflow.flows import serve

    store = Store(args.store)
    check_layout(store)
    config = serve.ServeConfig(
        store=args.store,
        host=args.host,
        port=args.port,
        token=serve.read_token(args.token_file),
        poll=args.poll,
        cors_origins=tuple(args.cors_origin),
        allow_hosts=tuple(args.allow_host),
    )
    sock = serve.listening_socket(args.host, args.port)
    host = f"[{args.host}]" if ":" in args.host else args.host
    say(f"obsflow serve: {store.uri('')} at http://{host}:{args.port}/ (Ctrl-C stops)")
    serve.serve(config, sock)
    return 0


def cmd_bluesky_export(args: argparse.Namespace) -> int:
    """``obsflow bluesky export``: one run as event-model documents
    (``flows.pipeline.bluesky_export``)."""
    store = Store(args.store)
    check_layout(store)
    from obsflow.flows.pipeline.bluesky_export import export_run  # (pandas)

    done = export_run(store, args.capture, args.run, Path(args.out))
    docs = ", ".join(f"{n} {name}" for name, n in done["documents"].items())
    say(f"run {args.run}: {docs} -> {done['out']}")
    say(
        f"  {done['readings']:,} readings, {done['frames']:,} frames"
        + (f" in {done['arrays']}" if done["arrays"] else "")
    )
    for why, n in done["left_out"].items():
        say(f"  left out: {n:,} readings ({why})")
    return 0


def cmd_drop(args: argparse.Namespace) -> int:
    """``obsflow capture drop`` / ``views drop``: asks for the name again unless ``--yes``."""
    from obsflow.flows.pipeline.dropping import drop_capture, drop_view

    store = Store(args.store)
    check_layout(store)
    kind = "capture" if args.command == "capture" else "view"
    if not args.yes:
        sys.stderr.write(f"drop {kind} {args.name!r}? type its name again to confirm: ")
        sys.stderr.flush()
        answer = sys.stdin.readline().strip()
        if not sys.stdin.isatty():  # (a terminal echoes the typed line end; a pipe does not)
            sys.stderr.write("\n")
        if answer != args.name:
            said = f"{answer!r} is not {args.name!r}" if answer else "no name was typed"
            raise ConfigError(f"{said}: nothing was dropped (--yes drops without asking)")
    if kind == "capture":
        done = drop_capture(store, args.name)
        views = "view" if len(done.views) == 1 else "views"
        also = f" and its {views} {', '.join(done.views)}" if done.views else ""
        say(
            f"capture {args.name!r} ({plural(done.readings, 'reading')}){also} dropped by "
            f"commit #{done.commit}; --as-of {done.commit - 1} reads them until a vacuum "
            f"(obsflow capture compact {args.name})"
        )
    else:
        done = drop_view(store, args.name)
        say(
            f"view {args.name!r} dropped by commit #{done.commit} of capture {done.capture!r}; "
            f"runs of {done.capture!r} no longer build it"
        )
    return 0
