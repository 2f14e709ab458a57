"""``obsflow ingest``, ``replay`` and ``simulate``: their arguments; the handlers
(``commands.cmd_ingest``, ``cmd_replay``, ``cmd_simulate``) are imported when they run."""

from __future__ import annotations

import argparse

from obsflow.connectors.formats.schema import TIME_UNITS
from obsflow.flows.cli.options import (
    Help,
    Subparsers,
    add_as_of,
    add_lateness,
    add_parallel,
    add_recovery,
    add_run_output,
    add_store,
    command,
    lazy,
)
from obsflow.flows.pipeline.options import DEFAULTS

HELP = {
    "ingest": Help(
        "ingest files or a sim:// URL into a capture",
        """\
  obsflow ingest hour0.csv --capture buoy
  obsflow ingest hour1.csv --capture buoy            (the views continue from hour0)
  obsflow ingest wx.csv --capture wx --map source=station,time=timestamp,value=temp_c
  obsflow ingest wide.csv --capture wx --map source=station,time=timestamp --channels t,rh
  obsflow ingest logger.txt.csv --delimiter tab --time-unit s --views views.toml
  obsflow ingest nats://127.0.0.1:4222 --topic obs.> --consumer lab --capture live
  obsflow ingest --format bluesky scan.jsonl --capture beamline --root-map /old/data=/mnt/data
  obsflow ingest kafka://127.0.0.1:9092 --format bluesky --topic bs --consumer o --capture bl""",
        description="ingest files or a sim:// URL into a capture\n\n"
        "Files are long format: columns source, time, value and optionally channel and seq\n"
        "(--map names other columns), or wide: source, time and one numeric column per\n"
        "channel. CSV may be comma-, semicolon-, tab- or bar-delimited. Inputs a committed\n"
        "run already captured are skipped; the views continue where the last run stopped.",
    ),
    "replay": Help(
        "rebuild views from a capture (full speed or paced)",
        """\
  obsflow replay --capture buoy                      (rebuild the capture's views)
  obsflow replay --capture buoy --views new.toml --lateness 10m
  obsflow replay --capture buoy --source b01 --from 2026-01-01 --until 2026-01-02
  obsflow replay --capture buoy --speed 10           (ten times the original rate)""",
    ),
    "simulate": Help(
        "write simulated instrument readings to a file",
        """\
  obsflow simulate sim.parquet --sources 8 --channels t,p --rate 50 --duration 10m
  obsflow simulate frames.parquet --payload frame:64x64:uint16 --payload-rate 2
  obsflow simulate --to nats://127.0.0.1:4222 --topic obs.sim --rate 20 --duration 10m""",
    ),
}


def add_parser(sub: Subparsers) -> None:
    _ingest(sub)
    _replay(sub)
    _simulate(sub)


def _ingest(sub: Subparsers) -> None:
    sp = command(sub, "ingest", HELP["ingest"])
    sp.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="Parquet/CSV/JSONL files (by extension) or one sim:// URL",
    )
    add_store(sp)
    sp.add_argument(
        "--capture", default=DEFAULTS.capture, help=f"capture name (default: {DEFAULTS.capture})"
    )
    sp.add_argument("--map", help="rename input columns: source=source_id,time=event_time")
    sp.add_argument(
        "--time-unit",
        default=DEFAULTS.time_unit,
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
    add_parallel(sp)
    sp.add_argument(
        "--views",
        metavar="FILE",
        help="TOML view definitions (default: per-minute stats of every series)",
    )
    add_lateness(sp)
    sp.add_argument("--batch-rows", type=int, default=DEFAULTS.batch_rows, help=argparse.SUPPRESS)
    add_run_output(sp)
    sp.add_argument(
        "--force",
        action="store_true",
        help="read inputs again even if their content is already in the capture "
        "(duplicates are still dropped)",
    )
    sp.add_argument(
        "--inline-limit",
        type=int,
        default=DEFAULTS.inline_limit,
        metavar="BYTES",
        help=f"payloads up to this size stay in the capture (default {DEFAULTS.inline_limit})",
    )
    sp.add_argument(
        "--features",
        metavar="F,F",
        help="scalar channels derived from each payload: mean,max,min,sum,std,rms",
    )
    _bluesky_options(sp)
    sp.add_argument(
        "--dedup-horizon",
        default=DEFAULTS.dedup_horizon,
        help="how long (event time) identities are remembered "
        f"(default {DEFAULTS.dedup_horizon}); 0 turns dedup off",
    )
    add_recovery(sp)
    _live_options(sp)
    sp.set_defaults(func=lazy("commands", "cmd_ingest"))


def _bluesky_options(sp: argparse.ArgumentParser) -> None:
    """Ingest's options for Bluesky documents (``--format bluesky``)."""
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
        dest="external_roots",
        metavar="DIR",
        help="read external files only from under DIR (repeatable; after --root-map): "
        "documents name the files, this keeps an ingest to the data folders",
    )
    bluesky.add_argument(
        "--external-wait",
        metavar="DURATION",
        default=DEFAULTS.external_wait,
        help="how long a missing external file is waited for before it is a dead letter "
        f"(detectors write late; default {DEFAULTS.external_wait})",
    )


def _live_options(sp: argparse.ArgumentParser) -> None:
    """Ingest's options for a broker URL (a live session)."""
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


def _replay(sub: Subparsers) -> None:
    sp = command(sub, "replay", HELP["replay"])
    add_store(sp)
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
    add_lateness(sp)
    add_as_of(sp, "the capture")
    sp.add_argument(
        "--speed",
        default="max",
        help="max (default) or X times the original event-time rate (1 = real time)",
    )
    add_parallel(sp)
    add_run_output(sp)
    add_recovery(sp)
    sp.set_defaults(func=lazy("commands", "cmd_replay"))


def _simulate(sub: Subparsers) -> None:
    sp = command(sub, "simulate", HELP["simulate"])
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
    sp.set_defaults(func=lazy("commands", "cmd_simulate"))
