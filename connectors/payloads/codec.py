"""Payload objects: a self-describing header and a body compressed only where it pays.

Each object is a 24-byte header (magic ``OFPL``, version, codec, shuffle width, raw size, body
size) and the body. The codec is chosen by measuring (``encode_payload``): zstd, with a byte
shuffle for multi-byte items, is kept only where it saves at least ``min_saving`` (20 %) of the
raw size; otherwise the body is the raw bytes ("none"). Decoding writes into a buffer of
exactly the declared raw size, so a decompression bomb fails instead of growing.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from obsflow.connectors.payloads.format import (
    CODEC_NONE,
    CODEC_ZSTD,
    CODEC_ZSTD_SHUFFLE,
    HEADER_SIZE,
    PayloadCorruptError,
    PayloadSizeError,
)

MIN_SAVING = 0.2
"""Keep a compressed body only if it is at most ``1 - MIN_SAVING`` of the raw size."""
ZSTD_LEVEL = 1
_CODEC_IDS = {CODEC_NONE: 0, CODEC_ZSTD: 1, CODEC_ZSTD_SHUFFLE: 2}
_CODEC_NAMES = {v: k for k, v in _CODEC_IDS.items()}
_MAGIC = b"OFPL"
_VERSION = 1
# magic, version, codec id, shuffle width, pad, raw size, body size
_HEADER = struct.Struct("<4sBBBxQQ")
assert _HEADER.size == HEADER_SIZE
_SAMPLE_BLOCK = 64 * 1024  # a multiple of every item size, so sample blocks stay aligned
_SAMPLE_BLOCKS = 3
_MIN_COMPRESS = 4096  # below this a trial costs more than it can save


class Header(NamedTuple):
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


def parse_header(head: bytes | memoryview, where: str) -> Header:
    if len(head) < HEADER_SIZE:
        raise PayloadSizeError(f"{where} is {len(head)} bytes, shorter than a payload header")
    magic, version, codec_id, width, raw_size, body_size = _HEADER.unpack(head[:HEADER_SIZE])
    codec = _CODEC_NAMES.get(codec_id)
    if magic != _MAGIC or version != _VERSION or codec is None:
        raise PayloadCorruptError(f"{where} is not an obsflow payload object (bad header)")
    if width not in (1, 2, 4, 8, 16) or (width > 1) != (codec == CODEC_ZSTD_SHUFFLE):
        raise PayloadCorruptError(f"{where} has a bad shuffle width {width} for {codec}")
    return Header(codec, width, raw_size, body_size)


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
    header = parse_header(stored, where)
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
