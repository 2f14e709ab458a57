"""``obsflow ingest``, ``replay`` and ``simulate``: their arguments; the handlers
(``commands.cmd_ingest``, ``cmd_replay``, ``cmd_simulate``) are imported when they run."""

from __future__ import annotations

import argparse

from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.schema import TIME_UNITS, parse_size
from obsflow.flows.cli.options import (
    Help,
    Listing,
    Subparsers,
    add_as_of,
    add_lateness,
    add_parallel,
    add_recovery,
    add_run_output,
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
  obsflow ingest wetter.csv --decimal , --capture wx      (21,5 and ; between fields)
  obsflow ingest nats://127.0.0.1:4222 --topic obs.> --consumer lab --capture live
  obsflow ingest --format bluesky scan.jsonl --capture beamline --root-map /old/data=/mnt/data
  obsflow ingest kafka://127.0.0.1:9092 --format bluesky --topic bs --consumer o --capture bl
  obsflow ingest ca://BL1:temp,BL1:wf --capture beamline  (EPICS Channel Access monitors)
  obsflow ingest pva:// --pvs pvs.txt --capture beamline  (PV Access, the PVs listed in a file)""",
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


INGEST = Listing(
    f"""
    --capture NAME        capture name (default: {DEFAULTS.capture})
    --map FIELD=COL,...   the input columns of obsflow's fields: source=source_id,time=event_time
                          (repeatable: --map source=station --map value=temp)
    --time-unit           unit of integer epoch times (default auto: from their magnitude, and
                          said)
    --channels COL,COL    wide input: only these columns become channels (default: every
                          numeric column)
    --delimiter CHAR      CSV field delimiter, e.g. ';' or tab (default: read from the header
                          line)
    --decimal MARK        decimal mark of numbers written as text: . (default) or , for 21,5
                          (a decimal-comma CSV, with another --delimiter)
    --max-record-size SIZE  longest line (JSON lines, CSV) or JSON message, e.g. 512KiB,
                          4MiB, 2MB or bytes (default {DEFAULTS.max_record_size}): a longer one
                          is a malformed dead letter that keeps its first 4 KiB (a file's line
                          is read no further)
    --partitions N        capture partitions, fixed at creation (default 4)
    --views FILE          TOML view definitions (default: per-minute stats of every series)
    --force               read inputs again even if their content is already in the capture
                          (duplicates are still dropped)
    --inline-limit BYTES  payloads up to this size stay in the capture (default
                          {DEFAULTS.inline_limit})
    --features F,F        scalar channels derived from each payload: mean,max,min,sum,std,rms
    --dedup-horizon DURATION  how long (event time) identities are remembered (default
                          {DEFAULTS.dedup_horizon}); 0 turns dedup off
    """
)
BLUESKY = Listing(
    f"""
    --root-map OLD=NEW    external files (resource roots, stream_resource URIs) under OLD are
                          under NEW now (repeatable)
    --external-root DIR   read external files only from under DIR (repeatable; after
                          --root-map): documents name the files, this keeps an ingest to the
                          data folders
    --external-wait DURATION  how long a missing external file is waited for before it is a dead
                          letter (detectors write late; default {DEFAULTS.external_wait})
    """,
    title="Bluesky documents (--format bluesky: every file is a document stream, JSON lines of "
    "[name, doc] or {name, doc}, or .msgpack)",
)
LIVE = Listing(
    """
    --topic T             subject (NATS), topic filter (MQTT) or topic (Kafka) to read
                          (repeatable)
    --consumer NAME       durable consumer (NATS), client id (MQTT) or group id (Kafka); a rerun
                          resumes where the capture's last commit stopped, in the broker's order
    --wait                when another live session holds the capture, start once it ends (default:
                          refuse, naming it)
    --stream S            JetStream stream (default: from the subject)
    --format              message bodies: a JSON reading, an array of them or a number; an Arrow
                          IPC stream; or one Bluesky document (msgpack as bluesky-kafka
                          publishes, or JSON) (default json)
    --flush-interval DURATION  longest wait before the messages received are committed (default
                          1s)
    --max-batch N         most messages one commit takes; the broker holds the rest until then,
                          so memory stays bounded however far behind the session is (default
                          50000)
    --idle-timeout DURATION  close the open windows of a source that sent nothing for this long
                          (wall time; recorded, so a replay closes them too)
    --stop-when-idle DURATION  end the session after this long without a message (default: run
                          until stopped)
    --pvs FILE            ca:// and pva:// (EPICS): more PVs, one 'PV [CHANNEL]' a line (CHANNEL:
                          the channel id of a PV whose name is none, e.g. with braces)
    --source NAME         ca:// and pva://: the source id of every reading (default: the IOC's
                          host:port for ca://, pva for pva://)
    """,
    title="live ingest from a broker (INPUT is nats://, mqtt://, mqtts:// or kafka://host:port; "
    "credentials from the environment), or from EPICS PVs (INPUT is ca://PV,PV or pva://PV,PV; "
    "the IOCs from EPICS_CA_ADDR_LIST / EPICS_PVA_ADDR_LIST)",
)


def _ingest(sub: Subparsers) -> None:
    sp = command(sub, "ingest", HELP["ingest"], lazy("commands", "cmd_ingest"))
    sp.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="Parquet/CSV/JSONL files (by extension) or one sim:// URL",
    )
    add = INGEST.on(sp)
    add("--capture", default=DEFAULTS.capture)
    add("--map", action="append")
    add("--time-unit", default=DEFAULTS.time_unit, choices=["auto", *TIME_UNITS])
    add("--channels", action="append")
    add("--delimiter")
    add("--decimal", choices=[".", ","])
    add("--max-record-size", type=record_size, default=DEFAULTS.max_record_size)
    add("--partitions", type=int)
    add_parallel(sp)
    add("--views")
    add_lateness(sp)
    sp.add_argument("--batch-rows", type=int, default=DEFAULTS.batch_rows, help=argparse.SUPPRESS)
    add_run_output(sp)
    add("--force", action="store_true")
    add("--inline-limit", type=int, default=DEFAULTS.inline_limit)
    add("--features")
    add_bluesky = BLUESKY.on(sp)
    add_bluesky("--root-map", action="append")
    add_bluesky("--external-root", action="append", dest="external_roots")
    add_bluesky("--external-wait", default=DEFAULTS.external_wait)
    add("--dedup-horizon", default=DEFAULTS.dedup_horizon)
    add_recovery(sp)
    add_live = LIVE.on(sp)
    add_live("--topic", action="append")
    add_live("--consumer")
    add_live("--wait", action="store_true")
    add_live("--stream")
    add_live("--format", choices=["json", "arrow", "bluesky"])
    add_live("--flush-interval", default="1s")
    add_live("--max-batch", type=int, default=50_000)
    add_live("--idle-timeout")
    add_live("--stop-when-idle")
    add_live("--pvs")
    add_live("--source")


