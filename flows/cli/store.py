"""``obsflow store``: store maintenance (``commands.cmd_store``)."""

from __future__ import annotations

from obsflow.flows.cli.options import Help, Subparsers, group, lazy

HELP = {
    "store": Help(
        "store maintenance",
        """\
  obsflow store migrate --store s3://bucket/obs""",
    ),
}


def add_parser(sub: Subparsers) -> None:
    store = group(sub, "store", HELP["store"])
    store.action(
        "migrate",
        "convert a store written before layout 2 to the current layout",
        lazy("commands", "cmd_store"),
    )
