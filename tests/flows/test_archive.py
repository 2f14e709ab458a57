"""``obsflow capture archive``: old capture files moved to another store, replay across both.

Issue 17 must-show 5: archive, then replay: equal to the replay before archiving. The archive
also runs to an S3 store (moto), and the copies are checked against the manifest's sha256.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from obsflow.connectors.datasets.capture import capture_files
from obsflow.connectors.sources.simulator import SimSpec, generate
from obsflow.connectors.storage import layout
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main
from obsflow.flows.explore.explorer import open_store
from tests.delta import table_frame

VIEWS = """
[[view]]
name = "w5m"
size = "5m"
aggregates = ["count", "mean", "min", "max"]
[[view]]
name = "sess"
kind = "session"
gap = "20s"
aggregates = ["count", "mean", "last"]
"""
HOURS = ("2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z")


def _views(store: str) -> dict[str, pd.DataFrame]:
    """Each view's rows, without the run that wrote them (a replay is a new run)."""
    ex = open_store(store)
    return {v: ex.view(v).drop(columns=["run"]) for v in ("w5m", "sess")}


@pytest.fixture(params=["local", "s3"])
def cold(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the archive goes: a folder, or a bucket on moto."""
    if request.param == "local":
        return str(tmp_path / "cold")
    bucket = request.getfixturevalue("s3_env")
    return f"s3://{bucket}/cold"


def test_archive_then_replay_equals_the_replay_before_archiving(
    tmp_path: Path, cold: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "store")
    (tmp_path / "views.toml").write_text(VIEWS)
    for i, start in enumerate(HOURS):  # one run per hour of readings
        spec = SimSpec(sources=3, rate=2.0, duration=3600, start=start, seed=i)
        pq.write_table(generate(spec), tmp_path / f"h{i}.parquet")
        argv = ["ingest", str(tmp_path / f"h{i}.parquet"), "--store", store, "--capture", "c"]
        assert main([*argv, "--views", str(tmp_path / "views.toml"), "-q"]) == 0
    replay = ["replay", "--capture", "c", "--store", store, "-q"]
    assert main(replay) == 0
    before = _views(store)
    capture_before = open_store(store).capture("c")
    assert len(before["w5m"]) > 100

    capsys.readouterr()
    archive = ["capture", "archive", "c", "--before", HOURS[2], "--to", cold, "--store", store]
    assert main(archive) == 0
    said = capsys.readouterr().err
    assert "capture 'c': moved" in said

    # The files of the first two hours are in the archive (as the manifest says) and gone
    # from the capture's table (the next vacuum past the time-travel retention deletes them
    # from its store; time travel to before the archive still reads them there); those of the
    # last hour stayed.
    main_store, cold_store = Store(store), Store(cold)
    held = {f.path for f in capture_files(main_store, "c")}
    [manifest_rel] = list(cold_store.walk_files(f"{layout.META}/archives/c"))
    manifest = cold_store.read_json(manifest_rel)
    moved = {o["path"]: o for o in manifest["objects"]}
    assert sum(o["rows"] for o in manifest["objects"]) == int(
        (capture_before["time"] < pd.Timestamp(HOURS[2])).sum()
    )
    for rel, o in moved.items():
        assert hashlib.sha256(cold_store.read_bytes(rel)).hexdigest() == o["sha256"]
        assert rel not in held
        assert o["max_time"] < pd.Timestamp(HOURS[2]).value
    left = open_store(store).capture("c")
    assert table_frame(Path(store) / "captures" / "c")["time"].min() >= pd.Timestamp(HOURS[2])
    assert len(left) == len(capture_before) - sum(o["rows"] for o in moved.values())
    assert len(open_store(store, as_of=4).capture("c")) == len(capture_before)  # time travel

    # Views keep their rows; a replay reads both stores and gives the same views.
    for name, frame in _views(store).items():
        pd.testing.assert_frame_equal(frame, before[name], obj=name)
    assert main(replay) == 0
    for name, frame in _views(store).items():
        pd.testing.assert_frame_equal(frame, before[name], obj=name)

    # Archiving again before the same time finds nothing more to move.
    assert main(archive) == 0
    assert "nothing to archive" in capsys.readouterr().err


def test_archiving_into_the_store_itself_is_refused_however_it_is_spelled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = SimSpec(sources=2, rate=1.0, duration=600, start=HOURS[0])
    pq.write_table(generate(spec), tmp_path / "h.parquet")
    assert main(["ingest", "h.parquet", "--store", "store", "--capture", "c", "-q"]) == 0
    before = sorted(p for p in (tmp_path / "store").rglob("*") if p.is_file())
    for to in ("store", "./store/", str(tmp_path / "store")):
        capsys.readouterr()
        argv = ["capture", "archive", "c", "--before", HOURS[2], "--to", to, "--store", "store"]
        assert main(argv) == 2
        assert "is the capture's own store" in capsys.readouterr().err
    assert sorted(p for p in (tmp_path / "store").rglob("*") if p.is_file()) == before
