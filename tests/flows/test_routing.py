"""Capture partitions spread evenly over Bytewax workers: ``flows.steps.routing`` predicts where
Bytewax sends a key, checked against real dataflows."""

from __future__ import annotations

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.run import cli_main
from bytewax.testing import TestingSource

from obsflow.flows.steps.routing import part_of_key, partition_key, worker_of


class _Keep(op.StatefulBatchLogic[str, str, None]):
    def on_batch(self, values: list[str]) -> tuple[list[str], bool]:
        return values, self.RETAIN

    def snapshot(self) -> None:
        return None


def routed(keys: list[str], workers: int) -> dict[str, int]:
    """Where Bytewax's stateful step puts each key, with ``workers`` workers."""
    seen: dict[str, int] = {}
    flow = Dataflow("routing")
    items = op.input("in", flow, TestingSource([(k, k) for k in keys]))
    out = op.stateful_batch("keyed", items, lambda _: _Keep())
    op.inspect_debug("where", out, lambda _s, kv, _e, worker: seen.__setitem__(kv[0], worker))
    cli_main(flow, workers_per_process=workers)  # type: ignore[no-untyped-call]
    return seen


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_bytewax_sends_each_key_where_routing_predicts(workers: int) -> None:
    keys = [f"{p:04d}" for p in range(16)] + [partition_key(p) for p in range(16)]
    assert routed(keys, workers) == {k: worker_of(k, workers) for k in keys}


@pytest.mark.parametrize("workers", [1, 2, 4, 8])
def test_partitions_spread_evenly_over_workers(workers: int) -> None:
    for partitions in (4, 8, 16):
        shares = [0] * workers
        for p in range(partitions):
            shares[worker_of(partition_key(p), workers)] += 1
        assert max(shares) - min(shares) <= (1 if partitions < workers else 0)
        assert [part_of_key(partition_key(p)) for p in range(partitions)] == list(range(partitions))
    # (the plain keys did not: "0000".."0003" went 3:1 on two workers)
    assert [worker_of(f"{p:04d}", 2) for p in range(4)] == [0, 0, 1, 0]
