"""Large payloads (claim check): arrays stored once under ``<store>/payloads/``, readings refer.

A payload is a plain numeric numpy array (detector frame, waveform block, spectrum). Its *raw
bytes* are the array in C order, little-endian; the object key is derived only from their
sha256 (``payloads/ab/cd/<sha256>``), so retries and duplicates land on the same object and
writes are create-only: a second writer finds the object and reuses it.

Each object is self-describing: a 24-byte header (magic ``OFPL``, version, codec, shuffle
width, raw size, body size) and the body. The codec is chosen by measuring (``encode_payload``):
zstd, with a byte shuffle for multi-byte items, is kept only where it saves at least
``min_saving`` (20 %) of the raw size; otherwise the body is the raw bytes ("none"). A
``PayloadRef`` records sha256, raw and stored size, codec, dtype and shape; payloads up to the
inline limit are not written at all and travel in the capture (codec "inline").

Create-only writes: on S3 a conditional PUT (``If-None-Match: *``; 412 means it exists); in a
local folder a temp file, fsync, then ``os.link`` (atomic, never replaces); on ``memory://``
exists-then-write under a process-wide lock. Transient errors are retried with backoff.

Reads are bounded and verified: ``PayloadStore.get`` reads at most ``stored_size + 1`` bytes,
refuses declared sizes beyond ``max_payload_bytes`` before any read, decompresses into a buffer
of exactly the declared raw size (a decompression bomb fails instead of growing), and checks
size and sha256. Nothing from input is unpickled or evaluated; dtypes come from an allow-list.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import re
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from obsflow.connectors.errors import ConfigError, ObsflowError, StoreError
from obsflow.connectors.store import Store

T = TypeVar("T")
R = TypeVar("R")

PAYLOAD_PREFIX = "payloads"
INLINE_LIMIT = 64 * 1024
MAX_PAYLOAD_BYTES = 1 << 30
MAX_NDIM = 32
MIN_SAVING = 0.2
"""Keep a compressed body only if it is at most ``1 - MIN_SAVING`` of the raw size."""
ZSTD_LEVEL = 1

CODEC_INLINE = "inline"  # raw bytes in the capture, nothing in the payload store
CODEC_NONE = "none"  # header + raw bytes
CODEC_ZSTD = "zstd"  # header + one zstd frame of the raw bytes
CODEC_ZSTD_SHUFFLE = "zstd-shuffle"  # header + zstd of the bytes shuffled by item (width in header)
CODECS = (CODEC_INLINE, CODEC_NONE, CODEC_ZSTD, CODEC_ZSTD_SHUFFLE)
_CODEC_IDS = {CODEC_NONE: 0, CODEC_ZSTD: 1, CODEC_ZSTD_SHUFFLE: 2}
_CODEC_NAMES = {v: k for k, v in _CODEC_IDS.items()}

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
_MAGIC = b"OFPL"
_VERSION = 1
# magic, version, codec id, shuffle width, pad, raw size, body size
_HEADER = struct.Struct("<4sBBBxQQ")
HEADER_SIZE = _HEADER.size
_SAMPLE_BLOCK = 64 * 1024  # a multiple of every item size, so sample blocks stay aligned
_SAMPLE_BLOCKS = 3
_MIN_COMPRESS = 4096  # below this a trial costs more than it can save
_MEMORY_LOCK = threading.Lock()  # memory:// is process-wide; makes exists+write atomic
_NO_HARDLINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS}
_TRANSIENT_ERRNO = {
    errno.EAGAIN,
    errno.EBUSY,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.EREMOTEIO,
    errno.EIO,
}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"}


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


def _max_stored(raw_size: int) -> int:
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
            ok = HEADER_SIZE <= stored <= _max_stored(raw)
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


# --- codecs ---------------------------------------------------------------------------------


class _Header(NamedTuple):
    codec: str
    width: int
    raw_size: int
    body_size: int

    @property
    def stored_size(self) -> int:
        return HEADER_SIZE + self.body_size


def _zstd(level: int = ZSTD_LEVEL) -> pa.Codec:
    return pa.Codec("zstd", compression_level=level)


def as_bytes(array: NDArray[Any]) -> NDArray[np.uint8]:
    """The raw bytes of a C-contiguous little-endian array, as a 1-D uint8 view (no copy)."""
    return array.reshape(-1).view(np.uint8)


def _shuffle(raw: NDArray[np.uint8], width: int) -> NDArray[np.uint8]:
    """Byte planes: all first bytes of the items, then all second bytes, ..."""
    return raw.reshape(-1, width).T.copy().reshape(-1)


def _unshuffle(planes: NDArray[np.uint8], width: int) -> NDArray[np.uint8]:
    return planes.reshape(width, -1).T.copy().reshape(-1)


def _compress(raw: NDArray[np.uint8], codec: str, width: int, level: int) -> pa.Buffer:
    body = _shuffle(raw, width) if codec == CODEC_ZSTD_SHUFFLE else raw
    return _zstd(level).compress(body)


def _trial_size(block: NDArray[np.uint8], codec: str, width: int, level: int) -> int:
    """Compressed size of a sample block under a codec.

    Byte planes are compressed one by one: in a whole payload each plane fills zstd blocks
    (128 KiB) of its own, with their own entropy tables, which a small mixed block would hide.
    """
    if codec != CODEC_ZSTD_SHUFFLE:
        return int(_compress(block, codec, width, level).size)
    planes = _shuffle(block, width).reshape(width, -1)
    return sum(int(_zstd(level).compress(plane).size) for plane in planes)


def _sample(raw: NDArray[np.uint8]) -> list[NDArray[np.uint8]]:
    """Up to three aligned 64 KiB blocks (start, middle, end): the whole array if small."""
    n = raw.size
    if n <= _SAMPLE_BLOCKS * _SAMPLE_BLOCK:
        return [raw]
    mid = (n // 2) // _SAMPLE_BLOCK * _SAMPLE_BLOCK
    # n and the block size are multiples of the item size, so n - block is aligned too.
    return [raw[s : s + _SAMPLE_BLOCK] for s in (0, mid, n - _SAMPLE_BLOCK)]


def encode_payload(
    raw: NDArray[np.uint8],
    itemsize: int,
    *,
    min_saving: float = MIN_SAVING,
    level: int = ZSTD_LEVEL,
) -> tuple[bytes, str]:
    """The stored object (header + body) for raw bytes, and its codec.

    Candidates (zstd; zstd on byte planes when items are wider than a byte) are measured on a
    sample of up to 192 KiB; the best, if the sample promises enough, is applied to the whole
    payload and kept only if that saves at least ``min_saving`` of the raw size. Deterministic:
    the same bytes and item size give the same object.
    """
    n = raw.size
    codec, width, body = CODEC_NONE, 1, None
    if n >= _MIN_COMPRESS:
        blocks = _sample(raw)
        total = sum(b.size for b in blocks)
        options = [(CODEC_ZSTD, 1)]
        if itemsize > 1:
            options.append((CODEC_ZSTD_SHUFFLE, itemsize))
        sizes = [sum(_trial_size(b, c, w, level) for b in blocks) for c, w in options]
        best = int(np.argmin(sizes))
        if sizes[best] <= (1 - min_saving) * total:
            candidate = _compress(raw, *options[best], level)
            if candidate.size <= (1 - min_saving) * n:
                (codec, width), body = options[best], candidate
    header = _HEADER.pack(
        _MAGIC, _VERSION, _CODEC_IDS[codec], width, n, n if body is None else body.size
    )
    return b"".join((header, raw.data if body is None else body)), codec


def _parse_header(head: bytes | memoryview, where: str) -> _Header:
    if len(head) < HEADER_SIZE:
        raise PayloadSizeError(f"{where} is {len(head)} bytes, shorter than a payload header")
    magic, version, codec_id, width, raw_size, body_size = _HEADER.unpack(head[:HEADER_SIZE])
    codec = _CODEC_NAMES.get(codec_id)
    if magic != _MAGIC or version != _VERSION or codec is None:
        raise PayloadCorruptError(f"{where} is not an obsflow payload object (bad header)")
    if width not in (1, 2, 4, 8, 16) or (width > 1) != (codec == CODEC_ZSTD_SHUFFLE):
        raise PayloadCorruptError(f"{where} has a bad shuffle width {width} for {codec}")
    return _Header(codec, width, raw_size, body_size)


def decode_payload(
    stored: bytes | memoryview,
    raw_size: int,
    *,
    codec: str | None = None,
    where: str = "payload",
    memory_pool: pa.MemoryPool | None = None,
) -> Any:
    """Raw bytes (a buffer of exactly ``raw_size`` bytes) of a stored object.

    ``raw_size`` must already be capped by the caller: it is the most that is ever allocated.
    A body that decompresses to more (or fewer) bytes is refused by zstd itself, which writes
    into a buffer of exactly that size and fails when it is full.
    """
    header = _parse_header(stored, where)
    if codec is not None and header.codec != codec:
        raise PayloadCorruptError(
            f"{where} is stored as {header.codec}, its reference says {codec}"
        )
    if header.raw_size != raw_size:
        raise PayloadSizeError(f"{where} holds {header.raw_size} raw bytes, expected {raw_size}")
    body = memoryview(stored)[HEADER_SIZE:]
    if len(body) != header.body_size:
        raise PayloadSizeError(
            f"{where} body is {len(body)} bytes, its header says {header.body_size}"
        )
    if header.codec == CODEC_NONE:
        if len(body) != raw_size:
            raise PayloadSizeError(f"{where} is {len(body)} raw bytes, expected {raw_size}")
        return body
    if raw_size % header.width:
        raise PayloadSizeError(f"{where}: {raw_size} bytes are not whole items of {header.width}")
    try:
        out = _zstd().decompress(body, decompressed_size=raw_size, memory_pool=memory_pool)
    except (OSError, pa.ArrowException) as exc:
        raise PayloadSizeError(
            f"{where} does not decompress to exactly {raw_size} bytes ({exc})"
        ) from exc
    if header.codec == CODEC_ZSTD_SHUFFLE:
        return _unshuffle(np.frombuffer(out, np.uint8), header.width)
    return out


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


def _check_hash(raw: Any, sha256: str, where: str) -> None:
    got = hashlib.sha256(raw).hexdigest()
    if got != sha256:
        raise PayloadHashError(f"{where} has sha256 {got}, its reference says {sha256}")


# --- the store ------------------------------------------------------------------------------


def _http_error(exc: BaseException) -> tuple[int | None, str]:
    """HTTP status and error code of an S3 error anywhere in the exception's cause chain."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        response = getattr(seen, "response", None)
        if isinstance(response, Mapping):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return status, str(response.get("Error", {}).get("Code", ""))
        seen = seen.__cause__ or seen.__context__
    return None, ""


