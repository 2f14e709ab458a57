"""What the ``obsflow`` sub-command modules share: how a command, a group of actions and an
action are made (each --help ends with its examples), the options several commands take, and
``lazy``, which imports a command's handler only when it runs."""

from __future__ import annotations

import argparse
import importlib
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

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


def command(
    sub: Subparsers, name: str, help: Help, run: Handler | None = None
) -> argparse.ArgumentParser:
    """A sub-command whose --help ends with its examples; with ``run`` (its handler), one
    that works on a store: it takes --store."""
    sp: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help.summary,
        description=help.description or help.summary,
        epilog="examples:\n" + help.examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if run is not None:
        add_store(sp)
        sp.set_defaults(func=run)
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
        sp = command(self.actions, name, Help(summary, "\n".join(mine)), func)
        if named is not None:
            sp.add_argument("name", metavar="NAME", help=named)
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


_ENTRY = re.compile(r"^(?P<flag>-\S+)(?: (?P<metavar>[A-Z][A-Z0-9_:=,.|;-]*))?\s{2,}(?P<help>.+)$")
LISTINGS: list[Listing] = []  # every listing made (a test holds each to the parser)


class Listing(dict[str, tuple[str | None, str]]):
    """Options written as ``--help`` prints them: a line per option (its flag, its METAVAR if
    it takes a value, two spaces or more, its help), indented lines continuing the help.
    ``on(parser_or_group)`` then adds them by flag, so that each option's declaration
    is one line naming only its parsing (type, default, action)."""

    def __init__(self, text: str, title: str | None = None) -> None:
        super().__init__()
        self.title = title  # (a titled listing's options form a group of their own)
        flag = None
        for line in textwrap.dedent(text).strip("\n").splitlines():
            if flag is not None and line[:1].isspace():
                metavar, helped = self[flag]
                self[flag] = metavar, f"{helped} {line.strip()}"
                continue
            entry = _ENTRY.match(line)
            if entry is None:
                raise ValueError(f"not an option listing line: {line!r}")
            flag = entry["flag"]
            self[flag] = entry["metavar"], entry["help"].strip()
        LISTINGS.append(self)

    def on(self, target: argparse._ActionsContainer) -> Callable[..., None]:
        """``add(*flags, **parsing)``: add one listed option (its last flag names it)."""
        if self.title is not None:
            target = target.add_argument_group(self.title)

        def add(*flags: str, **parsing: Any) -> None:
            metavar, text = self[flags[-1]]
            if metavar is not None and parsing.get("action") not in ("store_true", "count"):
                parsing.setdefault("metavar", metavar)
            target.add_argument(*flags, help=text, **parsing)

        return add


COMMON = Listing(
    f"""
    --limit N             rows to print (default 50; 0 = all)
    --store URL           store URL: a folder, s3://bucket/prefix or memory:// (default
                          {DEFAULT_STORE})
    --recovery DIR        local recovery directory: snapshots state; rerun the same command to
                          resume after a crash
    --snapshot-interval SECONDS  seconds between recovery snapshots (default 10)
    --workers N           worker threads per process (default 1)
    --processes N         run as a Bytewax cluster of N processes on this host (default 1)
    --addresses HOST:PORT;...  run as one process of a cluster across hosts: every process gets
                          the same list (one host:port each, in process order), its own
                          --process-id and the same --run-id
    --process-id N        this process's index in --addresses
    --run-id ID           the run's id, the same for every process of a cluster
    --summary FILE        also write the JSON run summary here
    --quiet               no progress or summary lines
    --out FILE            write every matching row to FILE (.parquet, .csv or .jsonl) instead
                          of printing
    --lateness DURATION   the views' lateness (e.g. 5m): how far behind a series' latest
                          reading a window stays open; part of their definition, so a replay
                          rebuilds its views with it and later runs keep it
    """
)


def add_limit(sp: argparse.ArgumentParser) -> None:
    COMMON.on(sp)("--limit", type=int, default=50)


def add_store(sp: argparse.ArgumentParser) -> None:
    COMMON.on(sp)("--store", default=DEFAULT_STORE)


def add_recovery(sp: argparse.ArgumentParser) -> None:
    add = COMMON.on(sp)
    add("--recovery")
    add("--snapshot-interval", type=float, default=10.0)


def add_parallel(sp: argparse.ArgumentParser) -> None:
    add = COMMON.on(sp)
    add("--workers", type=int, default=1)
    add("--processes", type=int, default=1)
    add("--addresses")
    add("--process-id", type=int)
    add("--run-id")


def add_run_output(sp: argparse.ArgumentParser) -> None:
    add = COMMON.on(sp)
    add("--summary")
    add("-q", "--quiet", action="store_true")


def add_lateness(sp: argparse.ArgumentParser) -> None:
    COMMON.on(sp)("--lateness")


def add_as_of(sp: argparse.ArgumentParser, what: str = "the store") -> None:
    sp.add_argument(
        "--as-of",
        metavar="N|TIME",
        help=f"{what} as it was: after the capture's commit N (the number a run summary "
        "gives), or at TIME (ISO 8601, UTC); time travel reaches back as far as the retention "
        "of `capture compact` (default 7 days)",
    )


def add_rows(sp: argparse.ArgumentParser, of: str, what: str = "windows starting") -> None:
    """A ``show`` action's options: which rows (``what`` the time filters select) of ``of``
    (a view, a capture) as of when, and where they go."""
    sp.add_argument("--source", action="append", help="only this source (repeatable)")
    sp.add_argument("--channel", action="append", help="only this channel (repeatable)")
    sp.add_argument("--from", dest="start", metavar="TIME", help=f"{what} at or after")
    sp.add_argument("--until", metavar="TIME", help=f"{what} before")
    add_as_of(sp, of)
    COMMON.on(sp)("-o", "--out")
    add_limit(sp)
