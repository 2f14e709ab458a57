"""JSON-lines files: one object a line, read in blocks by Arrow's JSON reader (line by line,
every value as text, only for a block it refuses or must not see); written with times as
ISO-8601.

A line that is no record is a ``malformed`` dead letter, never an error or a mangled record;
the checks for it here serve broker messages too (``formats.messages``):

- longer than the record cap (``--max-record-size``, ``InputSpec.max_record_size``): read no
  further than the cap, the rest of the line skipped;
- not UTF-8: refused, and its dead letter's ``raw`` keeps the bytes escaped (``raw_bytes``
  gives them back);
- nested too deeply for Python's ``json`` (``RecursionError``), a key twice in one object, a
  string holding a lone surrogate (``"\\ud800"``: no UTF-8 text), not JSON at all.

Arrow's JSON reader recurses once per nesting level, so a deep enough line overflows the
thread's stack (a crash, not an error: 20,000 levels fit in 40 kB). It is given only text that
``arrow_safe`` finds shallow enough, and a table nested deeper than ``ARROW_DEPTH`` is read again
in Python, which refuses what is too deep for it.
"""

from __future__ import annotations

import codecs
import io
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from obsflow.connectors.formats.schema import MAX_RECORD_BYTES

RAW_BYTES = 4096  # how much of a refused record its dead letter keeps
ARROW_DEPTH = 64  # nesting Arrow's reader may see; a reading is flat (a payload: 2 levels)
SAFE_DEPTH = 2048
"""Nesting Arrow's reader survives on any thread that runs it here, with room to spare: it
takes ~420 bytes of stack a level, and a Bytewax worker's thread holds 6,000 levels (a main
thread 20,000). A text with no more ``[`` and ``{`` than this nests no deeper."""
DEFAULT_BLOCK = 1 << 20  # Arrow's JSON reader's block size: a text must fit in one
CAP_OPTION = "(--max-record-size)"
SKIP_BYTES = 1 << 16  # the rest of an over-long line is skipped in reads of this size
ARROW_ERRORS = (
    pa.ArrowInvalid,
    pa.ArrowNotImplementedError,
    pa.ArrowTypeError,
    pa.ArrowCapacityError,
    pa.ArrowIndexError,
)
"""What Arrow raises for input it cannot read as one table (or reads into an invalid one): the
block is then read in Python, which says which record is at fault."""


class RecordError(ValueError):
    """Why a text is no record; ``deep``: it nests too deeply for Python's ``json``."""

    def __init__(self, why: str, *, deep: bool = False) -> None:
        super().__init__(why[:300])
        self.deep = deep


def read(
    f: BinaryIO,
    batch_rows: int,
    delimiter: str | None = None,
    *,
    max_bytes: int = MAX_RECORD_BYTES,
) -> Iterator[tuple[pa.Table, list[tuple[int, str, str]]]]:
    """A JSON-lines file as tables of ``batch_rows`` lines each, with its lines that hold no
    record as (line, why, raw text); a line longer than ``max_bytes`` (its line end not
    counted) is one of them. A file that is one JSON array (``.json`` as pandas'
    ``to_json(orient="records")`` or ``json.dump(rows, f, indent=2)`` write it) is read as
    its elements, each a line."""
    elements = _array_file(f)
    if elements is not None:
        f = io.BytesIO(b"\n".join(elements))
    line_no = 1
    while True:
        lines, cut = _take_lines(f, batch_rows, max_bytes)
        if not lines:
            return
        table = None if cut else _arrow_table(lines)
        yield (table, []) if table is not None else _fallback(lines, line_no, max_bytes)
        line_no += len(lines)


MAX_ARRAY_FILE = 256 << 20
"""A file that is one JSON array is parsed whole, up to this size (JSON lines have no limit)."""


def _array_file(f: BinaryIO) -> list[bytes] | None:
    """The elements of a file that is one JSON array of records, each as one line of JSON;
    None (the file rewound) for anything else — JSON lines, or an array that is not valid,
    whose lines are then refused one by one as they are read."""
    if not f.seekable():
        return None
    start = f.tell()
    head = f.read(4096).lstrip()
    if not head.startswith(b"["):
        f.seek(start)
        return None
    f.seek(start)
    doc = f.read(MAX_ARRAY_FILE + 1)
    try:
        if len(doc) > MAX_ARRAY_FILE:
            raise RecordError("too large to read whole")
        array = parse(doc)
    except RecordError:
        f.seek(start)
        return None
    if not isinstance(array, list):
        f.seek(start)
        return None
    # (one element per line, as JSON lines: each then read, checked and refused alone)
    return [json.dumps(e, ensure_ascii=False, allow_nan=True).encode() for e in array]


