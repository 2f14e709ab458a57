"""The instrument simulator: deterministic, resumable, realistic enough."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from obsflow.connectors.errors import ConfigError, ObsflowError
from obsflow.connectors.formats.parsing import parse_duration
from obsflow.connectors.sources.simulator import (
    BLOCK_SAMPLES,
    SimSource,
    SimSpec,
    generate,
)


def test_durations() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1m") == 60
    assert parse_duration("1d") == 86400
    assert parse_duration("3") == 3
    with pytest.raises(ConfigError):
        parse_duration("soon")


def test_url_parameters_and_validation() -> None:
    spec = SimSpec.from_url("sim://?sources=3&channels=a,b,c&rate=2&duration=1m&seed=5")
    assert (spec.sources, spec.channels, spec.rate, spec.duration, spec.seed) == (
        3,
        ("a", "b", "c"),
        2.0,
        60.0,
        5,
    )
    with pytest.raises(ConfigError, match="unknown"):
        SimSpec.from_url("sim://?sauces=3")
    with pytest.raises(ObsflowError, match=r"channel id '\.\./x'"):
        SimSpec.from_url("sim://?channels=../x")
    with pytest.raises(ConfigError, match="limit"):
        SimSpec.from_url("sim://?sources=100000&rate=1000000&duration=1d")


def test_same_seed_same_readings_other_seed_other_values() -> None:
    spec = SimSpec(sources=2, rate=50, duration=30, seed=1)
    a, b = generate(spec), generate(spec)
    assert a.equals(b)
    c = generate(SimSpec(sources=2, rate=50, duration=30, seed=2))
    assert not np.allclose(a.column("value").to_numpy()[:10], c.column("value").to_numpy()[:10])


def test_readings_are_ordered_and_identities_unique() -> None:
    spec = SimSpec(sources=2, rate=1000, duration=40, seed=3, gap_prob=1.0)
    t = generate(spec).to_pandas()
    assert len(t) < spec.readings  # gap_prob=1: every block lost some samples
    for _, g in t.groupby("source"):
        assert g["seq"].is_unique
        assert g["seq"].is_monotonic_increasing
        assert g["time"].is_monotonic_increasing
    assert set(t["channel"]) == {"temperature", "pressure"}
    assert t["value"].notna().all()


def test_source_partitions_cover_the_whole_simulation_and_resume_by_block() -> None:
    url = f"sim://?sources=2&rate={BLOCK_SAMPLES / 10}&duration=25s&seed=4"
    src = SimSource(url)
    whole = generate(src.spec)
    got = []
    for part in src.list_parts():
        p = src.build_part("sim", part, None)
        got.append(p.next_batch()[0].table)
        resumed = src.build_part("sim", part, p.snapshot())
        try:
            while True:
                got.extend(b.table for b in resumed.next_batch())
        except StopIteration:
            pass
    assert (
        pa.concat_tables(got)
        .sort_by([("source", "ascending"), ("seq", "ascending")])
        .equals(whole.sort_by([("source", "ascending"), ("seq", "ascending")]))
    )


def test_a_later_simulation_of_the_same_sources_shares_no_seq_with_an_earlier_one() -> None:
    """A second ``simulate`` into the same store is new readings, not conflicts: seq counts
    samples since the epoch, so it follows the time, not the run."""
    first = SimSpec(sources=2, rate=10, duration=30, start="2026-03-01T00:00:00Z")
    later = SimSpec(sources=2, rate=10, duration=30, start="2026-03-01T00:00:20Z")
    a, b = generate(first).to_pandas(), generate(later).to_pandas()
    both = a.merge(b, on=["source", "seq"], suffixes=("_a", "_b"))
    assert len(both) > 0  # the 10 s they share: the same samples, the same times
    assert (both["time_a"] == both["time_b"]).all()
    assert (both["channel_a"] == both["channel_b"]).all()
    after = b[b["time"] >= a["time"].max() + pd.Timedelta("100ms")]
    assert set(after["seq"]).isdisjoint(a["seq"])
    seq = a[a["source"] == a["source"].iloc[0]].sort_values("seq")
    n_ch = seq["channel"].nunique()
    assert seq["seq"].iloc[0] == pd.Timestamp(first.start).timestamp() * first.rate * n_ch
