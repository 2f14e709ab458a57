"""The store: one URL (local folder, ``s3://bucket/prefix`` or ``memory://``) for all outputs.

Everything goes through fsspec, so the same code serves every backend, and every operation
goes through ``Store._call``: transient failures of a remote store are retried under one
budget (``connectors.storage.retry``), and every failure becomes a ``StoreError`` that names the
action and the object, never a credential. That includes reads: Parquet scans use a pyarrow
filesystem whose opens and ranged reads go through the same retries (``storage.parquet``). A
small registry maps a URL scheme to a backend factory (``storage.backends``). S3 endpoint and
credentials come only from the standard AWS environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ...): they are never passed in code, never part of a repr, and a
pickled ``Store`` holds nothing but its URL.

Inside each attempt s3fs tries a call twice when the connection fails (0.1 s apart);
botocore's own retries are off so that the layers do not multiply. Every operation is
idempotent (a PUT of the same object twice leaves the same object; create-only writes report
"already there"), so retrying whole operations is safe.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.storage.backends import (
    BACKENDS,
    check_rel,
    create_local,
    delta_s3_options,
    precondition_failed,
    s3_endpoint,
)
from obsflow.connectors.storage.parquet import RetryingHandler, parquet_bytes
from obsflow.connectors.storage.retry import (
    Failure,
    GaveUp,
    RetryPolicy,
    delta_failure,
    store_failure,
)

if TYPE_CHECKING:
    import pyarrow.dataset as ds

DEFAULT_STORE = "./data/store"

log = logging.getLogger("obsflow.store")
T = TypeVar("T")


class Store:
    """A root URL plus the fsspec filesystem that serves it. Cheap to build; picklable."""

    def __init__(self, url: str = DEFAULT_STORE) -> None:
        scheme, sep, rest = url.partition("://")
        if not sep:
            scheme, rest = "file", url
        if scheme not in BACKENDS:
            raise ConfigError(
                f"store URL {url!r} has unknown scheme {scheme!r}; use a folder, "
                f"{', '.join(s + '://' for s in BACKENDS if s != 'file')} or file://"
            )
        if scheme == "s3" and not rest.strip("/"):
            raise ConfigError(f"store URL {url!r} names no bucket: use s3://bucket/prefix")
        self.url = url
        self.scheme = scheme
        # Only remote stores retry: a local disk error does not go away by waiting.
        self.retry: RetryPolicy | None = RetryPolicy.from_env() if scheme == "s3" else None
        self.fs, self.root = BACKENDS[scheme](rest)
        self.local = scheme in ("file", "memory")  # (a memory:// store is a private folder)
        self._shown = rest.strip("/") if scheme == "memory" else None
        self._endpoint = (s3_endpoint() or "", self.root.split("/", 1)[0])
        self._arrow_fs: pafs.FileSystem | None = None

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def check_bucket(self) -> None:
        """``StoreError`` if an S3 store's bucket does not exist (a listing of a missing
        bucket would otherwise read as an empty store, and a write fail with S3's XML)."""
        if self.scheme != "s3":
            return
        bucket = self.root.split("/", 1)[0]
        try:
            self._call("check", "", lambda: self.fs.call_s3("head_bucket", Bucket=bucket))
        except FileNotFoundError:
            where = self._endpoint[0] or "AWS"
            raise StoreError(
                f"no bucket {bucket!r} at {where}: create it, or check --store and AWS_ENDPOINT_URL"
            ) from None
        except PermissionError:
            pass  # (allowed to use its objects, not to ask about the bucket: fine)

    def __reduce__(self) -> tuple[type[Store], tuple[str]]:
        # Rebuild from the URL alone: no filesystem object (and no session state) is pickled.
        return (Store, (self.url,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Store) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def _call(self, action: str, rel: str, fn: Callable[[], T]) -> T:
        """Run one backend operation; retry transient failures; turn failures into StoreError.

        ``FileNotFoundError``, ``FileExistsError`` and ``StoreError`` pass through unchanged;
        everything else (OSError, the botocore errors s3fs passes on) becomes a ``StoreError``
        naming the action and path.
        """
        result = self._retrying(
            action,
            rel,
            fn,
            lambda exc: store_failure(exc, retries=self.retry is not None),
            keep=(StoreError, FileNotFoundError, FileExistsError),
        )
        GaveUp.discard(self._endpoint)  # it answers again: full retries
        return result

    def _retrying(
        self,
        action: str,
        rel: str,
        fn: Callable[[], T],
        judge: Callable[[Exception], Failure],
        *,
        keep: tuple[type[Exception], ...],
        retry: bool = True,
    ) -> T:
        """Run ``fn``, retrying the failures ``judge`` calls transient under the store's
        policy until its budget is spent (or, once the endpoint was given up on, at once);
        ``keep`` pass through, any other failure becomes a ``StoreError`` naming the action
        and ``rel``. ``retry=False``: one attempt, and giving up marks nothing in ``GaveUp``."""
        clock = self.retry.clock if self.retry is not None else time.monotonic
        started = clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except keep:
                raise
            except Exception as exc:
                failure = judge(exc)
                if not failure.transient:
                    raise StoreError(f"cannot {action} {self.uri(rel)}: {failure.detail}") from exc
                policy = self.retry
                elapsed = clock() - started
                earlier = GaveUp.has(self._endpoint)
                wait = policy.wait(attempt, elapsed) if retry and policy is not None else None
                if policy is None or wait is None or earlier:
                    if retry:
                        GaveUp.add(self._endpoint)
                    attempts = attempt + failure.inner
                    raise failure.error(
                        f"cannot {action} {self.uri(rel)}: store unreachable after {attempts} "
                        f"attempt{'s' if attempts > 1 else ''} over {elapsed:.1f} s"
                        f"{' (and earlier operations)' if earlier else ''}: {failure.detail}"
                    ) from exc
                (log.warning if attempt == 1 else log.debug)(
                    "%s %s failed (%s); retrying for up to %.0f s",
                    action,
                    self.uri(rel),
                    failure.detail,
                    policy.seconds,
                )
                policy.sleep(wait)

    # paths -----------------------------------------------------------------------------

    def path(self, rel: str = "") -> str:
        """Backend path of a store-relative path (validated to stay inside the store)."""
        if not rel:
            return self.root
        return posixpath.join(self.root, check_rel(rel))

    def rel(self, path: str) -> str:
        """The store-relative path of a backend path under the root."""
        return posixpath.relpath("/" + str(path).lstrip("/"), "/" + self.root.lstrip("/"))

    def uri(self, rel: str = "") -> str:
        """A URL for a store-relative path, for messages and for users."""
        if self._shown is not None:
            return f"memory://{self._shown}" + (f"/{check_rel(rel)}" if rel else "")
        path = self.path(rel)
        return path if self.scheme == "file" else f"{self.scheme}://{path.lstrip('/')}"

    # bytes -----------------------------------------------------------------------------

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write an object atomically: readers see the old object or the whole new one."""
        path = self.path(rel)

        def write() -> None:
            if self.local:
                # Temp names start with '.', so dataset readers skip them if we die mid-write.
                tmp = posixpath.join(posixpath.dirname(path), f".tmp-{uuid.uuid4().hex}")
                self.fs.pipe_file(tmp, data)
                os.replace(tmp, path)
            else:
                self.fs.pipe_file(path, data)  # an S3 PUT is atomic, and safe to repeat

        self._call("write", rel, write)

    def create(self, rel: str, data: bytes) -> bool:
        """Write an object only if it does not exist yet; False if it does (never replaces).

        S3: a conditional PUT (``If-None-Match: *``; 412 means it exists). A local folder (and
        a ``memory://`` store's): a temp file, fsync, then a hard link (atomic, create-only).
        """
        path = self.path(rel)

        def create() -> bool:
            if self.local:
                return create_local(path, data)
            bucket, key, _ = self.fs.split_path(path)
            try:
                self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            except Exception as exc:
                if precondition_failed(exc):
                    return False
                raise
            return True

        return self._call("write", rel, create)

    def read_bytes(self, rel: str, *, max_bytes: int | None = None) -> bytes:
        """Read a whole object; with ``max_bytes``, refuse larger objects before reading."""
        path = self.path(rel)
        if max_bytes is None:
            return self._call("read", rel, lambda: bytes(self.fs.cat_file(path)))
        limit = max_bytes

        def read() -> bytes:
            size = self.fs.size(path)
            if size > limit:
                raise StoreError(f"{self.uri(rel)} is {size} bytes, more than {limit}")
            # Never more than the limit, even if the object grew since its size was read.
            return bytes(self.fs.cat_file(path, start=0, end=limit + 1))

        data = self._call("read", rel, read)
        if len(data) > max_bytes:
            raise StoreError(f"{self.uri(rel)} is more than {max_bytes} bytes")
        return data

    def read_range(self, rel: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of an object (fewer at its end); one ranged read."""
        path = self.path(rel)

        def read() -> bytes:
            if self.local:
                with open(path, "rb") as f:
                    f.seek(start)
                    return f.read(max(0, end - start))
            data: bytes = self.fs.cat_file(path, start=start, end=end)
            return bytes(data[: max(0, end - start)])

        return self._call("read", rel, read)

    def size(self, rel: str) -> int:
        path = self.path(rel)
        return int(self._call("check", rel, lambda: self.fs.size(path)))

    def exists(self, rel: str) -> bool:
        path = self.path(rel)
        return self._call("check", rel, lambda: bool(self.fs.exists(path)))

    def listdir(self, rel: str = "") -> list[str]:
        """Names (not paths) directly under ``rel``, sorted; empty if it does not exist."""
        path = self.path(rel)
        try:
            entries = self._call("list", rel, lambda: self.fs.ls(path, detail=False, refresh=True))
        except FileNotFoundError:
            return []
        names = sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)
        return [n for n in names if n]

    def walk_files(self, rel: str = "") -> Iterator[str]:
        """Store-relative paths of every object under ``rel``, sorted."""
        base = self.path(rel)

        def find() -> list[str]:
            if not self.fs.exists(base):
                return []
            self.fs.invalidate_cache(base)
            return sorted(self.fs.find(base))

        for path in self._call("list", rel, find):
            yield self.rel(path)

    def signature(self, rel: str) -> tuple[Any, ...] | None:
        """What tells this object from another one written at the same path later (size,
        time, inode or ETag; None: there is no such object)."""
        path = self.path(rel)

        def info() -> tuple[Any, ...] | None:
            try:
                found = self.fs.info(path, refresh=True) if not self.local else self.fs.info(path)
            except FileNotFoundError:
                return None
            return (
                found.get("size"),
                found.get("mtime", found.get("LastModified")),
                found.get("ino", found.get("ETag")),
            )

        return self._call("check", rel, info)

    def newest(self, rel: str) -> datetime | None:
        """When the most recently written object under ``rel`` was written (None: none)."""
        base = self.path(rel)

        def find() -> list[Any]:
            if not self.fs.exists(base):
                return []
            self.fs.invalidate_cache(base)
            found = self.fs.find(base, detail=True)
            return [i.get("mtime", i.get("LastModified")) for i in found.values()]

        times = [
            t if isinstance(t, datetime) else datetime.fromtimestamp(float(t), UTC)
            for t in self._call("list", rel, find)
            if t is not None
        ]
        return max(times, default=None)

    def copy(self, src: str, dst: str) -> None:
        """Copy one object within the store (server-side where the backend can)."""
        if self.local:
            self.write_bytes(dst, self.read_bytes(src))  # keeps the atomic-rename guarantee
        else:
            src_path, dst_path = self.path(src), self.path(dst)
            self._call("copy", dst, lambda: self.fs.copy(src_path, dst_path))

    def move(self, src: str, dst: str) -> None:
        """Move one object, replacing ``dst`` atomically (a rename locally; copy and delete on
        S3). Safe to repeat: a move whose source is gone but whose target exists is done."""
        src_path, dst_path = self.path(src), self.path(dst)

        def move() -> None:
            if not self.fs.exists(src_path):
                if self.fs.exists(dst_path):
                    return  # an earlier attempt got through
                raise FileNotFoundError(src_path)
            if self.local:
                os.makedirs(posixpath.dirname(dst_path), exist_ok=True)
                os.replace(src_path, dst_path)
            else:
                self.fs.copy(src_path, dst_path)
                self.fs.rm(src_path)

        self._call("move", dst, move)

    def delete(self, rel: str, *, recursive: bool = False) -> None:
        path = self.path(rel)

        def delete() -> None:
            # (gone already — a retry after a lost answer, another process — is fine)
            with contextlib.suppress(FileNotFoundError):
                if self.fs.exists(path):
                    self.fs.rm(path, recursive=recursive)

        self._call("delete", rel, delete)

    # structured ------------------------------------------------------------------------

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json_bytes(obj))

    def create_json(self, rel: str, obj: Any) -> bool:
        """``create`` of a JSON document: False if the object already exists."""
        return self.create(rel, json_bytes(obj))

    def read_json(self, rel: str, *, max_bytes: int = 16 << 20) -> Any:
        return json.loads(self.read_bytes(rel, max_bytes=max_bytes))

    def write_parquet(self, rel: str, table: pa.Table) -> int:
        """Write a table as one Parquet object (atomically); returns its size in bytes."""
        data = parquet_bytes(table)
        self.write_bytes(rel, data)
        return len(data)

    def read_parquet(self, rel: str, **kwargs: Any) -> pa.Table:
        """Read one Parquet object whole (bookkeeping and small objects)."""
        data = self.read_bytes(rel)
        return self._call("read", rel, lambda: pq.read_table(io.BytesIO(data), **kwargs))

    def parquet_metadata(self, rel: str) -> pq.FileMetaData:
        """The footer of a Parquet object (a couple of ranged reads)."""
        return self._call(
            "read", rel, lambda: pq.ParquetFile(self.arrow_fs.open_input_file(self.path(rel)))
        ).metadata

    def scan(
        self,
        rels: Sequence[str],
        *,
        schema: pa.Schema | None = None,
        columns: Sequence[str] | None = None,
        filter: ds.Expression | None = None,
        unify: bool = False,
    ) -> pa.Table:
        """Rows of Parquet objects ``rels``, with the filter pushed down (row groups skipped by
        their statistics) and only ``columns`` read. ``schema`` reads every object under one
        schema (missing columns as nulls); ``unify`` derives it from the objects' own schemas
        (objects written by different versions may differ in optional columns)."""
        if not rels:
            empty = (schema or pa.schema([])).empty_table()
            return empty.select(list(columns)) if columns is not None else empty

        def scan() -> pa.Table:
            import pyarrow.dataset as ds  # (it imports pandas: not at start-up)

            dataset = ds.dataset(
                [self.path(r) for r in rels], filesystem=self.arrow_fs, format="parquet"
            )
            wanted = schema
            if wanted is None and unify:
                wanted = pa.unify_schemas([f.physical_schema for f in dataset.get_fragments()])
            if wanted is not None:
                dataset = dataset.replace_schema(wanted)
            return dataset.to_table(
                columns=None if columns is None else list(columns), filter=filter
            )

        return self._call("read", rels[0].rsplit("/", 1)[0], scan)

    @property
    def arrow_fs(self) -> pafs.FileSystem:
        """A pyarrow filesystem over the store's backend whose reads retry like ``_call``."""
        if self._arrow_fs is None:
            if self.local:
                self._arrow_fs = pafs.LocalFileSystem()
            else:
                self._arrow_fs = pafs.PyFileSystem(RetryingHandler(self))
        return self._arrow_fs

    # tables ----------------------------------------------------------------------------

    def table_location(self, rel: str) -> tuple[str, dict[str, str]]:
        """The URI delta-rs opens for the table at ``rel`` and its storage options: S3's
        endpoint and the retry budget of ``OBSFLOW_S3_RETRY_SECONDS``. Credentials are not
        among them: delta-rs reads them from the standard AWS environment itself."""
        path = self.path(rel)
        if self.local:
            return path, {}
        return f"s3://{path.lstrip('/')}", delta_s3_options(self.retry or RetryPolicy.from_env())

    def call_table(self, action: str, rel: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        """Run one delta-rs operation on a table; a failure becomes a ``StoreError`` of one
        line naming the action and the table (its cause kept, for callers that need to tell
        a lost commit from a broken store), never showing a credential. delta-rs retries some
        transient failures itself (within the budget ``table_location`` gives it), not all
        (a connection reset mid-request): those are retried here, like ``_call``'s, unless
        ``retry`` is off (a commit: its caller looks at the table again instead); a store that
        stays unreachable is a ``StoreUnreachableError``."""
        # No GaveUp.discard on success, unlike _call: some delta-rs calls answer from a table
        # already loaded, which says nothing about whether the store answers.
        return self._retrying(
            action, rel, fn, delta_failure, keep=(StoreError, FileNotFoundError), retry=retry
        )


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
