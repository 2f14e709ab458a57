"""``obsflow views``: list views, show or export a view's rows (``show.cmd_views``), close
its windows (``commands.cmd_close``)."""

from __future__ import annotations

from obsflow.flows.cli.options import Help, Subparsers, add_rows, group, lazy

HELP = {
    "views": Help(
        "list views, show or export a view's rows, close its windows",
        """\
  obsflow views list
  obsflow views show buoy_1m --source b01 --from 2026-01-01 --limit 20
  obsflow views show buoy_1m --final -o buoy_1m.csv
  obsflow views close buoy_1m --until 2026-01-02     (the data is complete up to then)
  obsflow views drop buoy_1m                         (asks for the name again, or --yes)""",
    ),
}


def add_parser(sub: Subparsers) -> None:
    views = group(sub, "views", HELP["views"])
    views.action(
        "list",
        "the store's views: rows, open windows, last update",
        lazy("show", "cmd_views"),
    )
    ap = views.action(
        "show",
        "a view's rows (or -o FILE: all of them, to a file)",
        lazy("show", "cmd_views"),
        named="the view",
    )
    add_rows(ap, "the view")
    ap.add_argument("--final", action="store_true", help="only final rows (windows closed)")
    ap = views.action(
        "close",
        "declare the data complete: the view's open windows (of --source, or up to --until) "
        "become final now",
        lazy("commands", "cmd_close"),
        named="the view",
    )
    ap.add_argument("--source", action="append", help="only this source's windows (repeatable)")
    ap.add_argument("--until", metavar="TIME", help="only windows ending at or before TIME")
    ap = views.action(
        "drop",
        "take a view away (its capture's runs stop building it), in one commit; time travel "
        "reads it until a vacuum (capture compact)",
        lazy("commands", "cmd_drop"),
        named="the view",
    )
    ap.add_argument("--yes", action="store_true", help="do not ask for the name again")
