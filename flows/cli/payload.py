"""``obsflow payload get``: one payload array by its sha256 (``show.cmd_payload``)."""

from __future__ import annotations

from obsflow.flows.cli.options import Help, Subparsers, group, lazy

HELP = {
    "payload": Help(
        "fetch a payload array by its sha256",
        """\
  obsflow payload get 3f9a...e1 -o frame.npy""",
    ),
}


def add_parser(sub: Subparsers) -> None:
    payload = group(sub, "payload", HELP["payload"])
    ap = payload.action(
        "get", "write one payload array to a .npy file", lazy("show", "cmd_payload")
    )
    ap.add_argument("sha256", help="the payload's sha256 (payload_sha256 in the capture)")
    ap.add_argument("--capture", help="capture to look the reference up in (default: all)")
    ap.add_argument("-o", "--out", required=True, help="output .npy file")
