"""Everyday paths of dead letters, replay's ``--lateness`` and ``views list`` (issue 31, items
1, 4, 10 and part of 12), run as a user runs them: ``obsflow`` commands in child processes.
Each test reproduces a finding with the same kind of command and input and asserts what happens
now."""

from __future__ import annotations

import hashlib
import json
import re
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


def test_replay_lateness_redefines_the_views_and_says_so(tmp_path: Path) -> None:
    """Item 4: ``replay --lateness 3h`` redefined the view for good (new hash, later ingests
    use 3 h) without a word, while the README said it was for one command. It is the view's
    definition now, and the replay says so; ``--as`` tries a lateness under a new name."""
    store = tmp_path / "store"
    first, late, later = tmp_path / "first.csv", tmp_path / "late.csv", tmp_path / "later.csv"
    first.write_text("source,time,value\na,2026-01-01T00:00:10Z,1\na,2026-01-01T00:05:00Z,2\n")
    late.write_text("source,time,value\na,2026-01-01T00:00:20Z,3\n")  # its minute was final
    later.write_text("source,time,value\na,2026-01-01T00:01:30Z,4\n")  # 3.5 min behind
    common = ["--store", str(store), "--capture", "c"]
    assert obsflow("ingest", str(first), *common, "-q").returncode == 0
    assert obsflow("ingest", str(late), *common, "-q").returncode == 0

    def definition() -> tuple[str, str]:
        """``views list``'s lateness and hash of c_1m."""
        listed = obsflow("views", "list", "--store", str(store)).stdout
        (line,) = [x for x in listed.splitlines() if x.startswith("c_1m ")]
        found = re.search(r"lateness (\S+) .* hash (\w+)", line)
        assert found, line
        return found.group(1), found.group(2)

    lateness, old_hash = definition()
    assert lateness == "0"

    # A try under another name leaves the view as it is.
    tried = obsflow("replay", *common, "--lateness", "3h", "--as", "c_try", "-q")
    assert tried.returncode == 0, tried.stderr
    assert "redefined" not in tried.stderr
    assert definition() == ("0", old_hash)

    done = obsflow("replay", *common, "--lateness", "3h", "-q")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "obsflow: view c_1m redefined (lateness 0 -> 3h): its rows were rebuilt with it, and "
        "later runs of capture 'c' keep it (--as NEW_VIEW tries a definition under a new name)"
    ]
    lateness, new_hash = definition()
    assert (lateness, new_hash != old_hash) == ("3h", True)
    rows = reads.read_view(Store(str(store)), "c_1m").to_pandas()
    assert rows["count"].sum() == 3  # the late reading is in
    # Later ingests keep 3 h: a reading 3.5 minutes behind is not late.
    more = obsflow("ingest", str(later), *common, "-q", "--summary", str(tmp_path / "s.json"))
    assert more.returncode == 0, more.stderr
    assert json.loads((tmp_path / "s.json").read_text())["late"] == {}
    assert definition() == ("3h", new_hash)
    # The same lateness again redefines nothing, and says nothing.
    again = obsflow("replay", *common, "--lateness", "3h", "-q")
    assert (again.returncode, again.stderr) == (0, "")

    # The help says what --lateness does on a replay.
    helped = " ".join(obsflow("replay", "--help").stdout.split())
    assert "part of their definition" in helped


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
