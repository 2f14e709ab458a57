"""Payload references and their Arrow form: what a reading carries instead of its array.

A payload is a plain numeric numpy array (detector frame, waveform block, spectrum). Its *raw
bytes* are the array in C order, little-endian; the object key is derived only from their
sha256 (``payloads/ab/cd/<sha256>``). A ``PayloadRef`` records sha256, raw and stored size,
codec, dtype (an allow-list) and shape, and validates them on construction; payloads up to the
inline limit travel in the capture itself (codec "inline"). In tables, references are the
``payload_*`` columns (``PAYLOAD_SCHEMA``). Errors derive from ``PayloadError``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from obsflow.connectors.errors import ObsflowError

PAYLOAD_PREFIX = "payloads"
INLINE_LIMIT = 64 * 1024
MAX_PAYLOAD_BYTES = 1 << 30
MAX_NDIM = 32
HEADER_SIZE = 24
"""Bytes of the header every stored payload object starts with (``payload_codec``)."""

CODEC_INLINE = "inline"  # raw bytes in the capture, nothing in the payload store
CODEC_NONE = "none"  # header + raw bytes
CODEC_ZSTD = "zstd"  # header + one zstd frame of the raw bytes
CODEC_ZSTD_SHUFFLE = "zstd-shuffle"  # header + zstd of the bytes shuffled by item (width in header)
CODECS = (CODEC_INLINE, CODEC_NONE, CODEC_ZSTD, CODEC_ZSTD_SHUFFLE)

DTYPES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
)
"""Plain numeric dtypes a payload may have (no object, void, structured, datetime or longdouble)."""

_SHA_RE = re.compile(r"[0-9a-f]{64}")


# --- errors ---------------------------------------------------------------------------------


class PayloadError(ObsflowError, ValueError):
    """A payload or its reference is not what it claims to be."""


class PayloadRefError(PayloadError):
    """A reference (or an array offered for storage) is malformed: refused before any I/O."""


class PayloadTooLargeError(PayloadRefError):
    """A declared or actual size is beyond ``max_payload_bytes``."""


class PayloadMissingError(PayloadError, FileNotFoundError):
    """The object a reference points to does not exist."""


class PayloadCorruptError(PayloadError):
    """The stored object does not decode to what its reference describes."""


class PayloadSizeError(PayloadCorruptError):
    """The stored object, or what it decompresses to, has the wrong size."""


class PayloadHashError(PayloadCorruptError):
    """The payload's bytes do not have the sha256 of its reference."""


# --- references -----------------------------------------------------------------------------


def check_sha256(value: object) -> str:
    """Return ``value`` if it is 64 lowercase hex characters, else raise ``PayloadRefError``."""
    if not isinstance(value, str) or not _SHA_RE.fullmatch(value):
        raise PayloadRefError(
            f"payload sha256 {str(value)[:80]!r} is not 64 lowercase hex characters"
        )
    return value


def payload_key(sha256: str) -> str:
    """Store-relative key of a payload: ``payloads/ab/cd/<sha256>`` (sha256 validated first)."""
    sha = check_sha256(sha256)
    return f"{PAYLOAD_PREFIX}/{sha[:2]}/{sha[2:4]}/{sha}"


def _int(value: object, what: str) -> int:
    # pandas turns an integer column with nulls into floats: accept integral floats from rows.
    if isinstance(value, float | np.floating) and float(value).is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise PayloadRefError(f"payload {what} {value!r} is not an integer")
    return int(value)


def check_shape(shape: object) -> tuple[int, ...]:
    """A shape as a tuple of non-negative ints (at most 32 dimensions)."""
    if not isinstance(shape, tuple | list | np.ndarray):
        raise PayloadRefError(f"payload shape {shape!r} is not a sequence of integers")
    if len(shape) > MAX_NDIM:
        raise PayloadRefError(f"payload shape has {len(shape)} dimensions (at most {MAX_NDIM})")
    dims = tuple(_int(d, "shape entry") for d in shape)
    if any(d < 0 for d in dims):
        raise PayloadRefError(f"payload shape {dims} has a negative dimension")
    return dims