def record_size(text: str) -> str:
    """``--max-record-size``, checked as the command line is read (a usage error)."""
    try:
        parse_size(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--max-record-size ")) from None
    return text


REPLAY = Listing(
    """
    --capture NAME        capture to replay
    --views FILE          TOML view definitions (default: the views built from this capture)
    --from ISO            readings at or after this time
    --until ISO           readings before this time
    --source SOURCE       only this source (repeatable)
    --as NAME             build the slice (--source, --from, --until) as a new view NAME instead
                          of recomputing its rows in the view
    --speed SPEED         max (default) or X times the original event-time rate (1 = real time)
    """
)
SIMULATE = Listing(
    """
    --to URL              publish to a broker instead, in real time (nats://, mqtt:// or
                          kafka://host:port; with --topic)
    --topic T             subject to publish to (with --to)
    --format              with --to: one JSON reading per message, or Arrow IPC per 100 ms
                          (default json)
    --sources N           instruments (default 4)
    --channels C,C        scalar channels (default temperature,pressure)
    --rate HZ             Hz per channel (default 10)
    --duration DURATION   event time span (default 60s)
    --start ISO           ISO-8601 start time (default 2026-01-01T00:00:00Z; with --to: now)
    --seed N              random seed (default 0)
    --payload NAME:SHAPE:DTYPE  add array payloads, e.g. frame:512x512:uint16 (repeatable;
                          Parquet only)
    --payload-rate N      payloads per second per source (default 1)
    """
)


def _replay(sub: Subparsers) -> None:
    sp = command(sub, "replay", HELP["replay"], lazy("commands", "cmd_replay"))
    add = REPLAY.on(sp)
    add("--capture", required=True)
    add("--views")
    add("--from", dest="start")
    add("--until")
    add("--source", action="append")
    add("--as", dest="as_name")
    add_lateness(sp)
    add_as_of(sp, "the capture")
    add("--speed", default="max")
    add_parallel(sp)
    add_run_output(sp)
    add_recovery(sp)


def _simulate(sub: Subparsers) -> None:
    sp = command(sub, "simulate", HELP["simulate"])
    sp.add_argument("out", metavar="OUT", nargs="?", help="output file: .parquet, .csv or .jsonl")
    add = SIMULATE.on(sp)
    add("--to")
    add("--topic")
    add("--format", default="json", choices=["json", "arrow"])
    add("--sources", type=int, default=4)
    add("--channels", default="temperature,pressure")
    add("--rate", type=float, default=10.0)
    add("--duration", default="60s")
    add("--start")
    add("--seed", type=int, default=0)
    add("--payload", action="append")
    add("--payload-rate", type=float, default=1.0)
    sp.set_defaults(func=lazy("commands", "cmd_simulate"))