def _arrow_table(lines: list[bytes]) -> pa.Table | None:
    """The lines as one table in one Arrow call (blank lines it skips), or None when Arrow
    must not or cannot read them: the caller reads them line by line."""
    lengths = np.fromiter(map(len, lines), np.int64, len(lines))
    block = b"".join(lines)
    if not (utf8(block) and arrow_safe(lines, lengths)):
        return None
    return arrow_read(block, int(lengths.max()))


def arrow_read(block: bytes, longest: int) -> pa.Table | None:
    """Newline-separated JSON texts (the longest ``longest`` bytes) as one table in one Arrow
    call; None when Arrow refuses them, or they nest deeper than ``ARROW_DEPTH``."""
    options = None
    if longest + 2 > DEFAULT_BLOCK:
        options = pajson.ReadOptions(block_size=longest + 2)
    try:
        table = pajson.read_json(io.BytesIO(block), read_options=options)
        # Arrow's type inference can build an invalid array (a list of nulls in a struct
        # field first seen empty, then holding values): checked, in time independent of rows.
        table.validate()
    except ARROW_ERRORS:
        return None
    return None if type_depth(table.schema) > ARROW_DEPTH else table


def _fallback(
    lines: list[bytes], first_line: int, max_bytes: int
) -> tuple[pa.Table, list[tuple[int, str, str]]]:
    """Parse line by line (only for a block Arrow did not read): every value becomes text."""
    records: list[dict[str, str | None]] = []
    bad: list[tuple[int, str, str]] = []
    for i, line in enumerate(lines):
        if line.isspace() and not isinstance(line, _Cut):
            continue
        try:
            if isinstance(line, _Cut):
                raise RecordError(f"longer than the record cap of {max_bytes:,} bytes {CAP_OPTION}")
            obj = parse(line)
            if not isinstance(obj, dict):
                raise RecordError(f"a line holds a JSON object, not {kind(obj)}")
            records.append(as_record(obj))
        except RecordError as exc:
            bad.append((first_line + i, *refused(line, str(exc), line=True)))
    return records_table(records), bad


def parse(doc: bytes) -> Any:
    """One JSON text, strictly: UTF-8, every key once in its object, no lone surrogate."""
    try:
        text = doc.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"not UTF-8 (byte {exc.start:,}: {exc.reason})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_unique_keys, parse_int=_integer)
        if _SURROGATE.search(text):  # (only then can a string be no UTF-8 text)
            json.dumps(obj, ensure_ascii=False).encode()
    except RecursionError:
        raise RecordError("nested too deeply", deep=True) from None
    except RecordError:
        raise
    except UnicodeEncodeError:
        raise RecordError("a string holds a lone surrogate (\\ud800-\\udfff): no text") from None
    except ValueError as exc:
        raise RecordError(f"not JSON: {exc}") from None
    return obj


def _integer(digits: str) -> int | float:
    # Python refuses to read an integer of over 4,300 digits (quadratic time): a float (inf),
    # as Arrow's reader makes of it, so that either path gives the same reading.
    return int(digits) if len(digits) <= 4300 else float(digits)


_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # (Arrow refuses a key given twice too: either path, the same dead letter)
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RecordError(f"key {key[:60]!r} given twice in one object")
            seen.add(key)
    return obj


def as_record(obj: dict[str, Any]) -> dict[str, str | None]:
    """A parsed object as a record: every value as text (nested ones as JSON)."""
    try:
        return {k: v if v is None or isinstance(v, str) else json.dumps(v) for k, v in obj.items()}
    except RecursionError:  # (parsed just within the limit, written back beyond it)
        raise RecordError("nested too deeply", deep=True) from None


def records_table(records: list[dict[str, str | None]]) -> pa.Table:
    """Records as a table of text columns, one row each: ``{}`` too (a row of no fields, as
    Arrow's reader makes of it, that the normalizer finds missing its fields)."""
    names = list(dict.fromkeys(k for r in records for k in r))
    if not names:
        return pa.Table.from_struct_array(pa.array(records, pa.struct([])))
    return pa.table({n: pa.array([r.get(n) for r in records], pa.string()) for n in names})


def kind(obj: Any) -> str:
    """What a JSON value is, in JSON's words."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return "null" if obj is None else names.get(type(obj), "a number")


def refused(doc: bytes, why: str, *, line: bool = False) -> tuple[str, str]:
    """(why, raw) of a record refused: raw is its first ``RAW_BYTES`` bytes (a ``line``'s
    without its line end) as text, or, when they are not UTF-8, escaped (and why says so;
    ``raw_bytes`` gives them back)."""
    end = len(doc)
    while line and end and doc[end - 1] in b"\r\n":
        end -= 1
    head = doc[: min(end, RAW_BYTES)]
    cut = end > RAW_BYTES or isinstance(doc, _Cut)
    try:
        return why, head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and cut:
            return why, head[: exc.start].decode("utf-8")  # (a character cut at the cap)
    raw = head.replace(b"\\", b"\\\\").decode("utf-8", errors="backslashreplace")
    return f"{why}; raw has its bytes escaped (\\xNN, \\\\ for \\)", raw


def raw_bytes(raw: str) -> bytes:
    """The bytes of a dead letter's escaped ``raw`` (see ``refused``)."""
    return codecs.escape_decode(raw.encode("utf-8"))[0]


