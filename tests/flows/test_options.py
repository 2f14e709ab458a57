"""One home for an ingest's options (issue 29, must-show 3): ``obsflow ingest`` and
``Explorer.ingest`` take the same options, with the same defaults, both from the fields of
``IngestOptions``; and the same options give the same run."""

from __future__ import annotations

import inspect
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from obsflow.flows.cli.commands import ingest_config
from obsflow.flows.cli.main import parser
from obsflow.flows.explore import Explorer, open_store
from obsflow.flows.pipeline.options import DEFAULTS, IngestOptions

OPTIONS = [f.name for f in fields(IngestOptions)]


def test_the_explorer_takes_every_option_with_its_default() -> None:
    params = inspect.signature(Explorer.ingest).parameters
    taken = [p for p in params if p not in ("self", "inputs", "workers", "force")]
    assert taken == OPTIONS
    for name in OPTIONS:
        assert params[name].default == getattr(DEFAULTS, name), name
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_the_command_takes_every_option_with_its_default() -> None:
    args = parser().parse_args(["ingest", "x.csv"])
    for name in OPTIONS:
        assert hasattr(args, name), f"obsflow ingest has no option for {name}"
        given = getattr(args, name)
        # (an option the command leaves None takes IngestOptions' default: checked below)
        assert given is None or given == getattr(DEFAULTS, name), name
    a = ingest_config(args, ("x.csv",))
    b = DEFAULTS.config(["x.csv"], args.store, progress=True)
    assert replace(a, run_id="r") == replace(b, run_id="r")


@pytest.mark.parametrize(
    ("argv", "options"),
    [
        (
            ["--capture", "wx", "--lateness", "5m", "--dedup-horizon", "0", "--time-unit", "s"],
            {"capture": "wx", "lateness": "5m", "dedup_horizon": "0", "time_unit": "s"},
        ),
        (
            ["--inline-limit", "10", "--features", "mean,max", "--partitions", "2"],
            {"inline_limit": 10, "features": ["mean", "max"], "partitions": 2},
        ),
        (
            ["--format", "bluesky", "--root-map", "/a=/b", "--external-root", "/b"],
            {"format": "bluesky", "root_map": {"/a": "/b"}, "external_roots": ["/b"]},
        ),
        (
            ["--map", "source=s,time=t", "--channels", "x,y", "--delimiter", ";"],
            {"map": "source=s,time=t", "channels": "x,y", "delimiter": ";"},
        ),
    ],
)
def test_the_same_options_give_the_same_run(argv: list[str], options: dict[str, Any]) -> None:
    args = parser().parse_args(["ingest", "x.csv", *argv])
    from_cli = ingest_config(args, ("x.csv",))
    from_python = IngestOptions(**options).config(["x.csv"], args.store, progress=True)
    assert replace(from_cli, run_id="r") == replace(from_python, run_id="r")


def test_lateness_and_inline_limit_reach_the_run_from_the_explorer(tmp_path: Path) -> None:
    """Options the Explorer once lacked: a 0 s lateness makes every closed window final at
    once, and a tiny inline limit is accepted the same way."""
    csv = tmp_path / "in.csv"
    t = pd.date_range("2026-01-01", periods=120, freq="1s", tz="UTC")
    pd.DataFrame({"source": "s", "time": t, "value": range(120)}).to_csv(csv, index=False)
    ex = open_store(str(tmp_path / "store"))
    summary = ex.ingest(str(csv), capture="c", lateness="0s", inline_limit=1)
    assert summary["accepted"] == 120
    rows = ex.view("c_1m")
    assert rows["count"].sum() == 120
    assert rows["final"].tolist() == [True, False]  # the last minute's window is still open
