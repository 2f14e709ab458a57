"""Everyday paths, second round (issue 31), the rest of item 12: one views file for several
captures, ``replay --as`` over several views, payload input without a ``value`` column, and the
Explorer's ``payload(row)`` of a frame read without payloads. Run as a user runs them; each
failed before its fix (the finding is in its docstring)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from obsflow.connectors.payloads.format import PayloadRefError
from obsflow.flows.explore.explorer import Explorer
from tests.cli.test_everyday_letters import FIX, obsflow, station_file
from tests.cli.test_everyday_paths import one_line

pytestmark = pytest.mark.integration  # child processes (tests/conftest.py)

PER_CAPTURE = '[[view]]\nname = "{capture}_hourly"\nsize = "1h"\naggregates = ["count", "mean"]\n'


def test_one_views_file_serves_two_captures(tmp_path: Path) -> None:
    """Item 12: view names are global to a store, so one views file could not serve two
    captures (the second was refused, with no way out but a second file). A name may hold
    ``{capture}``; a name taken by another capture's view says so."""
    store = tmp_path / "store"
    views = tmp_path / "views.toml"
    views.write_text(PER_CAPTURE)
    files = {
        "alpha": station_file(tmp_path / "alpha.csv", ["a0", "a1"], 59, 1.0),
        "beta": station_file(tmp_path / "beta.csv", ["b0"], 45, 7.0),
    }
    for capture, data in files.items():
        done = obsflow(
            "ingest", str(data), "--capture", capture, *FIX, "--views", str(views),
            "--store", str(store),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"view {capture}_hourly:" in done.stderr
    for capture, data in files.items():
        frame = pd.read_csv(data)
        want = frame.groupby("station")["temp_c"].agg(["count", "mean"]).sort_index()
        got = pl.read_delta(str(store / "views" / f"{capture}_hourly")).sort("source").to_pandas()
        assert got["source"].tolist() == want.index.tolist()
        assert got["count"].tolist() == want["count"].tolist()
        assert np.allclose(got["mean"], want["mean"], rtol=0, atol=1e-9)
    # A name without {capture}, already another capture's view: refused, saying how.
    fixed = tmp_path / "fixed.toml"
    fixed.write_text(PER_CAPTURE.replace("{capture}_hourly", "alpha_hourly"))
    gamma = station_file(tmp_path / "gamma.csv", ["g0"], 5, 3.0)
    refused = obsflow(
        "ingest", str(gamma), "--capture", "gamma", *FIX, "--views", str(fixed),
        "--store", str(store),
    )  # fmt: skip
    assert refused.returncode == 2
    assert "names its views with {capture}" in one_line(refused.stderr)


def test_replay_as_over_two_views_says_how_to_pick_one(tmp_path: Path) -> None:
    """Item 12: ``replay --as`` with two views replayed said only that it names one view."""
    store = tmp_path / "store"
    data = station_file(tmp_path / "wx.csv", ["w0"], 30, 1.0)
    assert obsflow("ingest", str(data), *FIX, "--store", str(store), "-q").returncode == 0
    views = tmp_path / "two.toml"
    views.write_text(
        PER_CAPTURE + '[[view]]\nname = "{capture}_10m"\nsize = "10m"\naggregates = ["max"]\n'
    )
    done = obsflow(
        "replay", "--capture", "default", "--views", str(views), "--as", "trial",
        "--store", str(store),
    )  # fmt: skip
    assert done.returncode == 2
    assert one_line(done.stderr) == (
        "obsflow: error: --as names one view, but 2 are replayed (default_hourly, default_10m): "
        "give --views a file holding only the one to slice"
    )


def test_payload_input_needs_no_value_column_and_the_explorer_says_how_to_get_payloads(
    tmp_path: Path,
) -> None:
    """Item 12: input whose readings are arrays (a ``payload`` column) and no ``value`` was
    refused record by record (missing_field); ``payload(row)`` of a frame read without
    ``payloads=True`` said only "no payload"."""
    rng = np.random.default_rng(3)
    arrays = [rng.normal(size=16).round(6).tolist() for _ in range(12)]
    lines = [
        {"source": "det1", "time": f"2026-01-01T00:00:{i:02d}Z", "channel": "trace", "payload": a}
        for i, a in enumerate(arrays)
    ]
    data = tmp_path / "frames.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    store = tmp_path / "store"
    done = obsflow("ingest", str(data), "--store", str(store))
    assert done.returncode == 0, done.stderr
    assert "12 input = 12 accepted + 0 rejected + 0 duplicates" in done.stderr
    ex = Explorer(str(store))
    plain = ex.capture("default")
    with pytest.raises(PayloadRefError, match="read the frame with payloads=True"):
        ex.payload(plain.iloc[0])
    full = ex.capture("default", payloads=True).sort_values("time")
    got = [ex.payload(row).tolist() for _, row in full.iterrows()]
    assert got == arrays