def numpy_dtype(name: object) -> np.dtype[Any]:
    """The little-endian numpy dtype of an allow-listed dtype name (no parsing of other text)."""
    if not isinstance(name, str) or name not in DTYPES:
        raise PayloadRefError(
            f"payload dtype {str(name)[:40]!r} is not allowed — use one of {', '.join(DTYPES)}"
        )
    return np.dtype(name).newbyteorder("<")


def dtype_name(dtype: np.dtype[Any]) -> str:
    """The allow-listed name of an array's dtype, or ``PayloadRefError``."""
    if dtype.fields is not None or dtype.subdtype is not None or dtype.name not in DTYPES:
        raise PayloadRefError(
            f"arrays of dtype {dtype!s} cannot be payloads — use one of {', '.join(DTYPES)}"
        )
    return dtype.name


def max_stored(raw_size: int) -> int:
    """Largest plausible stored object for a raw size (header + zstd's worst-case growth)."""
    return HEADER_SIZE + raw_size + (raw_size >> 7) + 1024


@dataclass(frozen=True)
class PayloadRef:
    """What a reading carries instead of its array. Validated on construction.

    ``sha256`` is of the raw bytes (C order, little-endian), ``raw_size`` their length,
    ``stored_size`` the stored object's length (header included; equal to ``raw_size`` for
    inline payloads), ``codec`` one of ``CODECS``, ``dtype`` one of ``DTYPES``.
    """

    sha256: str
    raw_size: int
    stored_size: int
    codec: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        check_sha256(self.sha256)
        raw = _int(self.raw_size, "raw size")
        stored = _int(self.stored_size, "stored size")
        shape = check_shape(self.shape)
        object.__setattr__(self, "raw_size", raw)
        object.__setattr__(self, "stored_size", stored)
        object.__setattr__(self, "shape", shape)
        if self.codec not in CODECS:
            raise PayloadRefError(
                f"payload codec {str(self.codec)[:40]!r} is unknown — one of {', '.join(CODECS)}"
            )
        itemsize = numpy_dtype(self.dtype).itemsize
        if raw < 0 or stored < 0:
            raise PayloadRefError(f"payload sizes must not be negative ({raw}, {stored})")
        if math.prod(shape) * itemsize != raw:
            raise PayloadRefError(
                f"payload shape {shape} of {self.dtype} is {math.prod(shape) * itemsize} "
                f"bytes, but the raw size is {raw}"
            )
        if self.codec == CODEC_INLINE:
            ok = stored == raw
        elif self.codec == CODEC_NONE:
            ok = stored == HEADER_SIZE + raw
        else:
            ok = HEADER_SIZE <= stored <= max_stored(raw)
        if not ok:
            raise PayloadRefError(
                f"payload stored size {stored} is impossible for {raw} raw bytes in {self.codec}"
            )

    @property
    def key(self) -> str:
        return payload_key(self.sha256)

    @property
    def np_dtype(self) -> np.dtype[Any]:
        return numpy_dtype(self.dtype)


@dataclass(frozen=True)
class Payload:
    """A reference plus, for inline payloads (codec "inline"), the raw bytes themselves."""

    ref: PayloadRef
    inline: bytes | None = None

    def __post_init__(self) -> None:
        if (self.ref.codec == CODEC_INLINE) != (self.inline is not None):
            raise PayloadRefError("inline bytes go with codec 'inline' and only with it")
        if self.inline is not None and len(self.inline) != self.ref.raw_size:
            raise PayloadSizeError(
                f"inline payload is {len(self.inline)} bytes, its reference says "
                f"{self.ref.raw_size}"
            )


# --- Arrow representation -------------------------------------------------------------------

REF_FIELDS = (
    pa.field("payload_sha256", pa.string()),
    pa.field("payload_raw_size", pa.int64()),
    pa.field("payload_stored_size", pa.int64()),
    pa.field("payload_codec", pa.string()),
    pa.field("payload_dtype", pa.string()),
    pa.field("payload_shape", pa.list_(pa.int64())),
)
INLINE_FIELD = pa.field("payload_inline", pa.binary())
PAYLOAD_SCHEMA = pa.schema([*REF_FIELDS, INLINE_FIELD])
"""Columns a table of readings gains for payloads; all null on rows without one."""
REF_TYPE = pa.struct(list(REF_FIELDS))
"""The reference alone as one struct column."""
_REF_NAMES = tuple(f.name for f in REF_FIELDS)


