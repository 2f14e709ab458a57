"""``obsflow capture``: list, describe, show and verify captures (``show.cmd_capture``), compact
and archive one (``commands``)."""

from __future__ import annotations

from obsflow.flows.cli.options import Help, Subparsers, add_as_of, add_rows, group, lazy

HELP = {
    "capture": Help(
        "list captures, describe one, show or export its readings",
        """\
  obsflow capture list
  obsflow capture info buoy
  obsflow capture show buoy --source b01 --channel sst -o b01.parquet
  obsflow capture verify buoy
  obsflow capture compact live
  obsflow capture archive buoy --before 2025-01-01 --to s3://cold-bucket/obs
  obsflow capture drop test1                         (asks for the name again, or --yes)""",
    ),
}


def add_parser(sub: Subparsers) -> None:
    capture = group(sub, "capture", HELP["capture"])
    capture.action("list", "the store's captures", lazy("show", "cmd_capture"))
    ap = capture.action(
        "info",
        "one capture: readings, sources, time span, files, commits",
        lazy("show", "cmd_capture"),
        named="the capture",
    )
    ap.add_argument("--json", action="store_true", help="as JSON")
    add_as_of(ap, "the capture")
    ap = capture.action(
        "show",
        "a capture's readings (or -o FILE: all of them, to a file)",
        lazy("show", "cmd_capture"),
        named="the capture",
    )
    add_rows(ap, "the capture", "readings")
    ap = capture.action(
        "verify",
        "check that every payload reference resolves and matches",
        lazy("show", "cmd_capture"),
        named="the capture",
    )
    ap = capture.action(
        "compact",
        "rewrite the capture's many small files (a live session's) as a few large ones, as "
        "one commit (Delta's optimize: readers and replays see the same readings throughout), "
        "then vacuum what no version of the retention period needs",
        lazy("commands", "cmd_compact"),
        named="the capture",
    )
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
    ap = capture.action(
        "archive",
        "move the capture's files older than a time to another store (cold storage), with a "
        "manifest there; replay reads both, views keep their rows",
        lazy("commands", "cmd_archive"),
        named="the capture",
    )
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
    ap = capture.action(
        "drop",
        "take a capture and its views away, in one commit: no listing or read shows them, "
        "time travel (--as-of) reads them until a vacuum (capture compact); dead letters stay",
        lazy("commands", "cmd_drop"),
        named="the capture",
    )
    ap.add_argument("--yes", action="store_true", help="do not ask for the name again")
