"""``obsflow lineage``: the readings, runs and inputs behind one view row
(``show.cmd_lineage``)."""

from __future__ import annotations

from obsflow.flows.cli.options import Help, Subparsers, add_limit, command, lazy

HELP = {
    "lineage": Help(
        "the readings, runs and inputs behind one view row",
        """\
  obsflow lineage demo_10s --source sim-000 --channel temperature --at 2026-01-01T00:00:30Z
  obsflow lineage buoy_daily --source b01 --channel sst --at 2016-03-02 -o behind.csv""",
        description="the readings, runs and inputs behind one view row\n\n"
        "The row of SOURCE/CHANNEL whose window starts at TIME (or holds it); then the capture's\n"
        "readings it summarizes (its window and seq range, less the view's late readings), the\n"
        "runs that captured them, their inputs, and the view definition and its hash.",
    ),
}


def add_parser(sub: Subparsers) -> None:
    sp = command(sub, "lineage", HELP["lineage"], lazy("show", "cmd_lineage"))
    sp.add_argument("name", metavar="VIEW", help="the view")
    sp.add_argument("--source", required=True, help="the row's source")
    sp.add_argument("--channel", required=True, help="the row's channel")
    sp.add_argument("--at", required=True, metavar="TIME", help="the window's start (ISO 8601)")
    sp.add_argument("-o", "--out", metavar="FILE", help="write the readings to FILE")
    add_limit(sp)
