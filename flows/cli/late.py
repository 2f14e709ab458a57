"""``obsflow late``: late readings, counted or shown (``show.cmd_late``)."""

from __future__ import annotations

from obsflow.flows.cli.options import Help, Subparsers, add_limit, group, lazy

HELP = {
    "late": Help(
        "late readings: counts by view and run, or the readings",
        """\
  obsflow late list
  obsflow late show buoy_1m --limit 10""",
    ),
}


def add_parser(sub: Subparsers) -> None:
    late = group(sub, "late", HELP["late"])
    late.action("list", "late readings counted by view and run", lazy("show", "cmd_late"))
    ap = late.action("show", "the late readings of one view", lazy("show", "cmd_late"))
    ap.add_argument("view", metavar="VIEW", help="the view")
    ap.add_argument("--run", help="only this run")
    add_limit(ap)
