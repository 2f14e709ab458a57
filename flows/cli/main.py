"""The ``obsflow`` command: the friendly front door to the dataflows.

It only parses arguments and prints: sub-commands that run something call the job layer
(``flows.pipeline.jobs``, through ``flows.cli.commands``), those that read call
``connectors.datasets.reads``
(through ``flows.cli.show``). Errors in what the user asked for exit with status 2 and a one-line
message saying what to do; bad *records* never stop a run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from obsflow.connectors.batch import DEFAULT_BATCH_ROWS
from obsflow.connectors.errors import ObsflowError
from obsflow.connectors.formats.schema import TIME_UNITS
from obsflow.connectors.storage.store import DEFAULT_STORE

# Examples shown by each command's --help (and checked by tests/cli/test_help.py).
COMMAND_EXAMPLES = {
    "ingest": """\
  obsflow ingest hour0.csv --capture buoy
  obsflow ingest hour1.csv --capture buoy            (the views continue from hour0)
  obsflow ingest wx.csv --capture wx --map source=station,time=timestamp,value=temp_c
  obsflow ingest wide.csv --capture wx --map source=station,time=timestamp --channels t,rh
  obsflow ingest logger.txt.csv --delimiter tab --time-unit s --views views.toml
  obsflow ingest nats://127.0.0.1:4222 --topic obs.> --consumer lab --capture live
  obsflow ingest --format bluesky scan.jsonl --capture beamline --root-map /old/data=/mnt/data
  obsflow ingest kafka://127.0.0.1:9092 --format bluesky --topic bs --consumer o --capture bl""",
    "replay": """\
  obsflow replay --capture buoy                      (rebuild the capture's views)
  obsflow replay --capture buoy --views new.toml --lateness 10m
  obsflow replay --capture buoy --source b01 --from 2026-01-01 --until 2026-01-02
  obsflow replay --capture buoy --speed 10           (ten times the original rate)""",
    "simulate": """\
  obsflow simulate sim.parquet --sources 8 --channels t,p --rate 50 --duration 10m
  obsflow simulate frames.parquet --payload frame:64x64:uint16 --payload-rate 2
  obsflow simulate --to nats://127.0.0.1:4222 --topic obs.sim --rate 20 --duration 10m""",
    "views": """\
  obsflow views list
  obsflow views show buoy_1m --source b01 --from 2026-01-01 --limit 20
  obsflow views show buoy_1m --final -o buoy_1m.csv
  obsflow views close buoy_1m --until 2026-01-02     (the data is complete up to then)""",
    "capture": """\
  obsflow capture list
  obsflow capture info buoy
  obsflow capture show buoy --source b01 --channel sst -o b01.parquet
  obsflow capture verify buoy
  obsflow capture compact live
  obsflow capture archive buoy --before 2025-01-01 --to s3://cold-bucket/obs""",
    "late": """\
  obsflow late list
  obsflow late show buoy_1m --limit 10""",
    "deadletters": """\
  obsflow deadletters list
  obsflow deadletters show --reason bad_time --limit 10
  obsflow deadletters retry --capture wx --reason missing --map source=station,value=temp_c
  obsflow deadletters list --all                     (the resolved ones too)""",
    "payload": """\
  obsflow payload get 3f9a...e1 -o frame.npy""",
    "demo": """\
  obsflow demo
  obsflow demo --store /tmp/demo --duration 10m --workers 2""",
    "serve": """\
  obsflow serve --store data/store  (then open http://127.0.0.1:8000)
  obsflow serve --host 0.0.0.0 --token-file ~/.obsflow-token  (reachable by others: a token)""",
    "bluesky": """\
  obsflow bluesky runs --capture beamline    (after obsflow ingest --format bluesky ...)
  obsflow bluesky export --capture beamline --run 5f1c...e2 -o run.jsonl""",
    "store": """\
  obsflow store migrate --store s3://bucket/obs""",
    "lineage": """\
  obsflow lineage demo_10s --source sim-000 --channel temperature --at 2026-01-01T00:00:30Z
  obsflow lineage buoy_daily --source b01 --channel sst --at 2016-03-02 -o behind.csv""",
    "sql": """\
  obsflow sql                                        (the tables and their columns)
  obsflow sql "select source, count(*), avg(value) from capture_buoy group by source"
  obsflow sql "select * from view_buoy_1m where final and mean > 20" -o warm.csv
  obsflow sql "select reason, count(*) from deadletters group by reason" --store s3://b/obs
  obsflow sql "select * from runs order by finished" -o runs.parquet""",
}


