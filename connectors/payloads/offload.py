"""The payload store (claim check): arrays stored once under ``<store>/payloads/``, readings refer.

Objects are content-addressed (``payloads/ab/cd/<sha256>`` of the raw bytes), so retries and
duplicates land on the same object, and writes are create-only (``Store.create``): a second
writer finds the object and reuses it. ``put`` returns only once the object is durable, so a
reading never points at an object that is not fully written. All I/O goes through ``Store``:
the same retries, the same ``StoreError``s, the same redaction as every other object.

Reads are bounded and verified: ``get`` reads at most ``stored_size + 1`` bytes, refuses
declared sizes beyond ``max_payload_bytes`` before any read, decompresses into a buffer of
exactly the declared raw size, and checks size and sha256. Nothing from input is unpickled or
evaluated; dtypes come from an allow-list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.payloads.codec import (
    MIN_SAVING,
    ZSTD_LEVEL,
    Header,
    as_bytes,
    decode_payload,
    encode_payload,
    parse_header,
)
from obsflow.connectors.payloads.format import (
    CODEC_INLINE,
    HEADER_SIZE,
    INLINE_LIMIT,
    MAX_PAYLOAD_BYTES,
    Payload,
    PayloadCorruptError,
    PayloadError,
    PayloadMissingError,
    PayloadRef,
    PayloadRefError,
    PayloadSizeError,
    PayloadTooLargeError,
    check_hash,
    dtype_name,
    max_stored,
    payload_from_row,
    payload_key,
)
from obsflow.connectors.storage.store import Store

T = TypeVar("T")
R = TypeVar("R")


class PayloadStore:
    """Content-addressed payload objects in a ``Store``; picklable (holds the store URL).

    ``max_in_flight`` bounds concurrent uploads in ``put_many``/``offload_many``. Transient
    backend errors are retried by ``Store`` (one budget for every object in the store); a
    persistent failure raises ``StoreError`` and returns no reference.
    """

    def __init__(
        self,
        store: Store | str,
        *,
        max_in_flight: int = 8,
        inline_limit: int = INLINE_LIMIT,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        min_saving: float = MIN_SAVING,
        zstd_level: int = ZSTD_LEVEL,
    ) -> None:
        if max_in_flight < 1 or inline_limit < 0 or max_payload_bytes < 1:
            raise ConfigError(
                "payload store needs max_in_flight >= 1, inline_limit >= 0 and "
                "max_payload_bytes >= 1"
            )
        if not 0 <= min_saving < 1:
            raise ConfigError("payload store needs 0 <= min_saving < 1")
        self.store = store if isinstance(store, Store) else Store(store)
        self.max_in_flight = max_in_flight
        self.inline_limit = inline_limit
        self.max_payload_bytes = max_payload_bytes
        self.min_saving = min_saving
        self.zstd_level = zstd_level

    def __repr__(self) -> str:
        return f"PayloadStore({self.store.url!r}, max_in_flight={self.max_in_flight})"

    # backend -----------------------------------------------------------------------------

    def _read_head(self, rel: str, limit: int) -> bytes:
        """At most ``limit`` bytes from the start of an object (one ranged read)."""
        return self.store.read_range(rel, 0, limit)

    def _existing(self, rel: str, raw_size: int) -> Header | None:
        """Header of the object at ``rel`` if it exists (a 24-byte ranged read)."""
        try:
            head = self._read_head(rel, HEADER_SIZE)
        except FileNotFoundError as exc:
            # The exception refers to itself through its traceback; left alone, that cycle
            # keeps the frames holding the payload alive until the garbage collector runs.
            exc.__traceback__ = None
            return None
        where = self.store.uri(rel)
        header = parse_header(head, where)
        if header.raw_size != raw_size or header.stored_size > max_stored(raw_size):
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
            created = self.store.create(rel, stored)
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
            stored = self._read_head(rel, ref.stored_size + 1)
        except FileNotFoundError as exc:
            raise PayloadMissingError(f"payload {ref.sha256} is missing: no {where}") from exc
        if len(stored) != ref.stored_size:
            more = "more than" if len(stored) > ref.stored_size else "only"
            raise PayloadSizeError(
                f"{where} is {more} {len(stored)} bytes, its reference says {ref.stored_size}"
            )
        raw = decode_payload(stored, ref.raw_size, codec=ref.codec, where=where)
        check_hash(raw, ref.sha256, where)
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
        check_hash(payload.inline, ref.sha256, "inline payload")
        return np.frombuffer(payload.inline, dtype=ref.np_dtype).reshape(ref.shape)

    def verify(self, item: Payload | PayloadRef | Mapping[str, Any]) -> str | None:
        """None if the payload reads back intact, else the reason (store errors still raise)."""
        try:
            self.fetch(item)
        except PayloadError as exc:
            return str(exc)
        return None
