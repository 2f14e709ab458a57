"""The store: one URL (local folder, ``s3://bucket/prefix`` or ``memory://``) for all outputs.

Everything goes through fsspec, so the same code serves every backend. A small registry maps a
URL scheme to a backend factory. S3 endpoint and credentials come only from the standard AWS
environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...): they are never passed in code,
never part of a repr, and a pickled ``Store`` holds nothing but its URL.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from connectors.errors import ConfigError, StoreError

DEFAULT_STORE = "./data/store"


def _local(path: str) -> tuple[Any, str]:
    fs = fsspec.filesystem("file", auto_mkdir=True)
    return fs, os.path.abspath(path)


def _memory(path: str) -> tuple[Any, str]:
    return fsspec.filesystem("memory"), "/" + path.strip("/")


def _s3(path: str) -> tuple[Any, str]:
    # s3fs reads keys and region from the environment itself; the endpoint is passed
    # explicitly so that older botocore releases that ignore AWS_ENDPOINT_URL still work.
    # No listings cache: other writers (processes, other Store objects) change the bucket, and
    # a stale listing makes exists() miss new objects and size() report old sizes.
    kwargs: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        kwargs["client_kwargs"] = {"endpoint_url": endpoint}
    fs = fsspec.filesystem("s3", **kwargs)
    return fs, path.strip("/")


BACKENDS: dict[str, Callable[[str], tuple[Any, str]]] = {
    "file": _local,
    "memory": _memory,
    "s3": _s3,
}
"""URL scheme -> factory returning (fsspec filesystem, root path)."""


def _check_rel(rel: str) -> str:
    """A store-relative path must stay inside the store: no absolute paths, no ``..``."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
        raise StoreError(f"path {rel!r} would leave the store")
    return rel


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
        self.fs, self.root = BACKENDS[scheme](rest)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __reduce__(self) -> tuple[type[Store], tuple[str]]:
        # Rebuild from the URL alone: no filesystem object (and no session state) is pickled.
        return (Store, (self.url,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Store) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    @contextlib.contextmanager
    def _backend(self, action: str, rel: str) -> Iterator[None]:
        """Turn any backend failure (OSError, botocore errors s3fs passes on) into StoreError."""
        try:
            yield
        except (StoreError, FileNotFoundError):
            raise
        except Exception as exc:
            raise StoreError(f"cannot {action} {self.uri(rel)}: {exc}") from exc

    # paths -----------------------------------------------------------------------------

    def path(self, rel: str = "") -> str:
        """Backend path of a store-relative path (validated to stay inside the store)."""
        if not rel:
            return self.root
        return posixpath.join(self.root, _check_rel(rel))

    def uri(self, rel: str = "") -> str:
        """A URL for a store-relative path, for messages and for users."""
        path = self.path(rel)
        return path if self.scheme == "file" else f"{self.scheme}://{path.lstrip('/')}"

    # bytes -----------------------------------------------------------------------------

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write an object atomically: readers see the old object or the whole new one."""
        path = self.path(rel)
        with self._backend("write", rel):
            if self.scheme == "file":
                # Temp names start with '.', so dataset readers skip them if we die mid-write.
                tmp = posixpath.join(posixpath.dirname(path), f".tmp-{uuid.uuid4().hex}")
                self.fs.pipe_file(tmp, data)
                os.replace(tmp, path)
            else:
                self.fs.pipe_file(path, data)  # an S3 PUT is atomic

    def read_bytes(self, rel: str, *, max_bytes: int | None = None) -> bytes:
        """Read a whole object; with ``max_bytes``, refuse larger objects before reading."""
        path = self.path(rel)
        with self._backend("read", rel):
            if max_bytes is None:
                whole: bytes = self.fs.cat_file(path)
                return whole
            size = self.fs.size(path)
            if size > max_bytes:
                raise StoreError(f"{self.uri(rel)} is {size} bytes, more than {max_bytes}")
            # Never more than the limit, even if the object grew since its size was read.
            data: bytes = self.fs.cat_file(path, start=0, end=max_bytes + 1)
        if len(data) > max_bytes:
            raise StoreError(f"{self.uri(rel)} is more than {max_bytes} bytes")
        return data

    def exists(self, rel: str) -> bool:
        path = self.path(rel)
        with self._backend("check", rel):
            return bool(self.fs.exists(path))

    def listdir(self, rel: str = "") -> list[str]:
        """Names (not paths) directly under ``rel``; empty if it does not exist."""
        path = self.path(rel)
        try:
            with self._backend("list", rel):
                entries = self.fs.ls(path, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        names = sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)
        return [n for n in names if n]

    def walk_files(self, rel: str = "") -> Iterator[str]:
        """Store-relative paths of every object under ``rel``."""
        base = self.path(rel)
        with self._backend("list", rel):
            if not self.fs.exists(base):
                return
            self.fs.invalidate_cache(base)
            found = sorted(self.fs.find(base))
        for path in found:
            yield posixpath.relpath("/" + str(path).lstrip("/"), "/" + self.root.lstrip("/"))

    def copy(self, src: str, dst: str) -> None:
        """Copy one object within the store (server-side where the backend can)."""
        if self.scheme == "file":
            self.write_bytes(dst, self.read_bytes(src))  # keeps the atomic-rename guarantee
        else:
            with self._backend("copy", dst):
                self.fs.copy(self.path(src), self.path(dst))

    def delete(self, rel: str, *, recursive: bool = False) -> None:
        path = self.path(rel)
        with self._backend("delete", rel):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=recursive)

    # structured ------------------------------------------------------------------------

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, rel: str, *, max_bytes: int = 16 << 20) -> Any:
        return json.loads(self.read_bytes(rel, max_bytes=max_bytes))

    def write_parquet(self, rel: str, table: pa.Table) -> int:
        """Write a table as one Parquet object (atomically); returns its size in bytes."""
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", row_group_size=1 << 20)
        data = buf.getvalue()
        self.write_bytes(rel, data)
        return len(data)

    def read_parquet(self, rel: str, **kwargs: Any) -> pa.Table:
        """Read a Parquet file or folder (files starting with '_' or '.' are skipped)."""
        path = self.path(rel)
        with self._backend("read", rel):
            return pq.read_table(path, filesystem=self.fs, **kwargs)
