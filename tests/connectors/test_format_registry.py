"""The format table: a made-up input format is one reader and one entry in ``FORMATS``, and
``obsflow ingest`` reads it like the built-in ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from obsflow.connectors.datasets import reads
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats import registry
from obsflow.connectors.formats.registry import FORMATS, Format, format_of
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main

TSV = (
    "source\ttime\tvalue\n"
    "b01\t2026-01-01T00:00:00Z\t18.25\n"
    "b01\t2026-01-01T00:01:00Z\t18.5\n"
    "b02\t2026-01-01T00:00:30Z\t-1.75\n"
    "b02\t2026-01-01T00:02:00Z\t0.125\n"
)


def read_tsv(
    f: BinaryIO, batch_rows: int, delimiter: str | None = None
) -> Iterator[tuple[pa.Table, list[tuple[int, str, str]]]]:
    """The made-up format's reader: tab-separated text, all of it in one batch."""
    yield pacsv.read_csv(f, parse_options=pacsv.ParseOptions(delimiter="\t")), []


@pytest.fixture
def tsv(monkeypatch: pytest.MonkeyPatch) -> Format:
    """``.tsv`` registered for the test only (the entry is removed afterwards)."""
    entry = Format("tsv", (".tsv",), "text/tab-separated-values", read=read_tsv)
    monkeypatch.setitem(FORMATS, "tsv", entry)
    return entry


def test_a_registered_format_is_ingested_like_a_built_in_one(
    tsv: Format, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "buoys.tsv"
    path.write_text(TSV)
    store = str(tmp_path / "store")
    assert format_of(str(path)) is tsv
    code = main(["ingest", str(path), "--store", store, "--capture", "t", "-q"])
    assert code == 0, capsys.readouterr().err
    got = reads.read_capture(Store(store), "t").to_pandas()
    got = got[["source", "time", "value"]].sort_values(["source", "time"], ignore_index=True)
    want = pd.read_csv(path, sep="\t")
    want["time"] = pd.to_datetime(want["time"], utc=True)
    want = want.sort_values(["source", "time"], ignore_index=True)
    assert got["source"].tolist() == want["source"].tolist()
    assert got["time"].dt.as_unit("ns").tolist() == want["time"].dt.as_unit("ns").tolist()
    assert got["value"].tolist() == want["value"].tolist()


def test_an_unknown_extension_lists_the_registered_ones(
    tsv: Format, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match=r"use \.parquet, \.csv, \.jsonl or \.tsv"):
        format_of("a.xlsx")
    assert main(["ingest", "x.xlsx", "--store", str(tmp_path)]) == 2
    assert "use .parquet, .csv, .jsonl or .tsv" in capsys.readouterr().err
    # A format that only reads is not offered for writing.
    with pytest.raises(ConfigError, match=r"use \.parquet, \.csv or \.jsonl$"):
        registry.write_table(pa.table({"a": [1]}), str(tmp_path / "out.tsv"))


def test_the_entry_is_gone_after_its_test() -> None:
    assert "tsv" not in FORMATS
    assert [f.name for f in FORMATS.values() if f.read] == ["parquet", "csv", "jsonl"]
    assert [f.name for f in FORMATS.values() if f.encode] == ["csv", "jsonl", "json", "arrow"]