def payloads_to_arrow(items: Sequence[Payload | PayloadRef | None]) -> pa.Table:
    """A ``PAYLOAD_SCHEMA`` table, one row per item (``None``: a row without payload)."""
    refs = [i.ref if isinstance(i, Payload) else i for i in items]
    inline = [i.inline if isinstance(i, Payload) else None for i in items]
    columns = [
        [None if r is None else r.sha256 for r in refs],
        [None if r is None else r.raw_size for r in refs],
        [None if r is None else r.stored_size for r in refs],
        [None if r is None else r.codec for r in refs],
        [None if r is None else r.dtype for r in refs],
        [None if r is None else list(r.shape) for r in refs],
        inline,
    ]
    return pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, PAYLOAD_SCHEMA, strict=True)],
        schema=PAYLOAD_SCHEMA,
    )


def refs_to_arrow(refs: Sequence[PayloadRef | None]) -> pa.StructArray:
    """The references as one ``REF_TYPE`` struct column (``None``: null)."""
    table = payloads_to_arrow(refs)
    columns = [table.column(f.name).combine_chunks() for f in REF_FIELDS]
    mask = pa.array([r is None for r in refs], pa.bool_())
    return pa.StructArray.from_arrays(columns, fields=list(REF_FIELDS), mask=mask)


def refs_from_arrow(data: pa.Table | pa.RecordBatch | pa.StructArray) -> list[PayloadRef | None]:
    """References of the rows of a table with the ``payload_*`` columns (or a ``REF_TYPE`` array).

    Rows whose ``payload_sha256`` is null have none (``None``). Every reference is validated;
    a bad one raises ``PayloadRefError`` naming its row.
    """
    if isinstance(data, pa.StructArray | pa.ChunkedArray):
        data = pa.Table.from_struct_array(data)
    missing = [n for n in _REF_NAMES if n not in data.schema.names]
    if missing:
        raise PayloadRefError(f"payload columns {missing} are missing")
    out: list[PayloadRef | None] = []
    columns = [data.column(n).to_pylist() for n in _REF_NAMES]
    for row, values in enumerate(zip(*columns, strict=True)):
        if values[0] is None:
            out.append(None)
            continue
        try:
            out.append(PayloadRef(*values))
        except PayloadError as exc:
            raise type(exc)(f"row {row}: {exc}") from exc
    return out


def payloads_from_arrow(data: pa.Table | pa.RecordBatch) -> list[Payload | None]:
    """Payloads of the rows of a ``PAYLOAD_SCHEMA`` table: references plus inline bytes."""
    refs = refs_from_arrow(data)
    inline: list[Any] = (
        data.column(INLINE_FIELD.name).to_pylist()
        if INLINE_FIELD.name in data.schema.names
        else [None] * data.num_rows
    )
    out: list[Payload | None] = []
    for row, (ref, blob) in enumerate(zip(refs, inline, strict=True)):
        try:
            out.append(None if ref is None else Payload(ref, blob))
        except PayloadError as exc:
            raise type(exc)(f"row {row}: {exc}") from exc
    return out


def payload_from_row(row: Mapping[str, Any]) -> Payload | None:
    """The payload of one row as a dict (e.g. ``table.to_pylist()[i]``); None if it has none."""
    if row.get("payload_sha256") is None:
        return None
    values: list[Any] = [row.get(n) for n in _REF_NAMES]
    ref = PayloadRef(*values)
    return Payload(ref, row.get(INLINE_FIELD.name))


def array_from_bytes(
    data: bytes | memoryview,
    dtype: str,
    shape: Sequence[int],
    *,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> NDArray[Any]:
    """A read-only array over raw bytes with a declared dtype and shape, all checked first."""
    dt = numpy_dtype(dtype)
    dims = check_shape(shape)
    declared = math.prod(dims) * dt.itemsize  # Python ints: a huge shape cannot overflow
    if declared > max_bytes:
        raise PayloadTooLargeError(f"shape {dims} of {dtype} is {declared} bytes (max {max_bytes})")
    if declared != len(data):
        raise PayloadSizeError(f"shape {dims} of {dtype} is {declared} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dt).reshape(dims)


def check_hash(raw: Any, sha256: str, where: str) -> None:
    got = hashlib.sha256(raw).hexdigest()
    if got != sha256:
        raise PayloadHashError(f"{where} has sha256 {got}, its reference says {sha256}")
