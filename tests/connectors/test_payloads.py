"""Payload store (claim check): round trips, codecs, idempotence, bounds, integrity errors.

Tests taking ``store_url`` run on every backend (local folder, memory://, S3 on moto); one test
runs on SeaweedFS, which checks signatures and answers conditional PUTs its own way.
"""

from __future__ import annotations

import os
import pickle
import resource
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from obsflow.connectors.errors import StoreError
from obsflow.connectors.payloads.codec import decode_payload, encode_payload
from obsflow.connectors.payloads.format import (
    CODEC_INLINE,
    CODEC_NONE,
    CODEC_ZSTD,
    CODEC_ZSTD_SHUFFLE,
    DTYPES,
    HEADER_SIZE,
    PAYLOAD_SCHEMA,
    REF_TYPE,
    Payload,
    PayloadCorruptError,
    PayloadError,
    PayloadHashError,
    PayloadMissingError,
    PayloadRef,
    PayloadRefError,
    PayloadSizeError,
    PayloadTooLargeError,
    array_from_bytes,
    payload_key,
    payloads_from_arrow,
    payloads_to_arrow,
    refs_from_arrow,
    refs_to_arrow,
)
from obsflow.connectors.payloads.offload import PayloadStore
from obsflow.connectors.storage.retry import transient
from obsflow.connectors.storage.store import Store

RNG = np.random.default_rng(5)
BIG_FRAME = RNG.poisson(100, (2048, 1024)).astype(np.uint16)  # 4 MiB detector frame of counts
BIG_NOISE = RNG.normal(0.0, 1.0, 1 << 20).astype(np.float32)  # 4 MiB of noisy floats
FRAME = BIG_FRAME[:512, :256].copy()  # 256 KiB: big enough to be sampled, quick to upload
NOISE = BIG_NOISE[: 1 << 16].copy()


def payload_objects(store: Store) -> list[str]:
    return list(store.walk_files("payloads"))


def canonical_bytes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert got.dtype == want.dtype.newbyteorder("<")
    assert got.tobytes() == canonical_bytes(want)


def overwrite(ps: PayloadStore, ref: PayloadRef, data: bytes) -> None:
    ps.store.write_bytes(ref.key, data)


class CountingStore(Store):
    """A store that counts create-only writes and ranged reads; optionally fails the first
    ``fail`` writes with ``error`` (as the store reports a persistent backend failure)."""

    def __init__(self, url: str, fail: int = 0, error: Exception | None = None) -> None:
        super().__init__(url)
        self.fail, self.error = fail, error
        self.writes = self.reads = 0
        self.lock = threading.Lock()

    def create(self, rel: str, data: bytes) -> bool:
        with self.lock:
            self.writes += 1
            failing = self.writes <= self.fail
        if failing:
            assert self.error is not None
            raise self.error
        return super().create(rel, data)

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        with self.lock:
            self.reads += 1
        return super().read_range(rel, start, end)


def Instrumented(url: str, *, fail: int = 0, error: Exception | None = None, **kw: Any) -> Any:
    """A payload store over a ``CountingStore``; ``.store.writes`` counts uploads."""
    return PayloadStore(CountingStore(url, fail, error), **kw)


# --- round trips --------------------------------------------------------------------------------


def test_round_trip_of_several_dtypes_and_shapes(store_url: str) -> None:
    ps = PayloadStore(store_url, inline_limit=0)
    arrays = [
        FRAME,
        NOISE.reshape(256, 256),
        np.arange(-500, 500).astype(np.int8),
        RNG.random((7, 3, 5)) > 0.5,
        (RNG.normal(size=300) + 1j * RNG.normal(size=300)).astype(np.complex64),
        np.array(3.25),  # 0-d
        np.zeros((0, 4), dtype=np.float64),
        np.arange(100_000, dtype=">i4").reshape(250, 400),  # big-endian input
        FRAME[::3, 1::2],  # not contiguous
        RNG.poisson(3, (300, 300)).astype(np.uint8),  # 1-byte counts: plain zstd
    ]
    refs = [ps.put(a) for a in arrays]
    assert {r.codec for r in refs} == {CODEC_NONE, CODEC_ZSTD, CODEC_ZSTD_SHUFFLE}
    for a, ref in zip(arrays, refs, strict=True):
        assert ref.raw_size == a.nbytes
        assert ref.shape == a.shape
        assert_same(ps.get(ref), a)
    assert refs[7].dtype == "int32"
    assert len(payload_objects(ps.store)) == len(arrays)


