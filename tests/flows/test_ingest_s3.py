"""Ingest into S3 stores: the same input gives the same capture as a local store.

Issue must-show: "Ingesting the same file through a local store and through an S3 store (moto
server on 127.0.0.1, via AWS_ENDPOINT_URL) produces identical capture contents." The same ingest
also runs against SeaweedFS, which checks request signatures, and a wrong secret there must end
``obsflow ingest`` with a clean error that does not show the secret.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from obsflow.connectors.datasets.reads import read_capture, read_deadletters, read_view
from obsflow.connectors.datasets.views import list_views
from obsflow.connectors.storage import layout as paths
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main
from tests import s3servers
from tests.conftest import BUOY, BUOY_MAP, ROOT, sorted_frame

pytestmark = pytest.mark.integration  # servers, brokers, child processes (tests/conftest.py)

# A small CSV with good rows from three sources and one of each kind of bad row.
MIXED_CSV = (
    "source,time,value,channel\n"
    "alpha,2024-01-01T00:00:00Z,1.5,temp\n"
    "beta,2024-01-01T00:00:00Z,2.5,temp\n"
    "alpha,2024-01-01T00:00:01Z,1.6,temp\n"
    "../escape,2024-01-01T00:00:02Z,9.0,temp\n"  # bad_id
    "gamma,not-a-time,3.0,temp\n"  # bad_time
    "gamma,2024-01-01T00:00:03Z,abc,temp\n"  # bad_value
    "beta,2024-01-01T00:00:04Z,2.6,temp,extra\n"  # malformed: one field too many
    ",2024-01-01T00:00:05Z,4.0,temp\n"  # bad_id (empty)
    "gamma,1704067206000000000,3.1,pressure\n"  # epoch ns
    "alpha,2024-01-01T00:00:07Z,,temp\n"  # missing_field (no value)
    "beta,2024-01-01T00:00:08Z,2.7,pre/ssure\n"  # bad_id (channel)
)

# Keys of the run summary that depend on the run, not on the data.
RUN_KEYS = {"run", "finished", "seconds", "readings_per_s", "store_url"}
DEAD_COLUMNS = ["origin", "row", "reason", "message", "raw"]


@dataclass(frozen=True)
class Case:
    path: Path
    args: tuple[str, ...]
    accepted: int
    rejected: int


# The buoy sample spans 13 months: the default per-minute view would make a view object per
# day (about 400, each a few requests to write and commit), which is all the time of an S3
# run and nothing this test looks at. A daily view fits in one object.
BUOY_VIEWS = """
[[view]]
name = "daily"
kind = "tumbling"
size = "1d"
aggregates = ["count", "mean", "min", "max"]
"""


def make_case(kind: str, tmp_path: Path) -> Case:
    if kind == "buoy":
        views = tmp_path / "buoy_views.toml"
        views.write_text(BUOY_VIEWS)
        # one identity conflict
        return Case(BUOY, ("--map", BUOY_MAP, "--views", str(views)), 19_225, 1)
    csv = tmp_path / "mixed.csv"
    csv.write_text(MIXED_CSV)
    return Case(csv, (), 4, 7)


def ingest(case: Case, store: str, capture: str, summary: Path) -> dict[str, Any]:
    argv = ["ingest", str(case.path), "--store", store, "--capture", capture]
    argv += [*case.args, "--summary", str(summary), "-q"]
    assert main(argv) == 0
    doc: dict[str, Any] = json.loads(summary.read_text())
    return doc


def layout(store: Store, capture: str, run: str) -> list[str]:
    """The capture's data files (``part-NNNN/<run>-<chunk>.parquet``), run id made generic."""
    return [
        p.replace(run, "RUN")
        for p in store.walk_files(paths.capture_dir(capture))
        if "_delta_log" not in p
    ]


def dead_letters(store: Store) -> pd.DataFrame:
    df = read_deadletters(store).to_pandas()
    return df[DEAD_COLUMNS].sort_values(["origin", "row", "reason"]).reset_index(drop=True)


