"""File sources: formats, malformed lines, batching, resume."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from obsflow.connectors.batch import RawBatch
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.registry import format_of
from obsflow.connectors.sources.files import FileSource


def drain(source: FileSource, part: str, resume: int | None = None) -> tuple[list[RawBatch], int]:
    p = source.build_part("read", part, resume)
    out: list[RawBatch] = []
    try:
        while True:
            out.extend(p.next_batch())
    except StopIteration:
        pass
    finally:
        pos = p.snapshot()
        p.close()
    return out, pos


def test_format_is_chosen_by_extension() -> None:
    assert format_of("s3://b/x.PARQUET").name == "parquet"
    assert format_of("a.csv").name == "csv"
    assert format_of("a.jsonl").name == "jsonl"
    with pytest.raises(ConfigError, match=r"\.parquet, \.csv or \.jsonl"):
        format_of("a.xlsx")


def test_source_validates_at_construction() -> None:
    with pytest.raises(ConfigError, match="no input"):
        FileSource([])
    with pytest.raises(ConfigError, match="twice"):
        FileSource(["a.csv", "a.csv"])


def test_parquet_is_read_in_batches_of_the_asked_size(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"a": list(range(10))}), path)
    batches, pos = drain(FileSource([str(path)], batch_rows=4), str(path))
    assert [b.table.num_rows for b in batches] == [4, 4, 2]
    assert [b.offset for b in batches] == [0, 4, 8]
    assert pos == 10


def test_csv_reads_every_column_as_text_and_rejects_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("source,time,value\na,1,2.5\nb,2\nc,3,x\nd,4,5,6\n")
    batches, pos = drain(FileSource([str(path)]), str(path))
    table = pa.concat_tables([b.table for b in batches])
    rejects = pa.concat_tables([b.rejects for b in batches])
    assert table.to_pydict() == {"source": ["a", "c"], "time": ["1", "3"], "value": ["2.5", "x"]}
    assert rejects.column("reason").to_pylist() == ["malformed", "malformed"]
    assert rejects.column("raw").to_pylist() == ["b,2", "d,4,5,6"]
    # Malformed text is no record: no record index; the message names the file's line.
    assert rejects.column("row").to_pylist() == [None, None]
    assert [m.split(":")[0] for m in rejects.column("message").to_pylist()] == ["line 3", "line 5"]
    assert pos == 4 == sum(b.records for b in batches)


def test_jsonl_falls_back_line_by_line_only_for_bad_blocks(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(
        '{"source":"a","time":1,"value":2}\n{"source":"b","time":"x","value":"y"}\n'
        "not json\n[1]\n"
        '{"source":"c","time":3,"value":null}\n'
    )
    batches, pos = drain(FileSource([str(path)]), str(path))
    table = pa.concat_tables([b.table for b in batches], promote_options="default")
    rejects = pa.concat_tables([b.rejects for b in batches])
    assert table.column("source").to_pylist() == ["a", "b", "c"]
    assert table.column("time").to_pylist() == ["1", "x", "3"]
    assert rejects.column("row").to_pylist() == [None, None]
    assert [m.split(":")[0] for m in rejects.column("message").to_pylist()] == ["line 3", "line 4"]
    assert pos == 5


def test_jsonl_overlong_line_is_rejected_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    big = '{"source":"a","time":1,"value":"' + "9" * (2 << 20) + '"}'
    path.write_text(big + "\n" + '{"source":"b","time":2,"value":1}\n')
    batches, _ = drain(FileSource([str(path)]), str(path))
    rejects = pa.concat_tables([b.rejects for b in batches])
    assert rejects.num_rows == 1
    assert "longer than" in rejects.column("message")[0].as_py()
    assert len(rejects.column("raw")[0].as_py()) <= 4096
    table = pa.concat_tables([b.table for b in batches if b.table.num_rows])
    assert table.column("source").to_pylist() == ["b"]


def test_resume_from_a_snapshot_neither_skips_nor_repeats(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"a": list(range(10))}), path)
    src = FileSource([str(path)], batch_rows=3)
    part = src.build_part("read", str(path), None)
    first = part.next_batch()[0]
    pos = part.snapshot()
    part.close()
    rest, _ = drain(src, str(path), resume=pos)
    seen = first.table.column("a").to_pylist() + [
        v for b in rest for v in b.table.column("a").to_pylist()
    ]
    assert seen == list(range(10))
