"""How a capture partition's dedup memory is saved between runs: one range per key space in
the run's folder, and — in a live session — the memory kept in the process for the next cycle.
Whatever the path, duplicates are found exactly as the oracle says: what memory does not hold
the capture itself answers. A state saved in the format before ranges is still read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from obsflow.connectors.algorithms.dedup import Deduper
from obsflow.connectors.batch import RawBatch
from obsflow.connectors.datasets import capture as capture_mod
from obsflow.connectors.datasets.capture import PartitionWriter, new_run_id
from obsflow.connectors.storage import commits, layout
from obsflow.connectors.storage.store import Store
from obsflow.flows.pipeline import jobs
from obsflow.flows.pipeline.ingest import IngestConfig
from obsflow.flows.pipeline.live import BatchesSource

T0 = 1_780_000_000 * 10**9
SOURCES, PER_SOURCE, RUNS = 8, 25, 45


def ingest(store: str, table: pa.Table, horizon: int) -> dict[str, object]:
    config = IngestConfig(
        inputs=("live://test",),
        store=store,
        capture="c",
        progress=False,
        live=True,
        run_id=new_run_id(),
        dedup_horizon=horizon,
        partitions=2,
    )
    return jobs.execute(config, source=BatchesSource([RawBatch("live://test", 0, table)])).summary


def memories(store: Store) -> dict[int, Deduper]:
    """Each partition's dedup memory as a new process would load it from the store."""
    capture_mod._MEMORY.clear()
    out = {}
    base, state = commits.capture_base(store, "c", None)
    for part in range(2):
        writer = PartitionWriter(
            store, "c", part, new_run_id(), n=base + 1, state=state.get(part), horizon=HORIZON
        )
        out[part] = writer.state.dedup
    return out


def same_memory(a: Deduper, b: Deduper) -> None:
    """The same ranges per key space (what a run saves; identities are the capture's)."""
    assert a.to_table().equals(b.to_table())


HORIZON = 120 * 10**9  # 2 minutes: the 45 runs below span 15, so memory is pruned as it goes


@pytest.mark.parametrize("restart_every", [0, 7])
def test_deltas_whole_states_and_kept_memories_remember_what_an_unbroken_memory_would(
    tmp_path: Path, restart_every: int
) -> None:
    """45 runs of 20 s each; every run re-sends readings of the run before and of one 2.3 to 4
    minutes back (beyond the 2-minute horizon: only the capture can tell). With
    ``restart_every``, the process memory is dropped before every 7th run, as a new process
    would start. Every run's duplicates are as many as were re-sent; the saved state loads into
    the ranges of the memory the session kept, one row per key space."""
    store = str(tmp_path / "store")
    rng = np.random.default_rng(5)
    runs: list[pa.Table] = []
    for k in range(RUNS):
        i = np.arange(SOURCES * PER_SOURCE)
        runs.append(
            pa.table(
                {
                    "source": [f"s{j % SOURCES}" for j in i],
                    "time": pa.array(T0 + (k * 20 + i // SOURCES * 0.8) * 10**9, pa.int64()),
                    "value": rng.normal(size=i.size),
                }
            )
        )
        resent = []
        if k >= 1:
            resent.append(runs[k - 1].take(rng.choice(i.size, 10, replace=False)))
        if k >= 12:
            old = runs[k - int(rng.integers(7, 12))]
            resent.append(old.take(rng.choice(i.size, 5, replace=False)))
        if restart_every and k % restart_every == 0:
            capture_mod._MEMORY.clear()
        summary = ingest(store, pa.concat_tables([runs[k], *resent]), HORIZON)
        assert summary["accepted"] == i.size, k
        assert summary["duplicates"] == sum(t.num_rows for t in resent), k

    st = Store(store)
    kept = {part: capture_mod._MEMORY[(store, "c", part)][1] for part in range(2)}
    loaded = memories(st)
    for part in range(2):
        same_memory(loaded[part], kept[part])
        assert len(kept[part]) < SOURCES * PER_SOURCE * 7  # ~6 runs: the horizon, pruned
        head = commits.last_commit(st, "captures/c", "c")
        assert head is not None
        runs = head.state[part]
        state = st.read_json(layout.capture_state("c", runs[0], part, ".json"))
        assert runs == [state["run"]]
        assert state["dedup"] == {"ranges": state["run"]}
        ranges = st.read_parquet(layout.capture_state("c", runs[0], part, ".dedup-ranges.parquet"))
        assert ranges.num_rows == len(set(ranges["source"].to_pylist()))  # one per series
    # Only the state folders the last commit refers to are left: each commit drops the ones
    # it superseded.
    folders = set(st.listdir(layout.capture_state_dir("c")))
    assert folders == commits.state_runs(head.state)


def test_a_state_saved_before_ranges_is_read_and_replaced(tmp_path: Path) -> None:
    """A partition state in the format before ranges (a whole memory of identities plus
    deltas) is read as the ranges it covers: readings sent again are still duplicates (and a
    changed one a conflict), new ones are accepted, and the run saves ranges instead."""
    store = str(tmp_path / "store")
    first = pa.table(
        {
            "source": [f"s{j % 4}" for j in range(40)],
            "seq": pa.array(range(40), pa.int64()),
            "time": pa.array([T0 + j * 10**9 for j in range(40)], pa.int64()),
            "value": [float(j) for j in range(40)],
        }
    )
    assert ingest(store, first, HORIZON)["accepted"] == 40
    st = Store(store)
    head = commits.last_commit(st, "captures/c", "c")
    assert head is not None
    for part, runs in head.state.items():
        # Rewrite the partition's state as the old format would have left it.
        rel = layout.capture_state("c", runs[0], part, ".json")
        doc = st.read_json(rel)
        ranges = st.read_parquet(layout.capture_state("c", runs[0], part, ".dedup-ranges.parquet"))
        st.delete(layout.capture_state("c", runs[0], part, ".dedup-ranges.parquet"))
        mine = first.filter(pa.compute.is_in(first["source"], ranges["source"]))
        n = mine.num_rows
        old = pa.table(
            {
                "source": mine["source"],
                "space": pa.array(["#seq"] * n),
                "key": mine["seq"],
                "content": pa.array(np.arange(n, dtype=np.uint64)),
                "time": mine["time"],
            }
        )
        half = n // 2
        st.write_parquet(layout.capture_state("c", runs[0], part, ".dedup.parquet"), old[:half])
        st.write_parquet(
            layout.capture_state("c", runs[0], part, ".dedup-delta.parquet"), old[half:]
        )
        doc["dedup"] = {"base": runs[0], "base_rows": half, "deltas": [runs[0]], "delta_rows": n}
        st.write_json(rel, doc)
    capture_mod._MEMORY.clear()
    changed = first.slice(3, 1).set_column(3, "value", pa.array([-1.0]))
    new = first.slice(36).set_column(1, "seq", pa.array(range(40, 44), pa.int64()))
    summary = ingest(store, pa.concat_tables([first.slice(0, 20), changed, new]), HORIZON)
    assert (summary["accepted"], summary["duplicates"], summary["rejected"]) == (4, 20, 1)
    head = commits.last_commit(st, "captures/c", "c")
    assert head is not None
    for part, runs in head.state.items():
        state = st.read_json(layout.capture_state("c", runs[0], part, ".json"))
        assert state["dedup"] == {"ranges": runs[0]}
