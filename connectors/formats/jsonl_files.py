"""JSON-lines files: one object a line, read in blocks by Arrow's JSON reader (line by line,
every value as text, only for a block it refuses); written with times as ISO-8601."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.json as pajson

MAX_LINE_BYTES = 1 << 20  # a JSON line longer than this is rejected, not parsed


def read(
    f: BinaryIO, batch_rows: int, delimiter: str | None = None
) -> Iterator[tuple[pa.Table, list[tuple[int, str, str]]]]:
    """A JSON-lines file as tables of ``batch_rows`` lines each, with its lines that hold no
    JSON object as (line, why, text)."""
    line_no = 1
    while lines := _take_lines(f, batch_rows):
        block = b"".join(ln for ln in lines if ln.strip())
        try:
            if any(len(ln) > MAX_LINE_BYTES for ln in lines):
                raise pa.ArrowInvalid("over-long line")
            yield (pajson.read_json(io.BytesIO(block)) if block else pa.table({})), []
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            yield _fallback(lines, line_no)
        line_no += len(lines)


def _fallback(lines: list[bytes], first_line: int) -> tuple[pa.Table, list[tuple[int, str, str]]]:
    """Parse line by line (only for a block pyarrow refused): every value becomes text."""
    records: list[dict[str, Any]] = []
    bad: list[tuple[int, str, str]] = []
    for i, line in enumerate(lines):
        text = line.decode("utf-8", errors="replace")
        if not text.strip():
            continue
        try:
            if len(line) > MAX_LINE_BYTES:
                raise ValueError(f"line is longer than {MAX_LINE_BYTES} bytes")
            obj = json.loads(text)
            if not isinstance(obj, dict):
                raise ValueError(f"a line must hold a JSON object, not {type(obj).__name__}")
        except ValueError as exc:
            bad.append((first_line + i, f"not a JSON object: {exc}"[:300], text[:4096]))
            continue
        records.append(
            {k: v if v is None or isinstance(v, str) else json.dumps(v) for k, v in obj.items()}
        )
    names = list(dict.fromkeys(k for r in records for k in r))
    table = pa.table({n: pa.array([r.get(n) for r in records], pa.string()) for n in names})
    return table, bad


def _readline_capped(f: BinaryIO) -> bytes:
    """One line; an over-long line is cut to MAX_LINE_BYTES + 1 and the rest skipped."""
    line = f.readline(MAX_LINE_BYTES + 1)
    if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
        while chunk := f.readline(MAX_LINE_BYTES):
            if chunk.endswith(b"\n"):
                break
    return line


def _take_lines(f: BinaryIO, n: int) -> list[bytes]:
    lines = []
    for _ in range(n):
        line = _readline_capped(f)
        if not line:
            break
        lines.append(line)
    return lines


def write(table: pa.Table, out: BinaryIO) -> None:
    """One JSON object a row, times as ISO-8601, floats with 15 digits (pandas' most); an
    empty table writes nothing (pandas writes "{}" lines for a frame without columns)."""
    if table.num_rows:
        text = table.to_pandas().to_json(
            orient="records", lines=True, date_format="iso", date_unit="ns", double_precision=15
        )
        out.write((text if text.endswith("\n") else text + "\n").encode())
