"""``obsflow demo``: simulated instruments ingested into a store (``commands.cmd_demo``)."""

from __future__ import annotations

from obsflow.flows.cli.options import Help, Subparsers, command, lazy

HELP = {
    "demo": Help(
        "simulate instruments and ingest them into ./data/store",
        """\
  obsflow demo
  obsflow demo --store /tmp/demo --duration 10m --workers 2""",
    ),
}


def add_parser(sub: Subparsers) -> None:
    sp = command(sub, "demo", HELP["demo"], lazy("commands", "cmd_demo"))
    sp.add_argument("--duration", default="60s", help="event time simulated (default 60s)")
    sp.add_argument("--workers", type=int, default=1, help="worker threads (default 1)")
