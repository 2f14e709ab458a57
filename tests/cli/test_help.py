"""Every command explains itself: examples that parse, every option with help text, and the
default of every option that has one (issue 12, finding 11)."""

from __future__ import annotations

import argparse
import shlex

import pytest

from obsflow.flows.cli.main import COMMAND_EXAMPLES, parser
from obsflow.flows.cli.options import LISTINGS, Listing


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every (sub-)command's parser by its name: ``ingest``, ``views show``, ..."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(p: argparse.ArgumentParser, name: str) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        for action in subs:
            for sub_name, sub in action.choices.items():
                walk(sub, f"{name} {sub_name}".strip())
        if name:
            found[name] = p

    walk(parser(), "")
    return found


def test_every_command_is_found() -> None:
    names = set(commands())
    assert {"ingest", "replay", "simulate", "demo", "views show", "views close"} <= names
    assert {"capture info", "late show", "deadletters list", "payload get", "store migrate"} <= (
        names
    )


@pytest.mark.parametrize("name", sorted(commands()))
def test_help_has_examples_and_explains_every_option(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    p = commands()[name]
    with pytest.raises(SystemExit) as exit_:
        p.parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    examples = text.split("\nexamples:\n", 1)[1].strip().splitlines()
    assert examples, name
    for line in examples:
        assert line.strip().startswith(f"obsflow {name.split()[0]}"), line

    for action in p._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"{name}: {action.dest} has no help"
        shown = action.default not in (None, False) and not isinstance(
            action, argparse._SubParsersAction
        )
        if shown:
            assert "default" in action.help, f"{name}: {action.dest} hides its default"


@pytest.mark.parametrize(
    "line",
    [line for block in COMMAND_EXAMPLES.values() for line in block.splitlines()],
)
def test_every_example_is_a_valid_command(line: str) -> None:
    words = shlex.split(line.split("  (")[0])  # drop a trailing "(comment)"
    assert words[0] == "obsflow"
    args = parser().parse_args(words[1:])  # exits (fails the test) on a bad example
    assert callable(args.func)


def test_every_listed_option_is_an_option_of_some_command() -> None:
    """An option's help written in a ``Listing`` and never added (a typo in its flag, an
    option removed) would be dead text: each listed flag is on a parser."""
    flags = {flag for p in commands().values() for a in p._actions for flag in a.option_strings}
    assert LISTINGS  # (the command modules made theirs when the parser was built)
    unused = {flag for listing in LISTINGS for flag in listing} - flags
    assert not unused


def test_a_listing_reads_flags_metavars_and_continued_help() -> None:
    listing = Listing(
        """
        --to URL              publish to a broker
                              instead
        --quiet               no output
        --payload NAME:SHAPE:DTYPE  arrays
        """
    )
    LISTINGS.remove(listing)  # (not one of the CLI's)
    assert listing == {
        "--to": ("URL", "publish to a broker instead"),
        "--quiet": (None, "no output"),
        "--payload": ("NAME:SHAPE:DTYPE", "arrays"),
    }
    p = argparse.ArgumentParser()
    add = listing.on(p)
    add("--to")
    add("-q", "--quiet", action="store_true")
    assert p.parse_args(["--to", "x", "-q"]) == argparse.Namespace(to="x", quiet=True)
    assert "URL" in p.format_help()
    with pytest.raises(KeyError):
        add("--not-listed")
    with pytest.raises(ValueError, match="not an option listing line"):
        Listing("--to URL only one space between")