def compare_with_local(case: Case, s3_url: str, tmp_path: Path) -> None:
    """Ingest ``case`` into a local store and into ``s3_url``; both must hold the same."""
    local_dir = tmp_path / "local"
    name = "cmp"
    s_local = ingest(case, str(local_dir), name, tmp_path / "local.json")
    s_s3 = ingest(case, s3_url, name, tmp_path / "s3.json")
    remote = Store(s3_url)  # a new Store: reads what the run left, not a cache

    # Same counts, and the expected ones.
    assert {k: v for k, v in s_s3.items() if k not in RUN_KEYS} == {
        k: v for k, v in s_local.items() if k not in RUN_KEYS
    }
    assert (s_s3["input"], s_s3["accepted"], s_s3["rejected"], s_s3["duplicates"]) == (
        case.accepted + case.rejected,
        case.accepted,
        case.rejected,
        0,
    )
    assert s_s3["balanced"] is True
    assert s_s3["store_url"] == s3_url
    # The run summary was written to the S3 store itself, completed by the CLI.
    assert remote.listdir("runs") == [f"{s_s3['run']}.json"]
    assert remote.read_json(f"runs/{s_s3['run']}.json") == s_s3

    # Identical capture contents: rows (read back from S3 through the project's reader)...
    local_cap = sorted_frame(read_capture(Store(str(local_dir)), name).to_pandas())
    s3_cap = sorted_frame(read_capture(remote, name).to_pandas())
    assert len(s3_cap) == case.accepted
    pd.testing.assert_frame_equal(s3_cap, local_cap)
    # ...the same objects per partition and the same seq bookkeeping.
    local = Store(str(local_dir))
    assert layout(remote, name, s_s3["run"]) == layout(local, name, s_local["run"])
    states = list(local.walk_files(paths.capture_state_dir(name, s_local["run"])))
    assert states
    remote_states = list(remote.walk_files(paths.capture_state_dir(name, s_s3["run"])))
    assert [r.replace(s_s3["run"], "RUN") for r in remote_states] == [
        r.replace(s_local["run"], "RUN") for r in states
    ]
    for rel, rel_s3 in zip(states, remote_states, strict=True):
        if rel.endswith(".json"):  # next seq per source (and the run that wrote it)
            r, lo = remote.read_json(rel_s3), local.read_json(rel)
            assert (r.pop("run"), lo.pop("run")) == (s_s3["run"], s_local["run"])
            assert (r["dedup"].pop("ranges"), lo["dedup"].pop("ranges")) == (
                s_s3["run"],
                s_local["run"],
            )
            assert r == lo
        else:  # the dedup ranges
            assert remote.read_parquet(rel_s3).equals(local.read_parquet(rel))

    # The same views, row for row (final and provisional), but for the run that wrote them.
    names = sorted(d["name"] for d in list_views(local))
    assert names
    assert sorted(d["name"] for d in list_views(remote)) == names
    for view in names:
        want = read_view(local, view).drop(["run"])
        assert read_view(remote, view).drop(["run"]).equals(want), view

    # Same dead letters, row for row (origin, record number, reason, message, raw form).
    local_dead, s3_dead = dead_letters(local), dead_letters(remote)
    assert len(s3_dead) == case.rejected
    pd.testing.assert_frame_equal(s3_dead, local_dead)


@pytest.mark.parametrize("kind", ["buoy", "mixed_csv"])
def test_local_and_moto_s3_ingest_give_identical_captures(
    kind: str, s3_env: str, tmp_path: Path
) -> None:
    compare_with_local(make_case(kind, tmp_path), f"s3://{s3_env}/obsflow", tmp_path)


def test_mixed_csv_rejects_are_kept_with_reasons_in_s3(s3_env: str, tmp_path: Path) -> None:
    case = make_case("mixed_csv", tmp_path)
    url = f"s3://{s3_env}/obsflow"
    summary = ingest(case, url, "mixed", tmp_path / "s.json")
    assert summary["rejected_by_reason"] == {
        "bad_id": 3,
        "bad_time": 1,
        "bad_value": 1,
        "malformed": 1,
        "missing_field": 1,
    }
    dead = dead_letters(Store(url))
    assert set(dead["origin"]) == {str(case.path)}
    assert sorted(dead["reason"]) == [
        "bad_id",
        "bad_id",
        "bad_id",
        "bad_time",
        "bad_value",
        "malformed",
        "missing_field",
    ]
    malformed = dead[dead["reason"] == "malformed"]
    assert malformed["raw"].str.contains("extra").all()
    raws = {json.loads(r).get("source") for r in dead[dead["reason"] != "malformed"]["raw"]}
    assert raws == {"../escape", "gamma", None, "beta", "alpha"}
    cap = read_capture(Store(url), "mixed").to_pandas()
    assert sorted(cap["source"]) == ["alpha", "alpha", "beta", "gamma"]
    # Nothing was written outside the store prefix (the bad id did not become a path).
    bucket_objects = Store(f"s3://{s3_env}").walk_files()
    assert all(p.startswith("obsflow/") for p in bucket_objects)


@pytest.mark.parametrize("kind", ["buoy", "mixed_csv"])
def test_local_and_seaweedfs_ingest_give_identical_captures(
    kind: str, seaweed_env: str, tmp_path: Path
) -> None:
    compare_with_local(make_case(kind, tmp_path), f"s3://{seaweed_env}/obsflow", tmp_path)


def test_wrong_secret_on_seaweedfs_is_a_clean_error_without_the_secret(
    seaweed: s3servers.SeaweedServer, seaweed_env: str, tmp_path: Path
) -> None:
    wrong = "wrong-secret-" + os.urandom(8).hex()
    env = dict(os.environ, AWS_SECRET_ACCESS_KEY=wrong, AWS_MAX_ATTEMPTS="1")
    csv = tmp_path / "mixed.csv"
    csv.write_text(MIXED_CSV)
    url = f"s3://{seaweed_env}/obsflow"
    proc = subprocess.run(
        [sys.executable, "-m", "obsflow.flows.cli.main", "ingest", str(csv), "--store", url, "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    err = proc.stderr
    assert proc.returncode != 0
    assert wrong not in err
    assert wrong not in proc.stdout
    assert seaweed.secret_key not in err
    # A one-line message that says what failed, not a crash.
    assert "Traceback" not in err, f"obsflow crashed instead of reporting an error:\n{err}"
    assert re.search(r"^obsflow: error: .+", err, re.MULTILINE), err
    # Nothing was written with the refused credentials (checked with the right ones).
    assert list(Store(url).walk_files()) == []
