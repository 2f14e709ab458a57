"""``obsflow deadletters``: rejected records, counted or shown (``show.cmd_deadletters``), and
ingested again (``commands.cmd_deadletters_retry``); each capture's are those its runs
rejected."""

from __future__ import annotations

from obsflow.flows.cli.options import Help, Subparsers, add_limit, group, lazy

HELP = {
    "deadletters": Help(
        "rejected records: counts by run and reason, or the records",
        """\
  obsflow deadletters list
  obsflow deadletters show --capture wx --reason bad_time --limit 10
  obsflow deadletters retry --capture wx --reason missing_field --map source=station,value=temp_c
  obsflow deadletters list --all                     (the resolved ones too)""",
    ),
}


def add_parser(sub: Subparsers) -> None:
    dead = group(sub, "deadletters", HELP["deadletters"])
    for name, summary in (
        ("list", "dead letters counted by run and reason"),
        ("show", "the rejected records: origin, row, reason, message, raw text"),
    ):
        ap = dead.action(name, summary, lazy("show", "cmd_deadletters"))
        ap.add_argument("--capture", help="only this capture's (those its runs rejected)")
        ap.add_argument("--run", help="only this run")
        ap.add_argument(
            "--reason", help="only this reason code (missing_field, bad_time, conflict, ...)"
        )
        ap.add_argument(
            "--all", action="store_true", help="those a retry captured too (resolved_by)"
        )
        if name == "show":
            add_limit(ap)
    ap = dead.action(
        "retry",
        "ingest the open dead letters again, after fixing --map or --time-unit; those it "
        "captures are marked resolved (never deleted)",
        lazy("commands", "cmd_deadletters_retry"),
    )
    ap.add_argument(
        "--capture",
        required=True,
        help="the capture whose dead letters (those its runs rejected) to ingest into it",
    )
    ap.add_argument("--run", help="only the dead letters of this run (of that capture)")
    ap.add_argument("--reason", help="only those of this reason code (missing_field, ...)")
    ap.add_argument("--map", action="append", help="field=column pairs, as for ingest")
    ap.add_argument("--time-unit", default=None, help="unit of epoch times, as for ingest")
    ap.add_argument("--channels", help="columns of a wide record that are channels, as for ingest")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only errors")
