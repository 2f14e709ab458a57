"""Store conformance: every backend (local folder, memory://, S3 on moto) behaves the same.

Each test takes ``store_url`` (see ``tests/conftest.py``), so it runs once per backend.
"""

from __future__ import annotations

import os
import pickle
import posixpath
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.storage.retry import RetryPolicy
from obsflow.connectors.storage.store import Store
from tests.conftest import TEST_SECRET


def table(n: int, start: int = 0) -> pa.Table:
    return pa.table(
        {
            "source": pa.array([f"s{i % 3}" for i in range(start, start + n)], pa.string()),
            "value": pa.array([float(i) for i in range(start, start + n)], pa.float64()),
        }
    )


def outside(store: Store) -> list[str]:
    """Every object in the folder holding the store root that is not under the root."""
    parent = posixpath.dirname(store.root.rstrip("/"))
    root = store.root.strip("/") + "/"
    found = [str(p).strip("/") for p in store.fs.find(parent)]
    return sorted(p for p in found if not (p + "/").startswith(root))


# --- bytes --------------------------------------------------------------------------------------


def test_write_then_read_bytes_round_trips(store_url: str) -> None:
    store = Store(store_url)
    data = bytes(range(256)) * 5
    store.write_bytes("a/b/c.bin", data)
    assert store.read_bytes("a/b/c.bin") == data
    assert store.read_bytes("a/b/c.bin", max_bytes=len(data)) == data
    store.write_bytes("empty", b"")
    assert store.read_bytes("empty") == b""


def test_a_new_store_on_the_same_url_reads_what_another_wrote(store_url: str) -> None:
    Store(store_url).write_bytes("x/y.txt", b"hello")
    assert Store(store_url).read_bytes("x/y.txt") == b"hello"


def test_overwrite_replaces_the_whole_object(store_url: str) -> None:
    store = Store(store_url)
    store.write_bytes("d/obj", b"a long first version of the object")
    store.write_bytes("d/obj", b"short")
    assert store.read_bytes("d/obj") == b"short"  # no tail of the old content
    store.write_bytes("d/obj", b"and a longer third version, longer than both")
    assert store.read_bytes("d/obj") == b"and a longer third version, longer than both"
    assert Store(store_url).read_bytes("d/obj") == b"and a longer third version, longer than both"
    assert store.listdir("d") == ["obj"]  # no temporary objects left behind


