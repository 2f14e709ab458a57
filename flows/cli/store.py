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
    # (one action so far: a store's upkeep lives with the captures and views it keeps)
    group(sub, "store", HELP["store"]).action(
        "migrate",
        "convert a store of an earlier layout (the lease and commit log of layouts 1 and 2) "
        "to the current one (Delta tables)",
        lazy("commands", "cmd_store"),
    )
