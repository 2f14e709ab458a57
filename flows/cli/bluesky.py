"""``obsflow bluesky``: the Bluesky runs of a capture (``show.cmd_bluesky``) and one exported
(``commands.cmd_bluesky_export``)."""

from __future__ import annotations

from obsflow.flows.cli.options import Help, Subparsers, add_limit, group, lazy

HELP = {
    "bluesky": Help(
        "Bluesky runs held by a capture: list them, export one",
        """\
  obsflow bluesky runs --capture beamline    (after obsflow ingest --format bluesky ...)
  obsflow bluesky export --capture beamline --run 5f1c...e2 -o run.jsonl""",
    ),
}


def add_parser(sub: Subparsers) -> None:
    bluesky = group(sub, "bluesky", HELP["bluesky"])
    ap = bluesky.action(
        "runs",
        "the Bluesky runs of a capture: uid, plan, scan id, start, stop, exit status, events",
        lazy("show", "cmd_bluesky"),
    )
    ap.add_argument("--capture", required=True, help="the capture")
    add_limit(ap)
    ap = bluesky.action(
        "export",
        "one run as event-model documents (JSON lines); its arrays in an HDF5 file beside it",
        lazy("commands", "cmd_bluesky_export"),
    )
    ap.add_argument("--capture", required=True, help="the capture")
    ap.add_argument("--run", required=True, metavar="UID", help="the run's uid (its start's)")
    ap.add_argument(
        "-o", "--out", required=True, metavar="FILE", help="output .jsonl (arrays: beside it, .h5)"
    )
