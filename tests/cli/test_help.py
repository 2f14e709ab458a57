"""Every command explains itself: examples that parse, every option with help text, and the
default of every option that has one (issue 12, finding 11)."""

from __future__ import annotations

import argparse
import shlex

import pytest

from obsflow.flows.cli.main import COMMAND_EXAMPLES, parser


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
