"""``obsflow serve``: the read-only web app (``commands.cmd_serve``)."""

from __future__ import annotations

from obsflow.flows.cli.options import Help, Subparsers, command, lazy

HELP = {
    "serve": Help(
        "watch views live in a browser (a read-only web app and API)",
        """\
  obsflow serve --store data/store  (then open http://127.0.0.1:8000)
  obsflow serve --host 0.0.0.0 --token-file ~/.obsflow-token  (reachable by others: a token)""",
    ),
}


def add_parser(sub: Subparsers) -> None:
    sp = command(sub, "serve", HELP["serve"], lazy("commands", "cmd_serve"))
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sp.add_argument(
        "--token-file",
        metavar="FILE",
        help="file whose first line is the access token (else OBSFLOW_SERVE_TOKEN); required "
        "to bind anything but a loopback address",
    )
    sp.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let pages of this origin read the API (repeatable; default: none)",
    )
    sp.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="answer requests sent to this host name too (repeatable; default: addresses, "
        "localhost and, beyond loopback, the machine's own names)",
    )
    sp.add_argument(
        "--poll",
        type=float,
        default=0.5,
        help="seconds between looks for new commits (default 0.5)",
    )
