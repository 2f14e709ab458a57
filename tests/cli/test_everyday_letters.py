"""Everyday paths of dead letters, replay's ``--lateness`` and ``views list`` (issue 31, items
1, 4, 10 and part of 12), run as a user runs them: ``obsflow`` commands in child processes.
Each test reproduces a finding with the same kind of command and input and asserts what happens
now."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
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


def test_a_retry_takes_only_the_dead_letters_of_the_capture_it_names(tmp_path: Path) -> None:
    """Item 1: ``retry --capture beta`` took alpha's dead letters too, put alpha's readings in
    beta and marked them resolved."""
    store = tmp_path / "store"
    alpha = station_file(tmp_path / "alpha.csv", ["a0", "a1", "a2"], 20, 10.0)
    beta = station_file(tmp_path / "beta.csv", ["b0", "b1"], 20, 20.0)
    common = ["--store", str(store), "-q"]
    assert obsflow("ingest", str(alpha), "--capture", "alpha", *common).returncode == 1
    assert obsflow("ingest", str(beta), "--capture", "beta", *common).returncode == 1
    alpha_files = digests(store, "captures/alpha", "views/alpha_1m")
    alpha_run = reads.run_summaries(Store(str(store)))[0]
    assert alpha_run["capture"] == "alpha"

    done = obsflow("deadletters", "retry", "--capture", "beta", *FIX, *common)
    assert done.returncode == 0, done.stderr
    assert captured(store, "beta") == readings_of(beta)
    assert not (store / "captures" / "alpha").exists()  # (its run accepted nothing: none made)
    assert digests(store, "captures/alpha", "views/alpha_1m") == alpha_files  # untouched
    assert "retry: 40 open dead letters: 40 resolved by run" in done.stderr
    listed = obsflow("deadletters", "list", "--capture", "alpha", "--store", str(store))
    assert open_by_run(listed.stdout) == {("alpha", "missing_field"): 60}
    # Without --capture: every capture's, each named (--all: the resolved ones too).
    listed = obsflow("deadletters", "list", "--store", str(store))
    assert open_by_run(listed.stdout) == {("alpha", "missing_field"): 60}
    listed = obsflow("deadletters", "list", "--all", "--store", str(store))
    assert open_by_run(listed.stdout) == {
        ("alpha", "missing_field"): 60,
        ("beta", "missing_field"): 40,
    }
    shown = obsflow("deadletters", "show", "--capture", "beta", "--store", str(store))
    assert shown.returncode == 0
    assert shown.stdout == ""
    assert "no open dead letters of capture 'beta'" in shown.stderr

    # Another capture's run is not this capture's to retry: refused, nothing written.
    before = digests(store, ".")
    wrong = obsflow(
        "deadletters", "retry", "--capture", "beta", "--run", alpha_run["run"], *FIX, *common
    )
    assert wrong.returncode == 2
    assert wrong.stderr.splitlines() == [
        f"obsflow: error: run {alpha_run['run']} is a run of capture 'alpha', not 'beta': "
        f"its dead letters are retried with --capture alpha"
    ]
    assert digests(store, ".") == before

    beta_files = digests(store, "captures/beta", "views/beta_1m")
    done = obsflow("deadletters", "retry", "--capture", "alpha", *FIX, *common)
    assert done.returncode == 0, done.stderr
    assert "retry: 60 open dead letters: 60 resolved by run" in done.stderr
    assert captured(store, "alpha") == readings_of(alpha)
    assert captured(store, "beta") == readings_of(beta)
    assert digests(store, "captures/beta", "views/beta_1m") == beta_files
    assert "no open dead letters" in obsflow("deadletters", "list", "--store", str(store)).stderr


def test_dead_letters_of_a_migrated_store_belong_to_their_runs_captures(tmp_path: Path) -> None:
    """A store migrated from layout 2 brought its dead letters in one commit of no run: their
    capture is the one whose commit log holds their run."""
    store = tmp_path / "store"
    shutil.copytree(Path(__file__).parents[1] / "fixtures" / "store_v2" / "store", store)
    assert obsflow("store", "migrate", "--store", str(store)).returncode == 0
    expected = reads.read_deadletters(Store(str(store)))
    assert expected.num_rows == 5
    listed = obsflow("deadletters", "list", "--capture", "wx", "--store", str(store))
    assert open_by_run(listed.stdout) == {
        ("wx", reason): n
        for reason, n in pd.Series(expected.column("reason").to_pylist()).value_counts().items()
    }
    none = obsflow("deadletters", "list", "--capture", "cam", "--store", str(store))
    assert (none.returncode, none.stdout) == (0, "")
    assert "no open dead letters of capture 'cam'" in none.stderr


def test_the_reason_codes_hold_those_the_checks_name_as_constants() -> None:
    """The codes ``--reason`` takes include every code a module names as a constant."""
    from obsflow.connectors.payloads import chunks
    from obsflow.connectors.sources.bluesky import external

    named = {v for k, v in vars(chunks).items() if k.startswith("REASON_")}
    assert len(named) == 5
    assert {*named, *external.REASONS} <= set(reads.REASONS)


def test_retry_into_a_capture_that_does_not_exist_names_the_captures(tmp_path: Path) -> None:
    """A typo in ``--capture`` used to create that capture and put every dead letter in it."""
    store = tmp_path / "store"
    wx = station_file(tmp_path / "wx.csv", ["w0"], 5, 1.0)
    assert obsflow("ingest", str(wx), "--capture", "wx", "--store", str(store)).returncode == 1
    before = digests(store, ".")
    typo = obsflow("deadletters", "retry", "--capture", "xw", *FIX, "--store", str(store))
    assert typo.returncode == 2
    assert typo.stderr.splitlines() == [
        f"obsflow: error: no capture 'xw' in {store.resolve()} "
        "(captures: none; dead letters only: wx)"  # (a run that accepted nothing made none)
    ]
    assert digests(store, ".") == before


def test_an_unknown_reason_code_is_refused_with_the_codes_and_the_help_example_works(
    tmp_path: Path,
) -> None:
    """Item 10: ``--reason missing`` (the help's own example) matched nothing, and the
    commands then said there were no open dead letters while every record was one."""
    store = tmp_path / "store"
    wx = station_file(tmp_path / "wx.csv", ["w0", "w1"], 30, 5.0)
    assert obsflow("ingest", str(wx), "--capture", "wx", "--store", str(store)).returncode == 1
    before = digests(store, ".")
    for action in (["list"], ["show"], ["retry", "--capture", "wx", *FIX]):
        refused = obsflow("deadletters", *action, "--reason", "missing", "--store", str(store))
        assert refused.returncode == 2, (action, refused.stderr)
        (line,) = refused.stderr.splitlines()
        assert line.startswith(
            "obsflow: error: no reason code 'missing' (did you mean missing_field or "
            "missing_file?); reason codes: "
        )
        codes = line.split("reason codes: ")[1].split(", ")
        assert {"missing_field", "bad_time", "bad_value", "conflict", "malformed"} <= set(codes)
        assert refused.stdout == ""
    assert digests(store, ".") == before  # the refused retry wrote nothing

    # A code that is valid but has no open dead letters says what is open instead.
    none = obsflow("deadletters", "show", "--reason", "bad_seq", "--store", str(store))
    assert none.returncode == 0
    assert "no open dead letters of reason bad_seq" in none.stderr
    assert "60 other open dead letters (obsflow deadletters list)" in none.stderr

    # The help's examples name real codes; its retry example, as printed, captures the file.
    helped = obsflow("deadletters", "--help").stdout
    examples = [
        line.strip() for line in helped.split("examples:")[1].splitlines() if "--reason" in line
    ]
    assert examples
    for example in examples:
        reason = example.split("--reason ")[1].split()[0]
        shown = obsflow("deadletters", "show", "--reason", reason, "--store", str(store))
        assert shown.returncode == 0, shown.stderr
    (retry,) = [e for e in examples if " retry " in e]
    argv = [*retry.split()[1:], "--store", str(store)]
    done = obsflow(*argv)
    assert done.returncode == 0, done.stderr
    assert captured(store, "wx") == readings_of(wx)


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
        "obsflow: view c_1m redefined (lateness 0 -> 3h): rebuilt with the new definition, "
        "which later runs of capture 'c' keep (--as NEW_VIEW tries one under a new name)"
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


def test_a_retry_of_readings_already_captured_says_they_were_duplicates(tmp_path: Path) -> None:
    """Item 12 (part): a retry whose records were all in the capture already said "N
    captured"."""
    store = tmp_path / "store"
    good = tmp_path / "good.csv"
    frame = pd.read_csv(station_file(tmp_path / "wx.csv", ["w0", "w1", "w2"], 40, 3.0))
    frame.rename(columns={"station": "source", "temp_c": "value"}).to_csv(good, index=False)
    common = ["--store", str(store), "--capture", "wx", "-q"]
    assert obsflow("ingest", str(good), *common).returncode == 0
    # The same readings again, under the logger's column names: all dead letters.
    assert obsflow("ingest", str(tmp_path / "wx.csv"), *common).returncode == 1

    done = obsflow("deadletters", "retry", *common, *FIX)
    assert done.returncode == 0, done.stderr
    said = done.stderr.splitlines()[-1]
    assert said.startswith("retry: 120 open dead letters: 120 resolved by run "), said
    assert said.endswith("(0 captured, 120 duplicates: already in the capture), 0 still rejected")
    assert captured(store, "wx") == readings_of(tmp_path / "wx.csv")  # nothing added
    assert "no open dead letters" in obsflow("deadletters", "list", *common[:2]).stderr