def test_round_trip_of_any_small_array(store_url: str) -> None:
    ps = PayloadStore(store_url, inline_limit=0)
    inline = PayloadStore(store_url)

    @settings(max_examples=25, deadline=None)
    @given(
        a=hnp.arrays(
            st.sampled_from(DTYPES).map(np.dtype),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9),
        )
    )
    def check(a: np.ndarray) -> None:
        assert_same(ps.get(ps.put(a)), a)
        small = inline.maybe_offload(a)
        assert small.ref.codec == CODEC_INLINE
        assert_same(ps.fetch(small), a)

    check()


def test_a_new_store_object_reads_what_another_wrote(store_url: str) -> None:
    ref = PayloadStore(store_url).put(FRAME)
    assert_same(PayloadStore(Store(store_url)).get(ref), FRAME)
    ps = pickle.loads(pickle.dumps(PayloadStore(store_url, max_in_flight=3)))
    assert ps.max_in_flight == 3
    assert_same(ps.get(ref), FRAME)


# --- codecs -------------------------------------------------------------------------------------


def test_count_frame_is_shuffled_and_compressed_noise_stays_raw(store_url: str) -> None:
    ps = PayloadStore(store_url)
    frame = ps.put(BIG_FRAME)
    assert frame.codec == CODEC_ZSTD_SHUFFLE
    assert frame.stored_size < 0.4 * frame.raw_size  # measured: 0.34
    noise = ps.put(BIG_NOISE)
    assert noise.codec == CODEC_NONE
    assert noise.stored_size == noise.raw_size + HEADER_SIZE
    assert_same(ps.get(frame), BIG_FRAME)
    assert_same(ps.get(noise), BIG_NOISE)


def test_encoding_is_deterministic_and_matches_put(tmp_path: Any) -> None:
    ps = PayloadStore(str(tmp_path))
    stored, codec = ps.encode(FRAME)
    assert ps.encode(FRAME) == (stored, codec)
    ref = ps.put(FRAME)
    assert (ref.stored_size, ref.codec) == (len(stored), codec)
    assert ps.store.read_bytes(ref.key) == stored


def test_compression_is_kept_only_where_it_saves_enough() -> None:
    smooth = np.exp(-(((np.arange(1 << 18) - 1e5) / 3e4) ** 2)).astype(np.float32)
    _, codec = encode_payload(smooth.view(np.uint8), 4)
    assert codec == CODEC_ZSTD_SHUFFLE  # smooth floats compress (measured 0.25-0.31)
    raw = BIG_NOISE.view(np.uint8)
    assert encode_payload(raw, 4)[1] == CODEC_NONE  # shuffle saves ~16 %: not enough
    assert encode_payload(raw, 4, min_saving=0.1)[1] == CODEC_ZSTD_SHUFFLE
    tiny = np.zeros(1000, np.uint8)
    assert encode_payload(tiny, 1)[1] == CODEC_NONE  # below 4 KiB no trial


# --- idempotence and create-only writes ---------------------------------------------------------


def test_putting_again_writes_no_new_object(store_url: str) -> None:
    ps = Instrumented(store_url)
    ref = ps.put(FRAME)
    assert ps.store.writes == 1
    assert ps.put(FRAME) == ref
    assert ps.put_many([FRAME, FRAME.copy(), FRAME]) == [ref] * 3
    assert ps.store.writes == 1  # found by a 24-byte header read, not uploaded again
    assert payload_objects(ps.store) == [ref.key]