def _command(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    summary: str,
    description: str | None = None,
    examples: str | None = None,
) -> argparse.ArgumentParser:
    """A sub-command whose --help ends with its examples."""
    sp: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=description or summary,
        epilog="examples:\n" + (examples or COMMAND_EXAMPLES[name]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return sp


def _group(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    summary: str,
) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """A sub-command with actions of its own (``views list``, ``views show NAME``, ...)."""
    sp = _command(sub, name, summary)
    actions = sp.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="one of these; ACTION --help for more"
    )
    actions.prog_name = name  # type: ignore[attr-defined]
    return actions


def _action(
    group: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    summary: str,
    func: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """One action of a group, with --store, and the group's examples of this action."""
    command = group.prog_name  # type: ignore[attr-defined]
    mine = [
        line
        for line in COMMAND_EXAMPLES[command].splitlines()
        if line.split()[:3] == ["obsflow", command, name]
    ]
    sp = _command(group, name, summary, examples="\n".join(mine))
    _store(sp)
    sp.set_defaults(func=func)
    return sp


def _limit(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--limit", type=int, default=50, help="rows to print (default 50; 0 = all)")


def _store(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--store",
        default=DEFAULT_STORE,
        help=f"store URL: a folder, s3://bucket/prefix or memory:// (default {DEFAULT_STORE})",
    )


def _recovery(sp: argparse.ArgumentParser) -> None:
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


def _parallel(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--workers", type=int, default=1, help="worker threads per process (default 1)")
    sp.add_argument(
        "--processes",
        type=int,
        default=1,
        help="run as a Bytewax cluster of N processes on this host (default 1)",
    )
    sp.add_argument(
        "--addresses",
        metavar="HOST:PORT;...",
        help="run as one process of a cluster across hosts: every process gets the same list "
        "(one host:port each, in process order), its own --process-id and the same --run-id",
    )
    sp.add_argument("--process-id", type=int, help="this process's index in --addresses")
    sp.add_argument("--run-id", help="the run's id, the same for every process of a cluster")


def _run_output(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--summary", metavar="FILE", help="also write the JSON run summary here")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress or summary lines")


def _lateness(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--lateness",
        metavar="DURATION",
        help="override the views' lateness (e.g. 5m): how far behind a series' latest "
        "reading a window stays open",
    )


def _as_of(sp: argparse.ArgumentParser, what: str = "the store") -> None:
    sp.add_argument(
        "--as-of",
        metavar="N|TIME",
        help=f"{what} as it was: after the capture's commit N (the number a run summary "
        "gives), or at TIME (ISO 8601, UTC); time travel reaches back as far as the retention "
        "of `capture compact` (default 7 days)",
    )


def _filters(sp: argparse.ArgumentParser, what: str = "windows starting") -> None:
    sp.add_argument("--source", action="append", help="only this source (repeatable)")
    sp.add_argument("--channel", action="append", help="only this channel (repeatable)")
    sp.add_argument("--from", dest="start", metavar="TIME", help=f"{what} at or after")
    sp.add_argument("--until", metavar="TIME", help=f"{what} before")
    sp.add_argument(
        "-o",
        "--out",
        metavar="FILE",
        help="write every matching row to FILE (.parquet, .csv or .jsonl) instead of printing",
    )


def _ingest(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sp = _command(
        sub,
        "ingest",
        "ingest files or a sim:// URL into a capture",
        "ingest files or a sim:// URL into a capture\n\n"
        "Files are long format: columns source, time, value and optionally channel and seq\n"
        "(--map names other columns), or wide: source, time and one numeric column per\n"
        "channel. CSV may be comma-, semicolon-, tab- or bar-delimited. Inputs a committed\n"
        "run already captured are skipped; the views continue where the last run stopped.",
    )
    sp.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="Parquet/CSV/JSONL files (by extension) or one sim:// URL",
    )
    _store(sp)
    sp.add_argument("--capture", default="default", help="capture name (default: default)")
    sp.add_argument("--map", help="rename input columns: source=source_id,time=event_time")
    sp.add_argument(
        "--time-unit",
        default="auto",
        choices=["auto", *TIME_UNITS],
        help="unit of integer epoch times (default auto: from their magnitude, and said)",
    )
    sp.add_argument(
        "--channels",
        metavar="COL,COL",
        help="wide input: only these columns become channels (default: every numeric column)",
    )
    sp.add_argument(
        "--delimiter",
        metavar="CHAR",
        help="CSV field delimiter, e.g. ';' or tab (default: read from the header line)",
    )
    sp.add_argument(
        "--partitions", type=int, help="capture partitions, fixed at creation (default 4)"
    )
    _parallel(sp)
    sp.add_argument(
        "--views",
        metavar="FILE",
        help="TOML view definitions (default: per-minute stats of every series)",
    )
    _lateness(sp)
    sp.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS, help=argparse.SUPPRESS)
    _run_output(sp)
    sp.add_argument(
        "--force",
        action="store_true",
        help="read inputs again even if their content is already in the capture "
        "(duplicates are still dropped)",
    )
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
    bluesky = sp.add_argument_group(
        "Bluesky documents (--format bluesky: every file is a document stream, JSON lines of "
        "[name, doc] or {name, doc}, or .msgpack)"
    )
    bluesky.add_argument(
        "--root-map",
        action="append",
        metavar="OLD=NEW",
        help="external files (resource roots, stream_resource URIs) under OLD are under NEW "
        "now (repeatable)",
    )
    bluesky.add_argument(
        "--external-root",
        action="append",
        metavar="DIR",
        help="read external files only from under DIR (repeatable; after --root-map): "
        "documents name the files, this keeps an ingest to the data folders",
    )
    bluesky.add_argument(
        "--external-wait",
        metavar="DURATION",
        default="10s",
        help="how long a missing external file is waited for before it is a dead letter "
        "(detectors write late; default 10s)",
    )
    sp.add_argument(
        "--dedup-horizon",
        default="10m",
        help="how long (event time) identities are remembered (default 10m); 0 turns dedup off",
    )
    _recovery(sp)
    live = sp.add_argument_group(
        "live ingest from a broker (INPUT is nats://, mqtt://, mqtts:// or kafka://host:port; "
        "credentials from the environment)"
    )
    live.add_argument(
        "--topic",
        action="append",
        metavar="T",
        help="subject (NATS), topic filter (MQTT) or topic (Kafka) to read (repeatable)",
    )
    live.add_argument(
        "--consumer",
        metavar="NAME",
        help="durable consumer (NATS), client id (MQTT) or group id (Kafka): a rerun with the "
        "same name resumes after the last acknowledged message",
    )
    live.add_argument("--stream", metavar="S", help="JetStream stream (default: from the subject)")
    live.add_argument(
        "--format",
        choices=["json", "arrow", "bluesky"],
        help="message bodies: a JSON reading, an array of them or a number; an Arrow IPC "
        "stream; or one Bluesky document (msgpack as bluesky-kafka publishes, or JSON) "
        "(default json)",
    )
    live.add_argument(
        "--flush-interval",
        metavar="DURATION",
        default="1s",
        help="longest wait before the messages received are committed (default 1s)",
    )
    live.add_argument(
        "--max-batch",
        metavar="N",
        type=int,
        default=50_000,
        help="most messages one commit takes; the broker holds the rest until then, so memory "
        "stays bounded however far behind the session is (default 50000)",
    )
    live.add_argument(
        "--idle-timeout",
        metavar="DURATION",
        help="close the open windows of a source that sent nothing for this long (wall time; "
        "recorded, so a replay closes them too)",
    )
    live.add_argument(
        "--stop-when-idle",
        metavar="DURATION",
        help="end the session after this long without a message (default: run until stopped)",
    )
    sp.set_defaults(func=_lazy("commands", "cmd_ingest"))


def _replay(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sp = _command(sub, "replay", "rebuild views from a capture (full speed or paced)")
    _store(sp)
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
        "--as",
        dest="as_name",
        metavar="NAME",
        help="build the slice (--source, --from, --until) as a new view NAME instead of "
        "recomputing its rows in the view",
    )
    _lateness(sp)
    _as_of(sp, "the capture")
    sp.add_argument(
        "--speed",
        default="max",
        help="max (default) or X times the original event-time rate (1 = real time)",
    )
    _parallel(sp)
    _run_output(sp)
    _recovery(sp)
    sp.set_defaults(func=_lazy("commands", "cmd_replay"))


EXAMPLES = """examples:
  obsflow demo                                   simulate 4 instruments into ./data/store
  obsflow ingest hour0.csv --capture buoy        long format: source, time, value [, channel]
  obsflow ingest wx.csv --capture wx --map source=station,time=timestamp,value=temp_c
  obsflow views show buoy_1m --source b01 --from 2026-01-01
  obsflow replay --capture buoy --views views.toml --lateness 10m
  obsflow deadletters list                       what was rejected, by run and reason
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="obsflow",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    sub = p.add_subparsers(dest="command", required=True)
    _ingest(sub)
    _replay(sub)

    sp = _command(sub, "simulate", "write simulated instrument readings to a file")
    sp.add_argument("out", metavar="OUT", nargs="?", help="output file: .parquet, .csv or .jsonl")
    sp.add_argument(
        "--to",
        metavar="URL",
        help="publish to a broker instead, in real time (nats://, mqtt:// or kafka://host:port; "
        "with --topic)",
    )
    sp.add_argument("--topic", metavar="T", help="subject to publish to (with --to)")
    sp.add_argument(
        "--format",
        default="json",
        choices=["json", "arrow"],
        help="with --to: one JSON reading per message, or Arrow IPC per 100 ms (default json)",
    )
    sp.add_argument("--sources", type=int, default=4, help="instruments (default 4)")
    sp.add_argument(
        "--channels",
        default="temperature,pressure",
        help="scalar channels (default temperature,pressure)",
    )
    sp.add_argument("--rate", type=float, default=10.0, help="Hz per channel (default 10)")
    sp.add_argument("--duration", default="60s", help="event time span (default 60s)")
    sp.add_argument(
        "--start",
        help="ISO-8601 start time (default 2026-01-01T00:00:00Z; with --to: now)",
    )
    sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sp.add_argument(
        "--payload",
        action="append",
        metavar="NAME:SHAPE:DTYPE",
        help="add array payloads, e.g. frame:512x512:uint16 (repeatable; Parquet only)",
    )
    sp.add_argument(
        "--payload-rate", type=float, default=1.0, help="payloads per second per source (default 1)"
    )
    sp.set_defaults(func=_lazy("commands", "cmd_simulate"))

    views = _group(sub, "views", "list views, show or export a view's rows, close its windows")
    _action(
        views,
        "list",
        "the store's views: rows, open windows, last update",
        _lazy("show", "cmd_views"),
    )
    ap = _action(
        views,
        "show",
        "a view's rows (or -o FILE: all of them, to a file)",
        _lazy("show", "cmd_views"),
    )
    ap.add_argument("name", metavar="NAME", help="the view")
    _filters(ap)
    ap.add_argument("--final", action="store_true", help="only final rows (windows closed)")
    _as_of(ap, "the view")
    _limit(ap)
    ap = _action(
        views,
        "close",
        "declare the data complete: the view's open windows (of --source, or up to --until) "
        "become final now",
        _lazy("commands", "cmd_close"),
    )
    ap.add_argument("name", metavar="NAME", help="the view")
    ap.add_argument("--source", action="append", help="only this source's windows (repeatable)")
    ap.add_argument("--until", metavar="TIME", help="only windows ending at or before TIME")

    capture = _group(sub, "capture", "list captures, describe one, show or export its readings")
    _action(capture, "list", "the store's captures", _lazy("show", "cmd_capture"))
    ap = _action(
        capture,
        "info",
        "one capture: readings, sources, time span, files, commits",
        _lazy("show", "cmd_capture"),
    )
    ap.add_argument("name", metavar="NAME", help="the capture")
    ap.add_argument("--json", action="store_true", help="as JSON")
    _as_of(ap, "the capture")
    ap = _action(
        capture,
        "show",
        "a capture's readings (or -o FILE: all of them, to a file)",
        _lazy("show", "cmd_capture"),
    )
    ap.add_argument("name", metavar="NAME", help="the capture")
    _filters(ap, "readings")
    _as_of(ap, "the capture")
    _limit(ap)
    ap = _action(
        capture,
        "verify",
        "check that every payload reference resolves and matches",
        _lazy("show", "cmd_capture"),
    )
    ap.add_argument("name", metavar="NAME", help="the capture")
    ap = _action(
        capture,
        "compact",
        "rewrite the capture's many small files (a live session's) as a few large ones, as "
        "one commit (Delta's optimize: readers and replays see the same readings throughout), "
        "then vacuum what no version of the retention period needs",
        _lazy("commands", "cmd_compact"),
    )
    ap.add_argument("name", metavar="NAME", help="the capture")
    ap.add_argument(
        "--target-rows",
        type=int,
        default=1 << 20,
        metavar="N",
        help="readings per new file, at most (default 1048576)",
    )
    ap.add_argument(
        "--retain",
        default="7d",
        metavar="DUR",
        help="keep what time travel to the last DUR needs (default 7d; at least 1h: younger "
        "files may belong to a run still writing)",
    )
    ap = _action(
        capture,
        "archive",
        "move the capture's files older than a time to another store (cold storage), with a "
        "manifest there; replay reads both, views keep their rows",
        _lazy("commands", "cmd_archive"),
    )
    ap.add_argument("name", metavar="NAME", help="the capture")
    ap.add_argument(
        "--before",
        required=True,
        metavar="TIME",
        help="move files whose readings all lie before this time (ISO 8601, UTC)",
    )
    ap.add_argument(
        "--to",
        required=True,
        metavar="URL",
        help="the archive store: a folder or s3://bucket/prefix",
    )

    late = _group(sub, "late", "late readings: counts by view and run, or the readings")
    _action(late, "list", "late readings counted by view and run", _lazy("show", "cmd_late"))
    ap = _action(late, "show", "the late readings of one view", _lazy("show", "cmd_late"))
    ap.add_argument("view", metavar="VIEW", help="the view")
    ap.add_argument("--run", help="only this run")
    _limit(ap)

    dead = _group(sub, "deadletters", "rejected records: counts by run and reason, or the records")
    for name, summary in (
        ("list", "dead letters counted by run and reason"),
        ("show", "the rejected records: origin, row, reason, message, raw text"),
    ):
        ap = _action(dead, name, summary, _lazy("show", "cmd_deadletters"))
        ap.add_argument("--run", help="only this run")
        ap.add_argument("--reason", help="only this reason code (bad_id, bad_time, conflict, ...)")
        ap.add_argument(
            "--all", action="store_true", help="those a retry captured too (resolved_by)"
        )
        if name == "show":
            _limit(ap)
    ap = _action(
        dead,
        "retry",
        "ingest the open dead letters again, after fixing --map or --time-unit; those it "
        "captures are marked resolved (never deleted)",
        _lazy("commands", "cmd_deadletters_retry"),
    )
    ap.add_argument("--capture", required=True, help="the capture to ingest them into")
    ap.add_argument("--run", help="only the dead letters of this run")
    ap.add_argument("--reason", help="only those of this reason code")
    ap.add_argument("--map", help="field=column pairs, as for ingest")
    ap.add_argument("--time-unit", default=None, help="unit of epoch times, as for ingest")
    ap.add_argument("--channels", help="columns of a wide record that are channels, as for ingest")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only errors")

    bluesky = _group(sub, "bluesky", "Bluesky runs held by a capture: list them, export one")
    ap = _action(
        bluesky,
        "runs",
        "the Bluesky runs of a capture: uid, plan, scan id, start, stop, exit status, events",
        _lazy("show", "cmd_bluesky"),
    )
    ap.add_argument("--capture", required=True, help="the capture")
    _limit(ap)
    ap = _action(
        bluesky,
        "export",
        "one run as event-model documents (JSON lines); its arrays in an HDF5 file beside it",
        _lazy("commands", "cmd_bluesky_export"),
    )
    ap.add_argument("--capture", required=True, help="the capture")
    ap.add_argument("--run", required=True, metavar="UID", help="the run's uid (its start's)")
    ap.add_argument(
        "-o", "--out", required=True, metavar="FILE", help="output .jsonl (arrays: beside it, .h5)"
    )

    payload = _group(sub, "payload", "fetch a payload array by its sha256")
    ap = _action(
        payload, "get", "write one payload array to a .npy file", _lazy("show", "cmd_payload")
    )
    ap.add_argument("sha256", help="the payload's sha256 (payload_sha256 in the capture)")
    ap.add_argument("--capture", help="capture to look the reference up in (default: all)")
    ap.add_argument("-o", "--out", required=True, help="output .npy file")

    sp = _command(sub, "demo", "simulate instruments and ingest them into ./data/store")
    _store(sp)
    sp.add_argument("--duration", default="60s", help="event time simulated (default 60s)")
    sp.add_argument("--workers", type=int, default=1, help="worker threads (default 1)")
    sp.set_defaults(func=_lazy("commands", "cmd_demo"))

    sp = _command(sub, "serve", "watch views live in a browser (a read-only web app and API)")
    _store(sp)
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sp.add_argument(
        "--token-file",
        metavar="FILE",
        help="file whose first line is the access token (else OBSFLOW_SERVE_TOKEN); required "
        "to bind anything but a loopback address",
    )
    sp.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let pages of this origin read the API (repeatable; default: none)",
    )
    sp.add_argument(
        "--poll",
        type=float,
        default=0.5,
        help="seconds between looks for new commits (default 0.5)",
    )
    sp.set_defaults(func=_lazy("commands", "cmd_serve"))

    store = _group(sub, "store", "store maintenance")
    _action(
        store,
        "migrate",
        "convert a store written before layout 2 to the current layout",
        _lazy("commands", "cmd_store"),
    )

    sp = _command(
        sub,
        "lineage",
        "the readings, runs and inputs behind one view row",
        "the readings, runs and inputs behind one view row\n\n"
        "The row of SOURCE/CHANNEL whose window starts at TIME (or holds it); then the capture's\n"
        "readings it summarizes (its window and seq range, less the view's late readings), the\n"
        "runs that captured them, their inputs, and the view definition and its hash.",
    )
    _store(sp)
    sp.add_argument("name", metavar="VIEW", help="the view")
    sp.add_argument("--source", required=True, help="the row's source")
    sp.add_argument("--channel", required=True, help="the row's channel")
    sp.add_argument("--at", required=True, metavar="TIME", help="the window's start (ISO 8601)")
    sp.add_argument("-o", "--out", metavar="FILE", help="write the readings to FILE")
    _limit(sp)
    sp.set_defaults(func=_lazy("show", "cmd_lineage"))

    sp = _command(
        sub,
        "sql",
        "ask the store in SQL (DuckDB): captures, views, late readings, dead letters, runs",
        "ask the store in SQL (DuckDB)\n\n"
        "Tables: capture_<name>, view_<name> (with final), late_<view>, deadletters, runs.\n"
        'Quote a name holding a dash: "capture_my-buoy". Without a query: the tables and\n'
        "their columns. Times are TIMESTAMP_NS in UTC, exact to the nanosecond: compare them\n"
        "with TIMESTAMP '2026-01-01 00:00:00' or a string. Needs DuckDB (pip install\n"
        "'obsflow[sql]').",
    )
    _store(sp)
    sp.add_argument("query", nargs="?", metavar="QUERY", help="one SQL query")
    _as_of(sp)
    sp.add_argument(
        "--format",
        choices=["table", "csv", "json", "parquet"],
        help="output format (default: table on the terminal, else from -o's extension)",
    )
    sp.add_argument(
        "-o", "--out", metavar="FILE", help="write the result to FILE instead of printing"
    )
    _limit(sp)
    sp.set_defaults(func=_lazy("show", "cmd_sql"))
    return p


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command of ``obsflow.flows.cli.<module>``, imported when it runs: ``obsflow ingest`` then
    loads what ingesting needs, not pandas and the readers of every other command."""

    def command(args: argparse.Namespace) -> int:
        func: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(f"obsflow.flows.cli.{module}"), name
        )
        return func(args)

    return command


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ObsflowError as exc:
        if os.environ.get("OBSFLOW_TRACEBACK"):  # (for obsflow's developers)
            traceback.print_exc()
        print(f"obsflow: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # (`obsflow capture info X | head`): the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
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
