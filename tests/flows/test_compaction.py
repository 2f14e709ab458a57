"""``obsflow capture compact`` (issue 13, must-show 5): 1,000 small capture objects — what a
live session leaves — become a handful; a reader never sees a reading missing or doubled
while it runs; replay gives the same rows before and after; ingest goes on."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from obsflow.connectors.batch import RawBatch
from obsflow.connectors.datasets import reads
from obsflow.connectors.datasets.capture import capture_files, new_run_id
from obsflow.connectors.storage import compaction, layout
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main
from obsflow.flows.pipeline import jobs
from obsflow.flows.pipeline.ingest import IngestConfig
from obsflow.flows.pipeline.live import BatchesSource

# 63 committed runs x 16 partitions = 1,008 objects (a session of 4 partitions makes as many in
# 252 cycles, four times slower to set up for the same test of compaction).
RUNS, PARTITIONS, SOURCES, PER_RUN = 63, 16, 64, 128
T0 = pd.Timestamp("2026-03-01T00:00:00Z").value
VIEWS = '[[view]]\nname = "live_1m"\nsize = "1m"\naggregates = ["count", "mean", "min", "max"]\n'


def run_batch(k: int) -> pa.Table:
    """Run ``k``'s readings: every source, 2 readings each, 1 s apart, 40 s after run k-1's
    (63 runs: 42 minutes, so run 0's readings end up older than the dedup memory)."""
    i = np.arange(PER_RUN)
    return pa.table(
        {
            "source": [f"s{j % SOURCES:02d}" for j in i],
            "time": pa.array(T0 + (k * 40 + i // SOURCES) * 10**9, pa.int64()),
            "value": (np.sin(k + i) * 10).round(6),
        }
    )


def ingest(store: str, table: pa.Table) -> dict[str, object]:
    config = IngestConfig(
        inputs=("live://test",),
        store=store,
        capture="live",
        progress=False,
        live=True,
        run_id=new_run_id(),
        partitions=PARTITIONS,
        views=(),  # built by a replay below: the test is about the capture's objects
    )
    batch = RawBatch("live://test", 0, table)
    return jobs.execute(config, source=BatchesSource([batch])).summary


def view_rows(store: str) -> pd.DataFrame:
    frame = reads.read_view(Store(store), "live_1m").to_pandas().drop(columns="run")
    return frame.sort_values(["source", "channel", "window_start"]).reset_index(drop=True)


@pytest.mark.integration
def test_a_thousand_small_objects_become_a_handful_and_nothing_else_changes(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    for k in range(RUNS):
        assert ingest(store, run_batch(k))["accepted"] == PER_RUN
    st = Store(store)
    before_files = capture_files(st, "live")
    assert len(before_files) == RUNS * PARTITIONS
    n = RUNS * PER_RUN
    capture_before = reads.read_capture(st, "live").to_pandas()
    assert len(capture_before) == n
    views = tmp_path / "views.toml"
    views.write_text(VIEWS)
    assert main(["replay", "--store", store, "--capture", "live", "--views", str(views), "-q"]) == 0
    rows_before = view_rows(store)

    seen: list[tuple[int, int]] = []  # (readings, distinct identities) per read while compacting
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                t = reads.read_capture(Store(store), "live", columns=["source", "time"])
            except BaseException as exc:
                errors.append(exc)
                return
            frame = t.to_pandas()
            seen.append((len(frame), len(frame.drop_duplicates())))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert main(["capture", "compact", "live", "--store", store, "--target-rows", "4096"]) == 0
    finally:
        done.set()
        thread.join()
    assert not errors, errors
    assert seen, "the reader read nothing while compaction ran"
    assert all(s == (n, n) for s in seen), [s for s in seen if s != (n, n)][:5]

    after_files = capture_files(st, "live")
    print(f"{len(before_files)} objects -> {len(after_files)}; {len(seen)} reads during it")
    assert len(after_files) <= 2 * PARTITIONS  # ~500 readings per partition: one object or two
    capture_after = reads.read_capture(st, "live").to_pandas()
    key = ["source", "time"]
    pd.testing.assert_frame_equal(
        capture_after.sort_values(key).reset_index(drop=True),
        capture_before.sort_values(key).reset_index(drop=True),
    )
    assert main(["replay", "--store", store, "--capture", "live", "-q"]) == 0
    pd.testing.assert_frame_equal(view_rows(store), rows_before)

    # Ingest goes on: new readings are captured; a reading compacted away is still a duplicate.
    summary = ingest(store, pa.concat_tables([run_batch(RUNS), run_batch(0).slice(0, 1)]))
    assert (summary["accepted"], summary["duplicates"]) == (PER_RUN, 1)
    assert main(["capture", "compact", "live", "--store", store]) == 0  # nothing left to do


def test_vacuum_drops_state_folders_by_when_they_were_written_not_by_the_run_id(
    tmp_path: Path,
) -> None:
    """A run's state folder is deleted once no commit needs it and nothing was written in it
    within the retention: a resumed run whose id says it began long ago keeps its folder."""
    store = str(tmp_path / "store")
    ingest(store, run_batch(0))
    ingest(store, run_batch(1))
    state = tmp_path / "store" / layout.capture_state_dir("live")
    runs = sorted(p.name for p in state.iterdir())  # (the last commit names both: a chain)
    hours_ago = time.time() - 3 * 3600

    def folder(name: str, *, old: bool) -> None:
        (state / name).mkdir()
        (state / name / "part-0000.json").write_text("{}")
        if old:
            os.utime(state / name / "part-0000.json", (hours_ago, hours_ago))

    folder("20260101T000000Z-dead00", old=True)  # a crashed run's
    folder("20000101T000000Z-0000aa", old=False)  # began long ago, writing now
    folder("not ours", old=True)  # not a run's folder
    for path in (state / runs[0]).rglob("*"):  # needed by the last commit, however old
        os.utime(path, (hours_ago, hours_ago))
    result = compaction.vacuum(Store(store), "live", retention_hours=2)
    assert result.folders == 1
    left = sorted(p.name for p in state.iterdir())
    assert left == sorted([*runs, "20000101T000000Z-0000aa", "not ours"])
    assert ingest(store, run_batch(2))["accepted"] == PER_RUN  # the capture goes on
    assert main(["capture", "info", "live", "--store", store]) == 0