def test_create_only_write_never_replaces_an_object(store_url: str) -> None:
    ps = PayloadStore(store_url)
    rel = payload_key("ab" * 32)
    assert ps.store.create(rel, b"first") is True
    assert ps.store.create(rel, b"second") is False
    assert ps.store.read_bytes(rel) == b"first"
    assert ps.store.listdir(os.path.dirname(rel)) == ["ab" * 32]  # no temporary files left


def test_concurrent_writers_of_one_payload_agree(store_url: str) -> None:
    stores = [PayloadStore(store_url) for _ in range(2)] * 3  # 6 writers, 2 filesystems
    refs: list[PayloadRef] = []
    barrier = threading.Barrier(len(stores))

    def put(ps: PayloadStore) -> None:
        barrier.wait()
        refs.append(ps.put(FRAME))

    threads = [threading.Thread(target=put, args=(ps,)) for ps in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(refs) == len(stores)
    assert len(set(refs)) == 1
    assert payload_objects(stores[0].store) == [refs[0].key]
    assert_same(stores[0].get(refs[0]), FRAME)


def test_same_bytes_as_another_dtype_reuse_the_stored_object(store_url: str) -> None:
    ps = PayloadStore(store_url)
    as_u16 = ps.put(FRAME)
    as_u8 = ps.put(FRAME.view(np.uint8))  # same raw bytes, 1-byte items: would encode otherwise
    assert as_u8.sha256 == as_u16.sha256
    assert (as_u8.codec, as_u8.stored_size) == (as_u16.codec, as_u16.stored_size)
    assert as_u8.dtype == "uint8"
    assert as_u8.shape == (512, 512)
    assert_same(ps.get(as_u8), FRAME.view(np.uint8))
    assert len(payload_objects(ps.store)) == 1


# --- concurrency, retries and failures ----------------------------------------------------------


def test_put_many_bounds_uploads_in_flight_and_reads_ahead_no_further(tmp_path: Any) -> None:
    limit = 3
    state = {"now": 0, "max": 0, "pulled": 0, "done": 0, "lag": 0}
    lock = threading.Lock()

    class Slow(Store):
        def create(self, rel: str, data: bytes) -> bool:
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            time.sleep(0.01)
            with lock:
                state["now"] -= 1
                state["done"] += 1
            return super().create(rel, data)

    arrays = [np.full(20_000, i, dtype=np.int64) for i in range(30)]

    def produce() -> Iterator[np.ndarray]:
        for a in arrays:
            with lock:
                state["lag"] = max(state["lag"], state["pulled"] - state["done"])
                state["pulled"] += 1
            yield a

    ps = PayloadStore(Slow(str(tmp_path)), max_in_flight=limit)
    refs = ps.put_many(produce())
    assert 2 <= state["max"] <= limit
    assert state["lag"] <= limit  # never more than `limit` arrays taken but not yet written
    for a, ref in zip(arrays, refs, strict=True):
        assert_same(ps.get(ref), a)


def test_put_many_raises_after_a_persistent_failure(tmp_path: Any) -> None:
    ps = Instrumented(
        str(tmp_path), max_in_flight=2, fail=10**6, error=StoreError("cannot write: denied")
    )
    with pytest.raises(StoreError, match="denied"):
        ps.put_many(np.full(10_000, i) for i in range(10))
    assert payload_objects(ps.store) == []


def test_s3_errors_are_classified_by_status() -> None:
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    def s3_error(status: int, code: str) -> BaseException:
        response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return translate_boto_error(ClientError(response, "PutObject"))

    assert transient(s3_error(503, "SlowDown"))
    assert transient(s3_error(500, "InternalError"))
    assert transient(s3_error(429, "TooManyRequests"))
    assert not transient(s3_error(403, "AccessDenied"))
    assert not transient(s3_error(404, "NoSuchKey"))
    assert not transient(s3_error(412, "PreconditionFailed"))
    assert not transient(ValueError("bad"))


def test_s3_retries_a_throttled_put(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    ps = PayloadStore(f"s3://{s3_env}/store")  # the store retries what S3 throttles
    real = ps.store.fs.call_s3
    calls: list[str] = []

    def flaky(method: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        if method == "put_object" and calls.count("put_object") == 1:
            response: Any = {
                "Error": {"Code": "SlowDown"},
                "ResponseMetadata": {"HTTPStatusCode": 503},
            }
            raise translate_boto_error(ClientError(response, "PutObject"))
        return real(method, *args, **kwargs)

    monkeypatch.setattr(ps.store.fs, "call_s3", flaky)
    ref = ps.put(FRAME)
    assert calls.count("put_object") == 2
    assert_same(ps.get(ref), FRAME)


# --- integrity errors ---------------------------------------------------------------------------


def test_a_flipped_byte_is_a_hash_mismatch(store_url: str) -> None:
    ps = PayloadStore(store_url)
    ref = ps.put(NOISE)
    stored = bytearray(ps.store.read_bytes(ref.key))
    stored[HEADER_SIZE + 1000] ^= 0x01
    overwrite(ps, ref, bytes(stored))
    with pytest.raises(PayloadHashError, match="sha256"):
        ps.get(ref)
    reason = ps.verify(ref)
    assert reason is not None
    assert "sha256" in reason
    # In a compressed body the damage shows up as a decode or hash failure.
    ref = ps.put(FRAME)
    stored = bytearray(ps.store.read_bytes(ref.key))
    stored[len(stored) // 2] ^= 0xFF
    overwrite(ps, ref, bytes(stored))
    with pytest.raises(PayloadCorruptError):
        ps.get(ref)


def test_a_truncated_or_grown_object_is_a_size_error(store_url: str) -> None:
    ps = PayloadStore(store_url)
    ref = ps.put(FRAME)
    stored = ps.store.read_bytes(ref.key)
    overwrite(ps, ref, stored[:-10])
    with pytest.raises(PayloadSizeError, match="only"):
        ps.get(ref)
    overwrite(ps, ref, stored + b"tail")
    with pytest.raises(PayloadSizeError, match="more than"):
        ps.get(ref)
    assert ps.verify(ref) is not None
    overwrite(ps, ref, stored)
    assert ps.verify(ref) is None


def test_a_missing_object_is_a_not_found_error(store_url: str) -> None:
    ps = PayloadStore(store_url)
    ref = PayloadRef("0" * 64, 8, 8 + HEADER_SIZE, CODEC_NONE, "float64", (1,))
    with pytest.raises(PayloadMissingError, match="missing") as info:
        ps.get(ref)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, ValueError)
    assert "missing" in (ps.verify(ref) or "")


def test_a_header_that_disagrees_with_the_reference_is_refused(store_url: str) -> None:
    ps = PayloadStore(store_url)
    ref = ps.put(FRAME)
    wrong_codec = PayloadRef(ref.sha256, ref.raw_size, ref.stored_size, "zstd", "uint16", ref.shape)
    with pytest.raises(PayloadCorruptError, match="stored as zstd-shuffle"):
        ps.get(wrong_codec)
    overwrite(ps, ref, b"not a payload at all" * 10)
    with pytest.raises(PayloadCorruptError):
        ps.put(FRAME)  # an existing object that is not a payload is never referenced


def test_a_decompression_bomb_is_refused_without_allocating_it(tmp_path: Any) -> None:
    zeros = np.zeros(16 << 20, np.uint8)
    frame = pa.Codec("zstd").compress(zeros, asbytes=True)
    bomb_body = frame * 64  # 34 KB that expand to 1 GiB
    raw_size = 1 << 20
    raw = bytes(raw_size)
    header = bytearray(encode_payload(np.frombuffer(raw, np.uint8), 1)[0][:HEADER_SIZE])
    header[5] = 1  # codec zstd
    header[16:24] = len(bomb_body).to_bytes(8, "little")
    stored = bytes(header) + bomb_body

    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    with pytest.raises(PayloadSizeError, match="does not decompress"):
        decode_payload(stored, raw_size, memory_pool=pool)
    assert pool.max_memory() <= raw_size + (1 << 16)

    ps = PayloadStore(str(tmp_path))
    ref = PayloadRef(
        ps.put(np.frombuffer(raw, np.uint8)).sha256,
        raw_size,
        len(stored),
        "zstd",
        "uint8",
        (raw_size,),
    )
    ps.store.write_bytes(ref.key, stored)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    try:
        with pytest.raises(PayloadSizeError, match="does not decompress"):
            ps.get(ref)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert rss_after - rss_before < 256 << 20


def test_huge_declared_sizes_are_refused_before_any_read(tmp_path: Any) -> None:
    ps = Instrumented(str(tmp_path), max_payload_bytes=1 << 20)
    huge = PayloadRef("1" * 64, 1 << 40, (1 << 40) + HEADER_SIZE, CODEC_NONE, "uint8", (1 << 40,))
    with pytest.raises(PayloadTooLargeError):
        ps.get(huge)
    giant_shape = (1 << 62, 1 << 62)  # 2**124 bytes: no int64 overflow, just refused
    giant = PayloadRef("2" * 64, 1 << 124, 100, "zstd", "uint8", giant_shape)
    with pytest.raises(PayloadTooLargeError):
        ps.get(giant)
    assert ps.store.reads == 0
    with pytest.raises(PayloadTooLargeError):
        array_from_bytes(b"", "float64", giant_shape)
    with pytest.raises(PayloadTooLargeError):
        ps.put(np.zeros((1 << 20) + 1, np.uint8))
    assert ps.store.writes == 0


@pytest.mark.parametrize(
    "sha", ["../x", "../" + "a" * 61, "A" * 64, "a" * 63, "a" * 65, "g" * 64, "", None, 7]
)
def test_a_bad_sha256_never_becomes_a_key(sha: Any) -> None:
    with pytest.raises(PayloadRefError, match="sha256"):
        payload_key(sha)
    with pytest.raises(PayloadRefError):
        PayloadRef(sha, 1, 1, CODEC_INLINE, "uint8", (1,))
    table = payloads_to_arrow([PayloadRef("a" * 64, 1, 1, CODEC_INLINE, "uint8", (1,))])
    table = table.set_column(0, "payload_sha256", pa.array([str(sha)]))
    with pytest.raises(PayloadRefError, match="row 0"):
        payloads_from_arrow(table)


def test_references_are_validated() -> None:
    ok = {"sha256": "c" * 64, "raw_size": 24, "stored_size": 24 + HEADER_SIZE}
    ok |= {"codec": CODEC_NONE, "dtype": "float64", "shape": (3,)}
    PayloadRef(**ok)
    bad = [
        {"dtype": "object"},
        {"dtype": "V8"},
        {"dtype": "float128"},
        {"dtype": "<f8"},  # names only, nothing is parsed
        {"codec": "pickle"},
        {"shape": (4,)},  # 32 bytes, not 24
        {"shape": (-3,)},
        {"shape": (1,) * 33},
        {"shape": "3"},
        {"raw_size": -24, "shape": (-3,)},
        {"stored_size": 24},  # "none" always stores a header
        {"codec": CODEC_INLINE},  # inline: stored size is the raw size
        {"codec": "zstd", "stored_size": 1 << 40},
        {"raw_size": True},
    ]
    for change in bad:
        with pytest.raises(PayloadRefError):
            PayloadRef(**(ok | change))


@pytest.mark.parametrize(
    "array",
    [
        np.array([object()], dtype=object),
        np.zeros(3, dtype=[("a", "i4"), ("b", "f8")]),
        np.zeros(3, dtype="datetime64[ns]"),
        np.zeros(3, dtype=np.longdouble),
        np.zeros(3, dtype="V8"),
        np.array(["text"]),
    ],
)
def test_only_plain_numeric_arrays_are_payloads(tmp_path: Any, array: np.ndarray) -> None:
    ps = PayloadStore(str(tmp_path))
    with pytest.raises(PayloadRefError, match="cannot be payloads"):
        ps.put(array)
    with pytest.raises(PayloadRefError):
        ps.maybe_offload(array)


# --- inline payloads, Arrow and capture rows ----------------------------------------------------


def test_small_payloads_stay_inline_and_large_ones_are_offloaded(store_url: str) -> None:
    ps = PayloadStore(store_url, inline_limit=64 * 1024)
    small = np.arange(64 * 1024 // 8, dtype=np.float64)  # exactly the limit
    large = RNG.normal(size=64 * 1024 // 8 + 1)
    got = ps.offload_many([small, large, FRAME])
    assert [p.ref.codec for p in got] == [CODEC_INLINE, CODEC_NONE, CODEC_ZSTD_SHUFFLE]
    assert got[0].inline == small.tobytes()
    assert got[0].ref.stored_size == small.nbytes
    assert got[1].inline is None
    assert got[2].inline is None
    assert len(payload_objects(ps.store)) == 2
    for p, a in zip(got, [small, large, FRAME], strict=True):
        assert_same(ps.fetch(p), a)
    with pytest.raises(PayloadRefError, match="inline"):
        ps.get(got[0].ref)
    tampered = Payload(got[0].ref, b"\x01" + got[0].inline[1:])  # type: ignore[index]
    with pytest.raises(PayloadHashError):
        ps.fetch(tampered)


def test_references_round_trip_through_arrow_and_parquet(store_url: str) -> None:
    ps = PayloadStore(store_url)
    items = [ps.maybe_offload(FRAME), None, ps.maybe_offload(np.arange(6).reshape(2, 3))]
    table = payloads_to_arrow(items)
    assert table.schema == PAYLOAD_SCHEMA
    assert payloads_from_arrow(table) == items
    ps.store.write_parquet("captures/c/part.parquet", table)
    back = ps.store.read_parquet("captures/c/part.parquet")
    assert payloads_from_arrow(back) == items
    rows = back.to_pylist()
    assert_same(ps.fetch(rows[0]), FRAME)
    assert_same(ps.fetch(rows[2]), np.arange(6).reshape(2, 3))
    with pytest.raises(PayloadRefError, match="no payload"):
        ps.fetch(rows[1])
    # The reference alone, as a struct column.
    refs = [i.ref if i else None for i in items]
    struct = refs_to_arrow(refs)
    assert struct.type == REF_TYPE
    assert struct.null_count == 1
    assert refs_from_arrow(struct) == refs
    assert refs_from_arrow(table) == refs


def test_declared_shape_and_dtype_of_raw_bytes_are_checked() -> None:
    data = np.arange(12, dtype="<u2").tobytes()
    assert_same(array_from_bytes(data, "uint16", [3, 4]), np.arange(12, dtype="<u2").reshape(3, 4))
    with pytest.raises(PayloadSizeError):
        array_from_bytes(data, "uint16", [5, 4])
    with pytest.raises(PayloadRefError):
        array_from_bytes(data, "O", [3])
    with pytest.raises(PayloadError):
        array_from_bytes(data, "uint16", [-3, -8])


# --- SeaweedFS ----------------------------------------------------------------------------------


def test_seaweedfs_round_trip_create_only_and_corruption(seaweed_env: str) -> None:
    url = f"s3://{seaweed_env}/store"
    ps = Instrumented(url)
    ref = ps.put(FRAME)
    assert_same(ps.get(ref), FRAME)
    # A conditional PUT of an existing key: SeaweedFS answers 412 without the condition name.
    assert ps.store.create(ref.key, b"other bytes") is False
    assert ps.put(FRAME) == ref
    assert ps.store.writes == 2  # the upload and the refused direct write above; no new upload
    assert payload_objects(ps.store) == [ref.key]
    refs = ps.put_many([NOISE, FRAME.T.copy(), NOISE])
    assert refs[0] == refs[2]
    assert refs[0].codec == CODEC_NONE
    stored = bytearray(ps.store.read_bytes(refs[0].key))
    stored[-1] ^= 0x80
    overwrite(ps, refs[0], bytes(stored))
    assert "sha256" in (ps.verify(refs[0]) or "")
