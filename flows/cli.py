"""The ``obsflow`` command: the friendly front door to the dataflows.

It only parses arguments and prints: sub-commands that run something call the job layer
(``flows.jobs``, through ``flows.commands``), those that read call ``connectors.reads``
(through ``flows.show``). Errors in what the user asked for exit with status 2 and a one-line
message saying what to do; bad *records* never stop a run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from obsflow.connectors.errors import ObsflowError
from obsflow.connectors.schema import TIME_UNITS
from obsflow.connectors.store import DEFAULT_STORE
from obsflow.flows import commands, show


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
    sp = sub.add_parser(
        "ingest",
        help="ingest files or a sim:// URL into a capture",
        description="Input files are long format: columns source, time, value and optionally "
        "channel and seq (--map names other columns), or wide: source, time and one numeric "
        "column per channel. CSV may be comma-, semicolon-, tab- or bar-delimited.",
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
        "--partitions", type=int, help="capture partitions, fixed at creation (default 4)"
    )
    sp.add_argument("--workers", type=int, default=1, help="worker threads (default 1)")
    sp.add_argument(
        "--views",
        metavar="FILE",
        help="TOML view definitions (default: per-minute stats of every series)",
    )
    _lateness(sp)
    sp.add_argument("--batch-rows", type=int, default=65_536, help=argparse.SUPPRESS)
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
    sp.add_argument(
        "--dedup-horizon",
        default="10m",
        help="how long (event time) identities are remembered (default 10m); 0 turns dedup off",
    )
    _recovery(sp)
    sp.set_defaults(func=commands.cmd_ingest)


def _replay(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sp = sub.add_parser("replay", help="rebuild views from a capture (full speed or paced)")
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
    sp.add_argument(
        "--speed",
        default="max",
        help="max (default) or X times the original event-time rate (1 = real time)",
    )
    sp.add_argument("--workers", type=int, default=1, help="worker threads per process")
    sp.add_argument(
        "--processes", type=int, default=1, help="run as a Bytewax cluster of N local processes"
    )
    _run_output(sp)
    _recovery(sp)
    sp.set_defaults(func=commands.cmd_replay)


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

    sp = sub.add_parser("simulate", help="write simulated instrument readings to a file")
    sp.add_argument("out", metavar="OUT", help="output file: .parquet, .csv or .jsonl")
    sp.add_argument("--sources", type=int, default=4, help="instruments (default 4)")
    sp.add_argument(
        "--channels",
        default="temperature,pressure",
        help="scalar channels (default temperature,pressure)",
    )
    sp.add_argument("--rate", type=float, default=10.0, help="Hz per channel (default 10)")
    sp.add_argument("--duration", default="60s", help="event time span (default 60s)")
    sp.add_argument("--start", default="2026-01-01T00:00:00Z", help="ISO-8601 start time")
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
    sp.set_defaults(func=commands.cmd_simulate)

    sp = sub.add_parser(
        "views",
        help="list views, show a view's rows, or close its windows",
        description="views close NAME [--source S] [--until T] declares the data complete (up "
        "to T): the open windows it ends become final now.",
    )
    sp.add_argument("action", choices=["list", "show", "close"])
    sp.add_argument("name", nargs="?")
    _store(sp)
    _filters(sp)
    sp.add_argument("--final", action="store_true", help="only final rows (windows closed)")
    sp.add_argument("--limit", type=int, default=50, help="rows to print (0 = all)")
    sp.set_defaults(
        func=lambda a: commands.cmd_close(a) if a.action == "close" else show.cmd_views(a)
    )

    sp = sub.add_parser(
        "capture", help="list captures, describe one, show or export its readings, verify payloads"
    )
    sp.add_argument("action", choices=["list", "info", "show", "verify"])
    sp.add_argument("name", nargs="?")
    _store(sp)
    _filters(sp, "readings")
    sp.add_argument("--limit", type=int, default=50, help="rows to print (0 = all)")
    sp.add_argument("--json", action="store_true", help="info as JSON")
    sp.set_defaults(func=show.cmd_capture)

    sp = sub.add_parser("late", help="late readings: counts by view and run, or rows")
    sp.add_argument("action", choices=["list", "show"])
    sp.add_argument("view", nargs="?")
    _store(sp)
    sp.add_argument("--run", help="only this run")
    sp.add_argument("--limit", type=int, default=50, help="rows to print (0 = all)")
    sp.set_defaults(func=show.cmd_late)

    sp = sub.add_parser("deadletters", help="rejected records: counts by run and reason, or rows")
    sp.add_argument("action", choices=["list", "show"])
    _store(sp)
    sp.add_argument("--run", help="only this run")
    sp.add_argument("--reason", help="only this reason code (bad_id, bad_time, conflict, ...)")
    sp.add_argument("--limit", type=int, default=50, help="rows to print (0 = all)")
    sp.set_defaults(func=show.cmd_deadletters)

    sp = sub.add_parser("payload", help="fetch a payload array by its sha256")
    sp.add_argument("action", choices=["get"])
    sp.add_argument("sha256")
    _store(sp)
    sp.add_argument("--capture", help="capture to look the reference up in (default: all)")
    sp.add_argument("-o", "--out", required=True, help="output .npy file")
    sp.set_defaults(func=show.cmd_payload)

    sp = sub.add_parser("demo", help="simulate instruments and ingest them into ./data/store")
    _store(sp)
    sp.add_argument("--duration", default="60s", help="event time simulated (default 60s)")
    sp.add_argument("--workers", type=int, default=1, help="worker threads (default 1)")
    sp.set_defaults(func=commands.cmd_demo)

    sp = sub.add_parser("store", help="store maintenance: migrate a store to the current layout")
    sp.add_argument("action", choices=["migrate"])
    _store(sp)
    sp.set_defaults(func=commands.cmd_store)
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