def is_transient(exc: BaseException) -> bool:
    """Whether retrying might help: timeouts, lost connections, throttling and 5xx answers."""
    status, code = _http_error(exc)
    if status is not None:
        return status >= 500 or status in (408, 409, 429) or code in _TRANSIENT_CODES
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    if isinstance(exc, FileNotFoundError | FileExistsError | PermissionError | IsADirectoryError):
        return False
    if isinstance(exc, OSError):
        return exc.errno in _TRANSIENT_ERRNO
    # botocore/aiohttp network errors (EndpointConnectionError, ReadTimeoutError, ...) that
    # s3fs passes on after its own retries: no HTTP answer came back at all.
    return type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "urllib3")


def _precondition_failed(exc: BaseException) -> bool:
    status, code = _http_error(exc)
    return isinstance(exc, FileExistsError) or status == 412 or code == "PreconditionFailed"


def _create_local(path: str, data: bytes) -> bool:
    """Write a new file atomically, never replacing one: temp file, fsync, hard link."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(path):
        return False
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name exists
        try:
            os.link(tmp, path)  # atomic and create-only: FileExistsError if another won
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_HARDLINK:
                raise
            # No hard links here: a rename is still atomic for readers, and two racing writers
            # of one key both write a complete object with the same raw bytes.
            if os.path.exists(path):
                return False
            os.replace(tmp, path)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class PayloadStore:
    """Content-addressed payload objects in a ``Store``; picklable (holds the store URL).

    ``max_in_flight`` bounds concurrent uploads in ``put_many``/``offload_many``; ``retries``
    and ``backoff`` (seconds, doubled per attempt, capped at ``max_backoff``) apply to transient
    backend errors; a persistent failure raises ``StoreError`` and returns no reference.
    """

    def __init__(
        self,
        store: Store | str,
        *,
        max_in_flight: int = 8,
        inline_limit: int = INLINE_LIMIT,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        retries: int = 5,
        backoff: float = 0.1,
        max_backoff: float = 10.0,
        min_saving: float = MIN_SAVING,
        zstd_level: int = ZSTD_LEVEL,
    ) -> None:
        if max_in_flight < 1 or retries < 0 or inline_limit < 0 or max_payload_bytes < 1:
            raise ConfigError(
                "payload store needs max_in_flight >= 1, retries >= 0, inline_limit >= 0 and "
                "max_payload_bytes >= 1"
            )
        if backoff < 0 or max_backoff < 0 or not 0 <= min_saving < 1:
            raise ConfigError("payload store needs backoff >= 0 and 0 <= min_saving < 1")
        self.store = store if isinstance(store, Store) else Store(store)
        self.max_in_flight = max_in_flight
        self.inline_limit = inline_limit
        self.max_payload_bytes = max_payload_bytes
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.min_saving = min_saving
        self.zstd_level = zstd_level

    def __repr__(self) -> str:
        return f"PayloadStore({self.store.url!r}, max_in_flight={self.max_in_flight})"

    key = staticmethod(payload_key)

    # backend -----------------------------------------------------------------------------

    def _retrying(self, action: str, rel: str, fn: Callable[[], T], *, missing_ok: bool) -> T:
        """Run ``fn`` with retries on transient errors; anything else becomes ``StoreError``.

        With ``missing_ok`` a ``FileNotFoundError`` passes through for the caller to handle.
        """
        attempt = 0
        while True:
            try:
                return fn()
            except PayloadError:
                raise
            except FileNotFoundError:
                if missing_ok:
                    raise
                raise StoreError(f"cannot {action} {self.store.uri(rel)}: not found") from None
            except Exception as exc:
                if attempt >= self.retries or not is_transient(exc):
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise StoreError(
                        f"cannot {action} {self.store.uri(rel)}{tries}: {exc}"
                    ) from exc
                time.sleep(min(self.max_backoff, self.backoff * 2**attempt))
                attempt += 1

    def _create_object(self, rel: str, data: bytes) -> bool:
        """Create-only write; False if the object already exists. Never replaces an object."""
        path = self.store.path(rel)
        fs = self.store.fs
        if self.store.scheme == "file":
            return _create_local(path, data)
        if self.store.scheme == "s3":
            bucket, key, _ = fs.split_path(path)
            try:  # a conditional PUT: 412 Precondition Failed if the key exists
                fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            except Exception as exc:
                if _precondition_failed(exc):
                    return False
                raise
            return True
        with _MEMORY_LOCK:  # memory:// (and any other backend: exists, then write)
            if fs.exists(path):
                return False
            fs.pipe_file(path, data)
        return True

    def _read_object(self, rel: str, limit: int) -> bytes:
        """At most ``limit`` bytes from the start of an object (one ranged read)."""
        path = self.store.path(rel)
        if self.store.scheme == "file":
            with open(path, "rb") as f:
                return f.read(limit)
        data: bytes = self.store.fs.cat_file(path, start=0, end=limit)
        return data[:limit]

    def _existing(self, rel: str, raw_size: int) -> _Header | None:
        """Header of the object at ``rel`` if it exists (a 24-byte ranged read)."""
        try:
            head = self._retrying(
                "read", rel, lambda: self._read_object(rel, HEADER_SIZE), missing_ok=True
            )
        except FileNotFoundError as exc:
            # The exception refers to itself through its traceback; left alone, that cycle
            # keeps the frames holding the payload alive until the garbage collector runs.
            exc.__traceback__ = None
            return None
        where = self.store.uri(rel)
        header = _parse_header(head, where)
        if header.raw_size != raw_size or header.stored_size > _max_stored(raw_size):
            raise PayloadCorruptError(
                f"{where} exists but describes {header.raw_size} raw bytes, not {raw_size}: "
                "it is corrupt — delete it and write the payload again"
            )
        return header

    # writing -----------------------------------------------------------------------------

    def _canonical(self, array: NDArray[Any]) -> tuple[NDArray[Any], str]:
        """The array as C-contiguous little-endian, and its dtype name; size capped."""
        arr = np.asarray(array)
        name = dtype_name(arr.dtype)
        if arr.nbytes > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"array of {arr.nbytes} bytes is larger than max_payload_bytes "
                f"({self.max_payload_bytes})"
            )
        return np.asarray(arr, dtype=arr.dtype.newbyteorder("<"), order="C"), name

    def encode(self, array: NDArray[Any]) -> tuple[bytes, str]:
        """The object ``put`` would store for ``array`` (header + body) and its codec."""
        arr, _ = self._canonical(array)
        return encode_payload(
            as_bytes(arr), arr.itemsize, min_saving=self.min_saving, level=self.zstd_level
        )

    def put(self, array: NDArray[Any]) -> PayloadRef:
        """Store ``array`` (unless an object with its bytes exists); returns once it is durable."""
        return self._put(*self._canonical(array))

    def _put(self, arr: NDArray[Any], dtype: str) -> PayloadRef:
        raw = as_bytes(arr)
        sha = hashlib.sha256(raw.data).hexdigest()
        rel = payload_key(sha)
        header = self._existing(rel, raw.size)  # duplicates skip encoding and upload
        if header is None:
            stored, codec = encode_payload(
                raw, arr.itemsize, min_saving=self.min_saving, level=self.zstd_level
            )
            created = self._retrying(
                "write", rel, lambda: self._create_object(rel, stored), missing_ok=False
            )
            if created:
                return PayloadRef(sha, raw.size, len(stored), codec, dtype, arr.shape)
            header = self._existing(rel, raw.size)  # another writer won the race
            if header is None:
                raise StoreError(f"{self.store.uri(rel)} was reported to exist but is gone")
        # The existing object may use another codec (same bytes seen with another dtype, or
        # written by another version): the reference describes the object as stored.
        return PayloadRef(sha, raw.size, header.stored_size, header.codec, dtype, arr.shape)

    def maybe_offload(self, array: NDArray[Any]) -> Payload:
        """Inline (codec "inline", bytes kept) up to ``inline_limit`` bytes, else ``put``."""
        arr, dtype = self._canonical(array)
        if arr.nbytes <= self.inline_limit:
            raw = as_bytes(arr).tobytes()
            sha = hashlib.sha256(raw).hexdigest()
            return Payload(PayloadRef(sha, len(raw), len(raw), CODEC_INLINE, dtype, arr.shape), raw)
        return Payload(self._put(arr, dtype))

    def put_many(self, arrays: Iterable[NDArray[Any]]) -> list[PayloadRef]:
        """``put`` each array, at most ``max_in_flight`` at a time; refs in input order.

        The iterable is consumed only as slots free up (back-pressure). Returns after every
        object is durable; the first persistent failure is raised once in-flight writes end.
        """
        return self._bounded_map(self.put, arrays)

    def offload_many(self, arrays: Iterable[NDArray[Any]]) -> list[Payload]:
        """``maybe_offload`` each array with the same bounded concurrency as ``put_many``."""
        return self._bounded_map(self.maybe_offload, arrays)

    def _bounded_map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        results: dict[int, R] = {}
        pending: dict[Future[R], int] = {}

        def collect(done: Iterable[Future[R]]) -> None:
            for fut in done:
                results[pending.pop(fut)] = fut.result()

        with ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="payload") as pool:
            try:
                for i, item in enumerate(items):
                    while len(pending) >= self.max_in_flight:
                        collect(wait(pending, return_when=FIRST_COMPLETED).done)
                    pending[pool.submit(fn, item)] = i
                collect(wait(pending).done)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
        return [results[i] for i in range(len(results))]

    # reading -----------------------------------------------------------------------------

    def get(self, ref: PayloadRef) -> NDArray[Any]:
        """The array of a stored payload (read-only), after checking its size and sha256."""
        if ref.codec == CODEC_INLINE:
            raise PayloadRefError("an inline payload's bytes are in the capture: use fetch(row)")
        if ref.raw_size > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"payload {ref.sha256} declares {ref.raw_size} bytes, more than "
                f"max_payload_bytes ({self.max_payload_bytes})"
            )
        rel = ref.key
        where = self.store.uri(rel)
        try:  # never more than one byte past the declared size, whatever the object holds
            stored = self._retrying(
                "read", rel, lambda: self._read_object(rel, ref.stored_size + 1), missing_ok=True
            )
        except FileNotFoundError as exc:
            raise PayloadMissingError(f"payload {ref.sha256} is missing: no {where}") from exc
        if len(stored) != ref.stored_size:
            more = "more than" if len(stored) > ref.stored_size else "only"
            raise PayloadSizeError(
                f"{where} is {more} {len(stored)} bytes, its reference says {ref.stored_size}"
            )
        raw = decode_payload(stored, ref.raw_size, codec=ref.codec, where=where)
        _check_hash(raw, ref.sha256, where)
        return np.frombuffer(raw, dtype=ref.np_dtype).reshape(ref.shape)

    def fetch(self, item: Payload | PayloadRef | Mapping[str, Any]) -> NDArray[Any]:
        """The array of a capture row (dict with ``payload_*`` fields), payload or reference."""
        if isinstance(item, Mapping):
            found = payload_from_row(item)
            if found is None:
                raise PayloadRefError("the row has no payload (payload_sha256 is null)")
            item = found
        payload = item if isinstance(item, Payload) else Payload(item)
        ref = payload.ref
        if payload.inline is None:
            return self.get(ref)
        _check_hash(payload.inline, ref.sha256, "inline payload")
        return np.frombuffer(payload.inline, dtype=ref.np_dtype).reshape(ref.shape)

    def verify(self, item: Payload | PayloadRef | Mapping[str, Any]) -> str | None:
        """None if the payload reads back intact, else the reason (store errors still raise)."""
        try:
            self.fetch(item)
        except PayloadError as exc:
            return str(exc)
        return None
