"""Everyday paths of dead letters, replay's ``--lateness`` and ``views list`` (issue 31, items
1, 4, 10 and part of 12), run as a user runs them: ``obsflow`` commands in child processes.
Each test reproduces a finding with the same kind of command and input and asserts what happens
now."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from obsflow.connectors.datasets import reads
from obsflow.connectors.storage.store import Store

pytestmark = pytest.mark.integration  # child processes (tests/conftest.py)

OBSFLOW = str(Path(sys.executable).parent / "obsflow")
FIX = ["--map", "source=station,value=temp_c"]


def obsflow(*argv: str) -> subprocess.CompletedProcess[str]:
    """One ``obsflow`` command as a user types it."""
    return subprocess.run(
        [OBSFLOW, *argv], capture_output=True, text=True, timeout=300, check=False
    )


def station_file(path: Path, stations: list[str], minutes: int, offset: float) -> Path:
    """A logger's CSV that names its columns its own way (station, time, temp_c): ingested
    without ``--map`` every record is a ``missing_field`` dead letter."""
    rows = [
        f"{s},2026-01-01T00:{m:02d}:00Z,{offset + i + m / 10:.2f}"
        for i, s in enumerate(stations)
        for m in range(minutes)
    ]
    path.write_text("station,time,temp_c\n" + "\n".join(rows) + "\n")
    return path


def readings_of(path: Path) -> list[tuple[str, pd.Timestamp, float]]:
    """What a station file holds, read by pandas: (source, time, value), sorted."""
    frame = pd.read_csv(path)
    times = pd.to_datetime(frame["time"], utc=True)
    return sorted(zip(frame["station"], times, frame["temp_c"].round(6), strict=True))


def captured(store: Path, capture: str) -> list[tuple[str, pd.Timestamp, float]]:
    frame = reads.read_capture(Store(str(store)), capture).to_pandas()
    return sorted(zip(frame["source"], frame["time"], frame["value"].round(6), strict=True))


def digests(root: Path, *folders: str) -> dict[str, str]:
    """Every file under ``folders`` of a store and a digest of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted((root / folder).rglob("*"))
        if p.is_file()
    }


def open_by_run(listing: str) -> dict[tuple[str, str], int]:
    """``deadletters list`` output as {(capture, reason): records}, summed over runs."""
    lines = listing.strip().splitlines()
    header = lines[0].split()
    out: dict[tuple[str, str], int] = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(), strict=True))
        out[(row["capture"], row["reason"])] = out.get((row["capture"], row["reason"]), 0) + int(
            row["records"]
        )
    return out


def test_views_list_says_no_lateness_readably(tmp_path: Path) -> None:
    """Item 12 (part): ``views list`` said ``lateness 0ns``."""
    store = tmp_path / "store"
    good = tmp_path / "good.csv"
    good.write_text("source,time,value\na,2026-01-01T00:00:10Z,1\n")
    common = ["--store", str(store), "--capture", "c", "-q"]
    assert obsflow("ingest", str(good), *common).returncode == 0
    assert obsflow("replay", *common, "--lateness", "90s", "--as", "c_90s").returncode == 0
    listed = obsflow("views", "list", "--store", str(store)).stdout.splitlines()
    lateness = {line.split()[0]: line.split("lateness ")[1].split()[0] for line in listed}
    assert lateness == {"c_1m": "0", "c_90s": "90s"}
