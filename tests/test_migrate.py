"""Stores written by earlier obsflows migrate and read back exactly: layout 1
(tests/fixtures/store_v1), and layout 2 (tests/fixtures/store_v2, today's main before captures
and views became Delta tables)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from obsflow.connectors.errors import StoreError
from obsflow.connectors.storage import layout
from obsflow.connectors.storage.migrate import check_layout, migrate
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main
from obsflow.flows.explore.explorer import open_store
from tests.delta import files_in_order, polars_frame

FIXTURE = Path(__file__).parent / "fixtures" / "store_v1"


def _value(v: Any) -> Any:
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 9)
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def records(frame: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    """Rows as sorted plain records over ``columns`` (the form expected.json holds)."""
    rows = [{c: _value(r[c]) for c in columns} for r in frame[columns].to_dict(orient="records")]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def normalized(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [{k: _value(v) for k, v in r.items()} for r in rows]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    shutil.copytree(FIXTURE / "store", path)
    return path


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURE / "expected.json").read_text())
    return doc


def test_commands_refuse_a_layout_1_store_and_say_how_to_migrate(
    old_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(StoreError, match="store migrate"):
        check_layout(Store(str(old_store)))
    assert main(["views", "list", "--store", str(old_store)]) == 2
    assert "obsflow store migrate" in capsys.readouterr().err
    before = sorted(p.relative_to(old_store) for p in old_store.rglob("*"))
    assert main(["ingest", str(FIXTURE / "inputs" / "a.csv"), "--store", str(old_store)]) == 2
    assert sorted(p.relative_to(old_store) for p in old_store.rglob("*")) == before


def test_a_migrated_store_reads_back_what_layout_1_read(
    old_store: Path, expected: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["store", "migrate", "--store", str(old_store)]) == 0
    assert "view 'wx_1m'" in capsys.readouterr().err  # progress goes to stderr
    store = Store(str(old_store))
    check_layout(store)
    assert store.exists(layout.LAYOUT_DOC)
    for kind, names in (
        ("captures", ("_capture.json", "_state", "_inputs")),
        ("views", ("_view.json", "_state")),
    ):
        for name in names:
            assert not list(old_store.glob(f"{kind}/*/{name}")), "bookkeeping left in a data folder"

    ex = open_store(str(old_store))
    assert ex.capture_names() == sorted(expected["captures"])
    for name, rows in expected["captures"].items():
        got = ex.capture(name, payloads=True)
        assert records(got, sorted(rows[0])) == normalized(rows), name
        info = ex.captures().set_index("name").loc[name]
        for key, value in expected["info"][name].items():
            assert info[key] == value, (name, key)

    assert ex.view_names() == sorted(expected["views"])
    for name, doc in expected["views"].items():
        assert ex.view_definition(name).definition == doc["definition"]
        got = ex.view(name)
        assert got["final"].all(), "migrated rows were final in layout 1"
        assert records(got, sorted(doc["rows"][0])) == normalized(doc["rows"]), name
    for name, rows in expected["late"].items():
        got = ex.late(name)
        if not rows:
            assert got.empty
            continue
        assert records(got, sorted(rows[0])) == normalized(rows), name

    dead = ex.deadletters()
    columns = sorted(expected["deadletters"][0])
    assert records(dead, columns) == normalized(expected["deadletters"])
    assert sorted(ex.runs()["run"]) == sorted(expected["runs"])

    arrays = ex.payloads(ex.capture("cam", payloads=True))  # in capture order, None: no payload
    digests = [None if a is None else hashlib.sha256(a.tobytes()).hexdigest() for a in arrays]
    assert digests == expected["payloads"]


def test_a_migrated_store_takes_new_runs_and_migrating_again_changes_nothing(
    old_store: Path, expected: dict[str, Any], tmp_path: Path
) -> None:
    store = Store(str(old_store))
    migrate(store)
    snapshot = {p: p.read_bytes() for p in old_store.rglob("*") if p.is_file()}
    assert migrate(store) == 0
    assert {p: p.read_bytes() for p in old_store.rglob("*") if p.is_file()} == snapshot

    # Input a.csv was captured in layout 1: a new ingest of it skips it (inputs records moved).
    a = str(FIXTURE / "inputs" / "a.csv")
    assert main(["ingest", a, "--store", str(old_store), "--capture", "wx", "-q"]) == 0
    ex = open_store(str(old_store))
    assert len(ex.capture("wx")) == expected["info"]["wx"]["rows"]
    # The migrated commit log keeps the runs' order: a full replay rebuilds the views exactly
    # as today's obsflow builds them from the same files ingested in the same order. (Not as
    # layout 1 stored them: it ended every window at the end of each run.)
    views = str(FIXTURE / "inputs" / "views.toml")
    fresh = str(tmp_path / "fresh")
    for name in ("a.csv", "b.csv"):
        # Layout 1 captured an empty value as NaN; today it is a missing_field dead letter,
        # and the text NaN is NaN: the fresh store gets the same readings from that text.
        csv = tmp_path / name
        csv.write_text(re.sub(r",$", ",NaN", (FIXTURE / "inputs" / name).read_text(), flags=re.M))
        argv = ["ingest", str(csv), "--store", fresh, "--capture", "wx", "--views", views]
        assert main(argv) == 0
    assert main(["replay", "--store", str(old_store), "--capture", "wx", "--views", views]) == 0
    lineage = ["run", "view_hash"]
    for name in ("wx_1m", "wx_sess"):
        got = ex.view(name).drop(columns=lineage)
        want = open_store(fresh).view(name).drop(columns=lineage)
        pd.testing.assert_frame_equal(got, want)
        assert len(got) >= 5, name
        late = ex.late(name).drop(columns=["run"])
        pd.testing.assert_frame_equal(late, open_store(fresh).late(name).drop(columns=["run"]))


# -- layout 2 -----------------------------------------------------------------------------------

FIXTURE_2 = Path(__file__).parent / "fixtures" / "store_v2"


@pytest.fixture
def store_v2(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    shutil.copytree(FIXTURE_2 / "store", path)
    return path


@pytest.fixture(scope="module")
def expected_v2() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURE_2 / "expected.json").read_text())
    return doc


def test_commands_refuse_a_layout_2_store_and_say_how_to_migrate(
    store_v2: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(p.relative_to(store_v2) for p in store_v2.rglob("*"))
    assert main(["views", "list", "--store", str(store_v2)]) == 2
    assert "obsflow store migrate" in capsys.readouterr().err
    argv = ["ingest", str(FIXTURE_2 / "inputs" / "a.csv"), "--store", str(store_v2)]
    assert main([*argv, "--capture", "wx"]) == 2
    assert sorted(p.relative_to(store_v2) for p in store_v2.rglob("*")) == before


def test_a_layout_2_store_migrates_and_reads_back_what_it_read(
    store_v2: Path, expected_v2: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["store", "migrate", "--store", str(store_v2)]) == 0
    err = capsys.readouterr().err
    assert "every row as it was" in err  # verified before removing
    store = Store(str(store_v2))
    check_layout(store)
    assert store.read_json(layout.LAYOUT_DOC) == {"layout": 3}
    assert not (store_v2 / "_obsflow" / "captures" / "wx" / "commits").exists()
    # Every data folder is a table now, and holds only what its table does.
    for table in ("captures/wx", "captures/cam", "views/wx_1m", "late/wx_1m", "deadletter"):
        held = {uri.removeprefix("file://") for uri in files_in_order(store_v2, table)}
        on_disk = {str(p) for p in (store_v2 / table).rglob("*.parquet")}
        assert held == on_disk, table

    ex = open_store(str(store_v2))
    assert ex.capture_names() == sorted(expected_v2["captures"])
    for name, rows in expected_v2["captures"].items():
        got = ex.capture(name, payloads=True)
        assert records(got, sorted(rows[0])) == normalized(rows), name  # times to the ns
        info = ex.captures().set_index("name").loc[name]
        for key, value in expected_v2["info"][name].items():
            want = pd.Timestamp(value) if key in ("first", "last") else value
            assert info[key] == want, (name, key)
    assert ex.view_names() == sorted(expected_v2["views"])
    for name, doc in expected_v2["views"].items():
        assert ex.view_definition(name).definition == doc["definition"]
        got = ex.view(name)
        assert records(got, sorted(doc["rows"][0])) == normalized(doc["rows"]), name
    for name, rows in expected_v2["late"].items():
        got = ex.late(name)
        assert len(got) == len(rows), name
        if rows:
            assert records(got, sorted(rows[0])) == normalized(rows), name
    dead = ex.deadletters()
    assert records(dead, sorted(expected_v2["deadletters"][0])) == normalized(
        expected_v2["deadletters"]
    )
    traced = ex.capture("wx", trace_id=["t-1", "t-2"])
    assert records(traced, sorted(expected_v2["traced"][0])) == normalized(expected_v2["traced"])
    assert sorted(ex.runs()["run"]) == sorted(expected_v2["runs"])
    arrays = ex.payloads(ex.capture("cam", payloads=True))
    digests = [None if a is None else hashlib.sha256(a.tobytes()).hexdigest() for a in arrays]
    assert digests == expected_v2["payloads"]
    # Tools read the same rows: Polars over the table.
    wx = polars_frame(store_v2, "captures/wx")
    assert sorted(wx["time"].astype("int64")) == sorted(
        pd.Timestamp(r["time"]).value for r in expected_v2["captures"]["wx"]
    )

    # Migrating again changes nothing.
    snapshot = {p: p.read_bytes() for p in store_v2.rglob("*") if p.is_file()}
    assert migrate(store) == 0
    assert {p: p.read_bytes() for p in store_v2.rglob("*") if p.is_file()} == snapshot


def test_replay_over_a_migrated_capture_gives_the_views_it_had(
    store_v2: Path, expected_v2: dict[str, Any]
) -> None:
    assert main(["store", "migrate", "--store", str(store_v2)]) == 0
    for capture in ("wx", "cam"):
        assert main(["replay", "--store", str(store_v2), "--capture", capture, "-q"]) == 0
    ex = open_store(str(store_v2))
    for name, doc in expected_v2["views"].items():
        got = ex.view(name).drop(columns=["run"])
        want = [{k: v for k, v in r.items() if k != "run"} for r in doc["rows"]]
        assert records(got, sorted(want[0])) == normalized(want), name
    for name, rows in expected_v2["late"].items():
        got = ex.late(name).drop(columns=["run"])
        want = [{k: v for k, v in r.items() if k != "run"} for r in rows]
        assert len(got) == len(want), name
        if want:
            assert records(got, sorted(want[0])) == normalized(want), name
    # and later ingests go on from the migrated state: the same input is skipped
    a = str(FIXTURE_2 / "inputs" / "a.csv")
    assert main(["ingest", a, "--store", str(store_v2), "--capture", "wx", "-q"]) == 0
    assert len(ex.capture("wx")) == expected_v2["info"]["wx"]["rows"]
