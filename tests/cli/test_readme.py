"""The README's Quick start session runs as printed (issue 12, must-show 4): each ``$``
command of its ``console`` block runs in a fresh folder holding the repository's sample data,
and its output (stdout and stderr, in terminal order) matches the block, ``...`` standing for
run ids, timings and paths. Then the Store layout's Python session (other readers of the
tables) runs as a doctest on the store the session made."""

from __future__ import annotations

import doctest
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # servers, brokers, child processes (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
OBSFLOW = str(Path(sys.executable).parent / "obsflow")
# Progress lines appear only when a run takes longer than their interval: timing, not content.
PROGRESS = re.compile(r"^\[(ingest|replay)\] .*\n", flags=re.M)


def quick_start() -> list[tuple[str, str]]:
    """(command, expected output) pairs of the Quick start's console block."""
    section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ")[0]
    (block,) = re.findall(r"```console\n(.*?)```", section, flags=re.S)
    steps = re.split(r"^\$ ", block, flags=re.M)[1:]
    return [(s.split("\n", 1)[0], s.split("\n", 1)[1]) for s in steps]


def make_demo_command() -> str:
    """What ``make demo`` runs once the environment exists (the Makefile's recipe)."""
    recipe = (ROOT / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n")[1]
    return recipe.strip().replace("$(BIN)/obsflow", OBSFLOW)


def store_layout_session() -> str:
    """The ``pycon`` block of the README's Store layout section."""
    section = (ROOT / "README.md").read_text().split("## Store layout", 1)[1].split("\n## ")[0]
    (block,) = re.findall(r"```pycon\n(.*?)```", section, flags=re.S)
    return str(block)


def test_the_quick_start_runs_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = quick_start()
    assert [c.split()[0] for c, _ in steps[:2]] == ["make", ".venv/bin/obsflow"]
    assert len(steps) >= 5
    (tmp_path / "data").mkdir()
    shutil.copy(ROOT / "data" / "buoy_sst.parquet", tmp_path / "data")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # stdout and stderr in terminal order
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    for command, expected in steps:
        line = make_demo_command() if command == "make demo" else command
        argv = [OBSFLOW if w == ".venv/bin/obsflow" else w for w in shlex.split(line)]
        if command == "make demo":
            expected = expected.removeprefix("...\n")  # pip's output on a fresh machine
        done = subprocess.run(
            argv,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
            check=False,
        )
        got = PROGRESS.sub("", done.stdout)
        assert done.returncode == 0, got
        assert checker.check_output(expected, got, flags), (
            f"$ {command}\n--- README\n{expected}\n--- got\n{got}"
        )
    monkeypatch.chdir(tmp_path)
    test = doctest.DocTestParser().get_doctest(store_layout_session(), {}, "README", None, 0)
    runner = doctest.DocTestRunner(optionflags=flags)
    runner.run(test)
    assert runner.summarize(verbose=False).attempted >= 5
    assert runner.summarize(verbose=False).failed == 0
