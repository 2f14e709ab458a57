"""A store written in layout 1 (tests/fixtures/store_v1) migrates and reads back exactly."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from obsflow.connectors import layout
from obsflow.connectors.errors import StoreError
from obsflow.connectors.migrate import check_layout, migrate
from obsflow.connectors.store import Store
from obsflow.flows.cli import main
from obsflow.flows.explore import open_store

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
    assert not list(old_store.glob("captures/*/_*")), "bookkeeping left in a data folder"
    assert not list(old_store.glob("views/*/_*"))

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
        csv = str(FIXTURE / "inputs" / name)
        assert main(["ingest", csv, "--store", fresh, "--capture", "wx", "--views", views]) == 0
    assert main(["replay", "--store", str(old_store), "--capture", "wx", "--views", views]) == 0
    lineage = ["run", "view_hash"]
    for name in ("wx_1m", "wx_sess"):
        got = ex.view(name).drop(columns=lineage)
        want = open_store(fresh).view(name).drop(columns=lineage)
        pd.testing.assert_frame_equal(got, want)
        assert len(got) >= 5, name
        late = ex.late(name).drop(columns=["run"])
        pd.testing.assert_frame_equal(late, open_store(fresh).late(name).drop(columns=["run"]))
