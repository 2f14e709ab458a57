"""The reading schema and the vectorized normalizer."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obsflow.connectors.errors import ConfigError, SchemaError
from obsflow.connectors.formats.normalize import normalize
from obsflow.connectors.formats.parsing import parse_times
from obsflow.connectors.formats.schema import READING_SCHEMA, InputSpec
from obsflow.connectors.ids import check_id, check_name


def norm(table: pa.Table, **spec: object):
    return normalize(table, InputSpec(**spec), origin="in.csv", offset=100)  # type: ignore[arg-type]


def test_valid_table_passes_through_unchanged() -> None:
    t = pa.table(
        {
            "source": ["buoy-1", "buoy.2:a"],
            "time": pa.array([0, 1_700_000_000_000_000_000], pa.timestamp("ns", "UTC")),
            "channel": ["temp", "temp"],
            "value": [1.5, float("nan")],
            "seq": [7, 8],
        }
    )
    r = norm(t)
    assert r.rejects.num_rows == 0
    assert r.readings.schema.names == READING_SCHEMA.names
    assert r.readings.column("seq").to_pylist() == [7, 8]
    assert r.readings.column("time").cast(pa.int64()).to_pylist() == [0, 1_700_000_000_000_000_000]
    # NaN is a missing value, kept (a null is no value at all: missing_field, below)
    assert np.isnan(r.readings.column("value")[1].as_py())


def test_channel_defaults_to_value_and_seq_is_left_for_the_capture() -> None:
    r = norm(pa.table({"source": ["a"], "time": [5], "value": [1.0]}))
    assert r.readings.column("channel").to_pylist() == ["value"]
    assert r.readings.column("seq").null_count == 1


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"source": "../etc"}, "bad_id"),
        ({"source": "a/b"}, "bad_id"),
        ({"source": ""}, "bad_id"),
        ({"source": "x" * 129}, "bad_id"),
        ({"source": "s3?versionId=1"}, "bad_id"),
        ({"source": None}, "bad_id"),
        ({"channel": "temp erature"}, "bad_id"),
        ({"time": "yesterday"}, "bad_time"),
        ({"time": None}, "bad_time"),
        ({"time": "99999-01-01"}, "bad_time"),
        ({"value": "abc"}, "bad_value"),
        ({"value": "inf"}, "bad_value"),
        ({"value": None}, "missing_field"),
        ({"value": ""}, "missing_field"),
        ({"value": "  "}, "missing_field"),
        ({"seq": "-1"}, "bad_seq"),
        ({"seq": "1.5"}, "bad_seq"),
    ],
)
def test_bad_rows_are_rejected_with_a_reason_and_their_raw_form(bad: dict, reason: str) -> None:
    good = {
        "source": "ok",
        "time": "2024-01-01T00:00:00Z",
        "channel": "c",
        "value": "1",
        "seq": "1",
    }
    row = {**good, **bad}
    t = pa.table({k: pa.array([good[k], row[k]], pa.string()) for k in good})
    r = norm(t)
    assert r.readings.num_rows == 1
    assert r.rejects.to_pylist()[0]["reason"] == reason
    assert r.rejects.column("row").to_pylist() == [101]  # offset + position in the batch
    assert r.rejects.column("origin").to_pylist() == ["in.csv"]
    assert json.loads(r.rejects.column("raw")[0].as_py()) == row


def test_missing_required_column_rejects_every_row_and_says_how_to_map() -> None:
    r = norm(pa.table({"source_id": ["a", "b"], "time": [1, 2], "value": [1.0, 2.0]}))
    assert r.readings.num_rows == 0
    assert r.rejects.column("reason").to_pylist() == ["missing_field"] * 2
    assert "--map source=COLUMN" in r.rejects.column("message")[0].as_py()


def test_duplicate_column_is_a_schema_reject() -> None:
    t = pa.Table.from_arrays(
        [pa.array(["a"]), pa.array(["b"]), pa.array([1]), pa.array([1.0])],
        names=["source", "source", "time", "value"],
    )
    assert norm(t).rejects.column("reason").to_pylist() == ["bad_schema"]


def test_mapping_renames_columns() -> None:
    t = pa.table({"source_id": ["a"], "event_time": [10], "v": [2.0]})
    spec = InputSpec.parse_map("source=source_id,time=event_time,value=v")
    r = normalize(t, spec, origin="x", offset=0)
    assert r.readings.column("source").to_pylist() == ["a"]
    assert r.readings.column("value").to_pylist() == [2.0]


def test_bad_map_and_time_unit_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown field"):
        InputSpec.parse_map("sauce=source_id")
    with pytest.raises(ConfigError, match="field=column"):
        InputSpec.parse_map("source")
    with pytest.raises(ConfigError, match="time unit"):
        InputSpec(time_unit="days")


@pytest.mark.parametrize(
    ("unit", "factor"), [("ns", 1), ("us", 10**3), ("ms", 10**6), ("s", 10**9)]
)
def test_integer_epochs_in_every_unit(unit: str, factor: int) -> None:
    col = pa.chunked_array([pa.array([0, 1_455_494_400, -3], pa.int64())])
    ns, ok = parse_times(col, unit)
    assert ok.all()
    assert ns.tolist() == [0, 1_455_494_400 * factor, -3 * factor]


def test_epochs_that_overflow_nanoseconds_are_invalid() -> None:
    _, ok = parse_times(pa.chunked_array([pa.array([10**10, 9 * 10**9], pa.int64())]), "s")
    assert ok.tolist() == [False, True]


def test_naive_timestamps_mean_utc_and_aware_ones_are_converted() -> None:
    naive = pa.chunked_array(
        [pa.array([pd.Timestamp("2020-01-01 12:00").to_datetime64()], pa.timestamp("us"))]
    )
    aware = pa.chunked_array(
        [
            pa.array(
                [pd.Timestamp("2020-01-01 13:00", tz="Europe/Paris")],
                pa.timestamp("ms", tz="Europe/Paris"),
            )
        ]
    )
    expected = pd.Timestamp("2020-01-01 12:00", tz="UTC").value
    assert parse_times(naive, "ns")[0].tolist() == [expected]
    assert parse_times(aware, "ns")[0].tolist() == [expected]


@given(st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1))
@settings(max_examples=200)
def test_epoch_text_parses_exactly_like_the_integer(n: int) -> None:
    ns, ok = parse_times(pa.chunked_array([pa.array([str(n)])]), "ns")
    assert ok.tolist() == [True]
    assert ns.tolist() == [n]


@given(
    st.datetimes(
        min_value=pd.Timestamp("1700-01-01").to_pydatetime(),
        max_value=pd.Timestamp("2260-01-01").to_pydatetime(),
    )
)
@settings(max_examples=200)
def test_iso_text_parses_like_pandas(dt: object) -> None:
    ts = pd.Timestamp(dt)
    ns, ok = parse_times(pa.chunked_array([pa.array([ts.isoformat() + "Z"])]), "ns")
    assert ok.tolist() == [True]
    assert ns.tolist() == [ts.tz_localize("UTC").value]


def test_id_checks_name_the_bad_value_and_the_rule() -> None:
    assert check_id("NERACOOS.B01.SBE37") == "NERACOOS.B01.SBE37"
    with pytest.raises(SchemaError, match=r"'\.\./x' has '/' — use \[A-Za-z0-9\._:-\]"):
        check_id("../x")
    with pytest.raises(SchemaError, match="129 characters"):
        check_id("a" * 129)
    with pytest.raises(SchemaError, match="is empty"):
        check_name("", kind="capture name")
    with pytest.raises(SchemaError):
        check_name("a.b")  # dots could spell '..' in a path
    with pytest.raises(SchemaError):
        check_id(5)