def utf8(block: bytes) -> bool:
    """Whether ``block`` is valid UTF-8, checked in place (Arrow's reader keeps invalid bytes
    in its strings, and turns them into U+FFFD in keys)."""
    offsets = pa.py_buffer(np.array([0, len(block)], np.int64))
    text = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(block)])
    try:
        text.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def arrow_safe(docs: Sequence[bytes], lengths: np.ndarray) -> bool:
    """Whether Arrow's reader may parse ``docs`` (of ``lengths`` bytes): none nests deeper
    than ``SAFE_DEPTH``. A doc that short cannot; a longer one with as few ``[`` and ``{``
    cannot either; only one with more is scanned (``nesting``), and refused deeper than
    ``ARROW_DEPTH``. (A shallower table's depth ``arrow_read`` checks.)"""
    long = (docs[i] for i in np.flatnonzero(lengths > SAFE_DEPTH).tolist())
    deep = [d for d in long if len(d.translate(None, _NOT_OPENERS)) > SAFE_DEPTH]
    return not deep or nesting(b"\n".join(deep)) <= ARROW_DEPTH


_NOT_OPENERS = bytes(c for c in range(256) if c not in b"[{")  # (deleted: the openers stay)
_ESCAPE = re.compile(rb"\\[^\n]")  # (a line end is never escaped: it separates texts)
_CLASSES = bytearray(256)  # a byte's class: brackets 1 and -1 (as int8), quote 2, line end 3
for _chars, _class in ((b"[{", 1), (b"]}", 0xFF), (b'"', 2), (b"\n", 3)):
    for _c in _chars:
        _CLASSES[_c] = _class
UNCLOSED = 1 << 62


def nesting(block: bytes) -> int:
    """How deeply arrays and objects nest in newline-separated JSON texts, brackets in strings
    not counted, in numpy (a text may nest a million levels: no recursion here). Never less
    than a parser of one of them reaches: a closer too many lowers no later depth, and a text
    whose strings do not close gives ``UNCLOSED``."""
    if b"\\" in block:  # an escaped quote or backslash delimits nothing
        block = _ESCAPE.sub(b"__", block)
    kinds = np.frombuffer(block.translate(bytes(_CLASSES)), np.int8)
    kinds = kinds[kinds != 0]  # brackets +1/-1, quotes 2, line ends 3
    quotes = np.cumsum(kinds == 2, dtype=np.int64)
    if len(quotes) and ((quotes[kinds == 3] % 2).any() or quotes[-1] % 2):
        return UNCLOSED
    steps = kinds[(quotes % 2 == 0) & ((kinds == 1) | (kinds == -1))]
    depth = np.cumsum(steps, dtype=np.int64)
    return int((depth - np.minimum(np.minimum.accumulate(depth), 0)).max(initial=0))


def type_depth(schema: pa.Schema) -> int:
    """How deeply a table's types nest (1: flat), found without recursion; counting stops
    past ``ARROW_DEPTH``."""
    deepest = 0
    stack = [(f.type, 1) for f in schema]
    while stack and deepest <= ARROW_DEPTH:
        t, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((t.field(i).type, depth + 1) for i in range(t.num_fields))
    return deepest


class _Cut(bytes):
    """The first ``RAW_BYTES`` of a line longer than the cap (all its dead letter keeps)."""


def _readline_capped(f: BinaryIO, max_bytes: int) -> bytes:
    """One line; a line longer than ``max_bytes`` is read no further: its first bytes as a
    ``_Cut``, the rest skipped in small reads."""
    line = f.readline(max_bytes + 1)
    if len(line) <= max_bytes or line.endswith(b"\n"):
        return line
    while chunk := f.readline(SKIP_BYTES):
        if chunk.endswith(b"\n"):
            break
    return _Cut(line[:RAW_BYTES])


def _take_lines(f: BinaryIO, n: int, max_bytes: int) -> tuple[list[bytes], bool]:
    """Up to ``n`` lines, and whether one of them was too long."""
    lines = []
    cut = False
    for _ in range(n):
        line = _readline_capped(f, max_bytes)
        if not line:
            break
        lines.append(line)
        cut = cut or isinstance(line, _Cut)
    return lines, cut


def write(table: pa.Table, out: BinaryIO) -> None:
    """One JSON object a row, times as ISO-8601, floats with 15 digits (pandas' most); an
    empty table writes nothing (pandas writes "{}" lines for a frame without columns)."""
    if table.num_rows:
        text = table.to_pandas().to_json(
            orient="records", lines=True, date_format="iso", date_unit="ns", double_precision=15
        )
        out.write((text if text.endswith("\n") else text + "\n").encode())
