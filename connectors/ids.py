"""Identifier rules: what may become part of a path, an object key or a series name.

Source and channel ids follow ``[A-Za-z0-9._:-]{1,128}``; names of captures and views, which
become folder names, follow the stricter ``[A-Za-z0-9_-]{1,64}`` (no dots, so no ``..``).
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.errors import SchemaError

ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_ID_RE = re.compile(ID_PATTERN)
_NAME_RE = re.compile(NAME_PATTERN)


def _explain(value: str, allowed: str, limit: int) -> str:
    if not value:
        return "is empty"
    if len(value) > limit:
        return f"is {len(value)} characters long (at most {limit})"
    bad = sorted({c for c in value if not re.fullmatch(allowed, c)})
    return "has " + ", ".join(repr(c) for c in bad[:5])


def _check(value: object, rule: re.Pattern[str], chars: str, limit: int, kind: str) -> str:
    if not isinstance(value, str) or not rule.fullmatch(value):
        why = _explain(value, chars, limit) if isinstance(value, str) else "not text"
        raise SchemaError(f"{kind} {repr(value)[:80]} {why} — use {chars}{{1,{limit}}}", field=kind)
    return value


def check_id(value: object, *, kind: str = "source id") -> str:
    """Return ``value`` if it is a valid source/channel id, else raise ``SchemaError``."""
    return _check(value, _ID_RE, "[A-Za-z0-9._:-]", 128, kind)


def check_name(value: object, *, kind: str = "name") -> str:
    """Return ``value`` if it is a valid capture/view name, else raise ``SchemaError``."""
    return _check(value, _NAME_RE, "[A-Za-z0-9_-]", 64, kind)


def is_name(value: str) -> bool:
    """Whether ``value`` is a valid capture, view or run name (``check_name``)."""
    return _NAME_RE.fullmatch(value) is not None


def valid_ids(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Vectorized check: a boolean array, true where the id is valid (null counts as invalid)."""
    # Ids repeat: run the regex once per distinct value, then map back through the indices.
    enc = pc.dictionary_encode(values)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    per_value = pc.fill_null(pc.match_substring_regex(enc.dictionary, ID_PATTERN), False)
    ok = pc.take(per_value, enc.indices)
    return pc.fill_null(ok, False)
