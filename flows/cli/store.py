"""``obsflow store``: store maintenance (``commands.cmd_store``)."""

from __future__ import annotations

from obsflow.flows.cli.options import Subparsers, group, lazy

EXAMPLES = {
    "store": """\
  obsflow store migrate --store s3://bucket/obs""",
}


def add_parser(sub: Subparsers) -> None:
    store = group(sub, "store", "store maintenance", EXAMPLES["store"])
    store.action(
        "migrate",
        "convert a store written before layout 2 to the current layout",
        lazy("commands", "cmd_store"),
    )