def test_failed_write_raises_store_error_and_keeps_the_old_object(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(store_url)
    store.write_bytes("k", b"old")

    def broken_pipe_file(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store.fs, "pipe_file", broken_pipe_file)
    with pytest.raises(StoreError, match="disk full"):
        store.write_bytes("k", b"new")
    assert Store(store_url).read_bytes("k") == b"old"


def test_read_bytes_refuses_a_bigger_object_before_reading_it(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(store_url)
    store.write_bytes("big", b"x" * 1000)
    store.write_bytes("small", b"y" * 999)

    def no_reading(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("read_bytes read an object it should have refused")

    real_cat_file = store.fs.cat_file
    monkeypatch.setattr(store.fs, "cat_file", no_reading)
    with pytest.raises(StoreError, match="1000 bytes, more than 999"):
        store.read_bytes("big", max_bytes=999)
    monkeypatch.setattr(store.fs, "cat_file", real_cat_file)
    assert store.read_bytes("small", max_bytes=999) == b"y" * 999
    assert store.read_bytes("big", max_bytes=1000) == b"x" * 1000


def test_read_json_is_size_limited(store_url: str) -> None:
    store = Store(store_url)
    store.write_json("j.json", {"text": "z" * 100})
    with pytest.raises(StoreError):
        store.read_json("j.json", max_bytes=50)


# --- listing and deleting -----------------------------------------------------------------------


def test_exists_listdir_walk_files_and_recursive_delete(store_url: str) -> None:
    store = Store(store_url)
    for rel in ("top.txt", "f/one.txt", "f/two.txt", "f/sub/three.txt", "f/sub/deep/four.txt"):
        store.write_bytes(rel, rel.encode())

    assert store.exists("top.txt")
    assert store.exists("f/sub/deep/four.txt")
    assert store.exists("f/sub")  # a folder that holds objects exists
    assert not store.exists("f/none.txt")
    assert not store.exists("nothing/here")

    assert store.listdir() == ["f", "top.txt"]
    assert store.listdir("f") == ["one.txt", "sub", "two.txt"]
    assert store.listdir("f/sub") == ["deep", "three.txt"]
    assert list(store.walk_files("f")) == [
        "f/one.txt",
        "f/sub/deep/four.txt",
        "f/sub/three.txt",
        "f/two.txt",
    ]
    assert sorted(store.walk_files()) == sorted(
        ["top.txt", "f/one.txt", "f/two.txt", "f/sub/three.txt", "f/sub/deep/four.txt"]
    )

    store.delete("f/one.txt")
    assert not store.exists("f/one.txt")
    assert store.listdir("f") == ["sub", "two.txt"]

    store.delete("f/sub", recursive=True)
    assert not store.exists("f/sub/three.txt")
    assert not store.exists("f/sub/deep/four.txt")
    assert list(store.walk_files("f")) == ["f/two.txt"]
    # The store seen afresh agrees (no stale listing caches).
    fresh = Store(store_url)
    assert list(fresh.walk_files()) == ["f/two.txt", "top.txt"]
    assert fresh.read_bytes("top.txt") == b"top.txt"

    store.delete("does/not/exist")  # deleting nothing is not an error
    store.delete("does/not/exist", recursive=True)


def test_listdir_and_walk_of_a_missing_folder_are_empty(store_url: str) -> None:
    store = Store(store_url)
    assert store.listdir() == []
    assert store.listdir("no/such/folder") == []
    assert list(store.walk_files("no/such/folder")) == []
    store.write_bytes("a/b", b"1")
    assert store.listdir("a/none") == []
    assert store.listdir("a") == ["b"]


def test_listdir_sees_objects_written_after_an_earlier_listing(store_url: str) -> None:
    store = Store(store_url)
    other = Store(store_url)
    store.write_bytes("runs/1.json", b"{}")
    assert other.listdir("runs") == ["1.json"]
    store.write_bytes("runs/2.json", b"{}")
    assert other.listdir("runs") == ["1.json", "2.json"]
    assert list(other.walk_files("runs")) == ["runs/1.json", "runs/2.json"]


def test_exists_sees_objects_another_store_wrote_after_a_listing(store_url: str) -> None:
    """A long-lived Store must not answer from a stale listing after someone else wrote."""
    reader, writer = Store(store_url), Store(store_url)
    writer.write_bytes("runs/1.json", b"{}")
    assert reader.listdir("runs") == ["1.json"]  # the reader has now seen the folder once
    writer.write_bytes("runs/2.json", b"{}")
    assert reader.exists("runs/2.json")


def test_size_limit_sees_an_object_another_store_grew_after_a_listing(store_url: str) -> None:
    reader, writer = Store(store_url), Store(store_url)
    writer.write_bytes("runs/1.json", b"{}")
    assert reader.listdir("runs") == ["1.json"]  # the reader has now seen the folder once
    writer.write_bytes("runs/1.json", b"x" * 100)  # grows past the reader's limit
    with pytest.raises(StoreError, match="100 bytes"):
        reader.read_bytes("runs/1.json", max_bytes=10)


# --- structured ---------------------------------------------------------------------------------


def test_json_round_trip(store_url: str) -> None:
    store = Store(store_url)
    doc = {"name": "c", "partitions": 4, "nested": {"list": [1, 2.5, None, "x"]}, "ok": True}
    store.write_json("captures/c/_capture.json", doc)
    assert store.read_json("captures/c/_capture.json") == doc
    store.write_json("captures/c/_capture.json", {"replaced": 1})
    assert store.read_json("captures/c/_capture.json") == {"replaced": 1}


def test_parquet_file_round_trip(store_url: str) -> None:
    store = Store(store_url)
    t = table(50)
    size = store.write_parquet("p/one.parquet", t)
    assert size == len(store.read_bytes("p/one.parquet"))
    assert store.read_parquet("p/one.parquet").equals(t)
    assert (
        store.read_parquet("p/one.parquet", columns=["value"])
        .column("value")
        .equals(t.column("value"))
    )


def test_scan_reads_the_objects_given_with_filters_and_columns(store_url: str) -> None:
    import pyarrow.compute as pc

    store = Store(store_url)
    store.write_parquet("cap/part-0000/a.parquet", table(10))
    store.write_parquet("cap/part-0001/b.parquet", table(5, start=10))
    store.write_parquet("cap/part-0001/c.parquet", table(5, start=15).drop_columns(["source"]))
    got = store.scan(
        ["cap/part-0000/a.parquet", "cap/part-0001/b.parquet"],
        columns=["value"],
        filter=pc.field("value") >= 8,
    )
    assert got.column("value").to_pylist() == [8.0, 9.0, *map(float, range(10, 15))]
    # Objects of different versions: one schema over all, missing columns as nulls.
    every = store.scan(["cap/part-0000/a.parquet", "cap/part-0001/c.parquet"], unify=True).sort_by(
        "value"
    )
    assert every.num_rows == 15
    assert every.column("source").null_count == 5
    empty = store.scan([], schema=table(0).schema)
    assert empty.num_rows == 0
    assert empty.schema == table(0).schema
    with pytest.raises(FileNotFoundError):
        store.scan(["cap/part-0000/missing.parquet"])


def test_create_is_create_only_and_move_is_safe_to_repeat(store_url: str) -> None:
    store = Store(store_url)
    assert store.create("x/one", b"first") is True
    assert store.create("x/one", b"second") is False
    assert store.read_bytes("x/one") == b"first"
    store.write_bytes("stage/two", b"moved")
    store.write_bytes("x/two", b"old")
    store.move("stage/two", "x/two")
    assert store.read_bytes("x/two") == b"moved"
    assert not store.exists("stage/two")
    store.move("stage/two", "x/two")  # repeated after a crash: already done
    with pytest.raises(FileNotFoundError):
        store.move("stage/nothing", "x/nothing")
    assert store.read_range("x/two", 1, 3) == b"ov"
    assert store.read_range("x/two", 3, 100) == b"ed"
    assert store.size("x/two") == 5


# --- path validation ----------------------------------------------------------------------------

BAD_PATHS = [
    "../escape",
    "a/../../escape",
    "a/..",
    "..",
    ".",
    "./a",
    "a//b",
    "a/",
    "a\\..\\escape",
    "a\\b",
]


def test_paths_that_would_leave_the_store_are_refused(store_url: str) -> None:
    store = Store(store_url)
    store.write_bytes("inside", b"1")
    before = outside(store)
    for rel in BAD_PATHS:
        with pytest.raises(StoreError, match="would leave the store"):
            store.write_bytes(rel, b"x")
        with pytest.raises(StoreError):
            store.write_json(rel, {})
        with pytest.raises(StoreError):
            store.write_parquet(rel, table(1))
        with pytest.raises(StoreError):
            store.read_bytes(rel)
        with pytest.raises(StoreError):
            store.read_parquet(rel)
        with pytest.raises(StoreError):
            store.exists(rel)
        with pytest.raises(StoreError):
            store.listdir(rel)
        with pytest.raises(StoreError):
            list(store.walk_files(rel))
        with pytest.raises(StoreError):
            store.delete(rel, recursive=True)
    assert outside(store) == before
    assert list(store.walk_files()) == ["inside"]
    assert store.read_bytes("inside") == b"1"


def test_absolute_paths_are_refused_and_nothing_lands_next_to_the_store(store_url: str) -> None:
    store = Store(store_url)
    store.write_bytes("inside", b"1")
    parent = posixpath.dirname(store.root.rstrip("/"))
    target = "/" + parent.strip("/") + "/escaped"  # next to the store, if the check failed
    assert outside(store) == []
    for rel in (target, "/escaped", "/"):
        with pytest.raises(StoreError, match="would leave the store"):
            store.write_bytes(rel, b"x")
        with pytest.raises(StoreError):
            store.delete(rel, recursive=True)
    assert outside(store) == []
    assert list(store.walk_files()) == ["inside"]


def test_local_store_writes_nothing_outside_its_folder(tmp_path: Any) -> None:
    store = Store(str(tmp_path / "store"))
    store.write_bytes("ok/inside", b"1")
    for rel in ("../escape", "ok/../../escape", str(tmp_path / "escape"), "ok\\..\\..\\escape"):
        with pytest.raises(StoreError):
            store.write_bytes(rel, b"x")
    assert sorted(os.listdir(tmp_path)) == ["store"]
    assert sorted(os.listdir(tmp_path / "store")) == ["ok"]


# --- identity, pickling, repr -------------------------------------------------------------------


def test_store_pickles_to_just_its_url(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET)  # already so for s3
    store = Store(store_url)
    store.write_bytes("obj", b"payload")
    assert store.__reduce__() == (Store, (store_url,))
    data = pickle.dumps(store)
    assert TEST_SECRET.encode() not in data
    for word in (b"fsspec", b"s3fs", b"botocore", b"aiobotocore"):
        assert word not in data  # no filesystem, client or session state
    back = pickle.loads(data)
    assert type(back) is Store
    assert back == store
    assert hash(back) == hash(store)
    assert back.url == store_url
    assert back.read_bytes("obj") == b"payload"  # rebuilt, working filesystem
    assert back != Store(store_url + "-other")


def test_repr_shows_the_url_and_no_secret(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
    store = Store(store_url)
    assert repr(store) == f"Store({store_url!r})"
    assert TEST_SECRET not in repr(store)
    assert TEST_SECRET not in str(store)


def test_s3_store_is_built_from_the_environment_only(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"s3://{s3_env}/p"
    Store(url).write_bytes("o", b"1")
    # Another endpoint in the environment: a new Store follows it (no cached filesystem).
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(Exception, match=r"127\.0\.0\.1:9"):
        Store(url).read_bytes("o")


def test_an_unreachable_s3_store_raises_store_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backend failures surface as StoreError (an OSError), which the CLI turns into a message."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = Store("s3://nowhere/p")
    calls = {
        "write_bytes": lambda: store.write_bytes("o", b"1"),
        "read_bytes": lambda: store.read_bytes("o"),
        "exists": lambda: store.exists("o"),
        "listdir": lambda: store.listdir("d"),
    }
    for name, call in calls.items():
        with pytest.raises(StoreError) as info:
            call()
        assert TEST_SECRET not in str(info.value), name


# --- configuration errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["ftp://host/x", "gs://bucket/p", "http://example.org/store", "S4://b/p", "://x"]
)
def test_unknown_scheme_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="unknown scheme"):
        Store(url)


@pytest.mark.parametrize("url", ["s3://", "s3:///", "s3:////"])
def test_s3_url_without_a_bucket_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="names no bucket"):
        Store(url)


def test_a_folder_path_and_file_url_are_local_stores(tmp_path: Any) -> None:
    a = Store(str(tmp_path / "s"))
    b = Store(f"file://{tmp_path / 's'}")
    assert a.scheme == b.scheme == "file"
    a.write_bytes("x", b"1")
    assert b.read_bytes("x") == b"1"
    assert (tmp_path / "s" / "x").read_bytes() == b"1"


# --- the retry budget ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    offset=st.floats(0, 1e12, allow_nan=False),
    seconds=st.floats(0, 120, allow_nan=False),
    attempts=st.one_of(st.none(), st.integers(1, 10)),
)
def test_a_retry_budget_runs_out_on_any_clock(
    offset: float, seconds: float, attempts: int | None
) -> None:
    """Backoff spends the budget and stops, whatever the clock reads: a monotonic clock far
    from zero cannot grow by a remainder of 1e-15 s, which once retried forever."""
    policy = RetryPolicy(seconds=seconds, attempts=attempts)
    now, waits = offset, []
    for attempt in range(1, 1000):
        wait = policy.wait(attempt, now - offset)  # (elapsed, computed as the store does)
        if wait is None:
            break
        assert 0 < wait <= policy.max_delay
        waits.append(wait)
        now += wait
    else:
        pytest.fail(f"still retrying after 1000 attempts: {waits[-3:]}")
    assert len(waits) + 1 == attempt
    assert attempts is None or attempt <= attempts
    rounding = 1e-9 + len(waits) * offset * 4.5e-16  # (a float's ulp per step, at offset)
    assert sum(waits) <= seconds + rounding
    if attempts is None:  # the whole budget, less the millisecond counted as spent
        assert sum(waits) >= seconds - 1e-3 - rounding


def test_an_operation_that_keeps_failing_gives_up_within_the_budget() -> None:
    """``Store._call``'s loop, on an injected clock far from zero: the failure names the
    attempts and the budget it spent."""
    store = Store("memory://retry-budget")
    now = [1e9 + 0.1]
    waited: list[float] = []

    def sleep(seconds: float) -> None:
        waited.append(seconds)
        now[0] += seconds

    store.retry = RetryPolicy(seconds=4.0, clock=lambda: now[0], sleep=sleep)

    def refused() -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(StoreError, match=r"store unreachable after \d+ attempts over 4\.0 s"):
        store._call("read", "k", refused)
    assert sum(waited) == pytest.approx(4.0, abs=1e-3)
