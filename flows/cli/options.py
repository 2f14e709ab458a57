"""What the ``obsflow`` sub-command modules share: how a command, a group of actions and an
action are made (each --help ends with its examples), the options several commands take, and
``lazy``, which imports a command's handler only when it runs."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from obsflow.connectors.storage.store import DEFAULT_STORE

Handler = Callable[[argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


@dataclass(frozen=True)
class Help:
    """What a command's --help says: a one-line summary (also listed by its parent's --help),
    examples (``obsflow ...`` lines, each may end with a ``(comment)``), and a longer
    description when the summary is not enough."""

    summary: str
    examples: str
    description: str | None = None


def command(sub: Subparsers, name: str, help: Help) -> argparse.ArgumentParser:
    """A sub-command whose --help ends with its examples."""
    sp: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help.summary,
        description=help.description or help.summary,
        epilog="examples:\n" + help.examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return sp


@dataclass(frozen=True)
class Group:
    """A sub-command with actions of its own (``views list``, ``views show NAME``, ...)."""

    name: str
    examples: str
    actions: Subparsers

    def action(
        self, name: str, summary: str, func: Handler, named: str | None = None
    ) -> argparse.ArgumentParser:
        """One action, with --store, and the group's examples of this action; ``named``: it
        takes the NAME of what it acts on (``named`` is NAME's help)."""
        mine = [
            line
            for line in self.examples.splitlines()
            if line.split()[:3] == ["obsflow", self.name, name]
        ]
        sp = command(self.actions, name, Help(summary, "\n".join(mine)))
        add_store(sp)
        if named is not None:
            sp.add_argument("name", metavar="NAME", help=named)
        sp.set_defaults(func=func)
        return sp


def group(sub: Subparsers, name: str, help: Help) -> Group:
    sp = command(sub, name, help)
    actions = sp.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="one of these; ACTION --help for more"
    )
    return Group(name, help.examples, actions)


def lazy(module: str, name: str) -> Handler:
    """A command of ``obsflow.flows.cli.<module>``, imported when it runs: ``obsflow ingest`` then
    loads what ingesting needs, not pandas and the readers of every other command."""

    def handler(args: argparse.Namespace) -> int:
        func: Handler = getattr(importlib.import_module(f"obsflow.flows.cli.{module}"), name)
        return func(args)

    return handler


def add_limit(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--limit", type=int, default=50, help="rows to print (default 50; 0 = all)")


def add_store(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--store",
        default=DEFAULT_STORE,
        help=f"store URL: a folder, s3://bucket/prefix or memory:// (default {DEFAULT_STORE})",
    )


def add_recovery(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--recovery",
        metavar="DIR",
        help="local recovery directory: snapshots state; rerun the same command to "
        "resume after a crash",
    )
    sp.add_argument(
        "--snapshot-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between recovery snapshots (default 10)",
    )


def add_parallel(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--workers", type=int, default=1, help="worker threads per process (default 1)")
    sp.add_argument(
        "--processes",
        type=int,
        default=1,
        help="run as a Bytewax cluster of N processes on this host (default 1)",
    )
    sp.add_argument(
        "--addresses",
        metavar="HOST:PORT;...",
        help="run as one process of a cluster across hosts: every process gets the same list "
        "(one host:port each, in process order), its own --process-id and the same --run-id",
    )
    sp.add_argument("--process-id", type=int, help="this process's index in --addresses")
    sp.add_argument("--run-id", help="the run's id, the same for every process of a cluster")


def add_run_output(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--summary", metavar="FILE", help="also write the JSON run summary here")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress or summary lines")


def add_lateness(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--lateness",
        metavar="DURATION",
        help="override the views' lateness (e.g. 5m): how far behind a series' latest "
        "reading a window stays open",
    )


def add_as_of(sp: argparse.ArgumentParser, what: str = "the store") -> None:
    sp.add_argument(
        "--as-of",
        metavar="N|TIME",
        help=f"{what} as it was: after the capture's commit N (the number a run summary "
        "gives), or at TIME (ISO 8601, UTC); time travel reaches back as far as the retention "
        "of `capture compact` (default 7 days)",
    )


def add_filters(sp: argparse.ArgumentParser, what: str = "windows starting") -> None:
    sp.add_argument("--source", action="append", help="only this source (repeatable)")
    sp.add_argument("--channel", action="append", help="only this channel (repeatable)")
    sp.add_argument("--from", dest="start", metavar="TIME", help=f"{what} at or after")
    sp.add_argument("--until", metavar="TIME", help=f"{what} before")
    sp.add_argument(
        "-o",
        "--out",
        metavar="FILE",
        help="write every matching row to FILE (.parquet, .csv or .jsonl) instead of printing",
    )
