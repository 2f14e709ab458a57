"""The store: one URL (local folder, ``s3://bucket/prefix`` or ``memory://``) for all outputs.

Everything goes through fsspec, so the same code serves every backend. A small registry maps a
URL scheme to a backend factory. S3 endpoint and credentials come only from the standard AWS
environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...): they are never passed in code,
never part of a repr, and a pickled ``Store`` holds nothing but its URL.

S3 faults: transient failures (connection refused or reset, timeouts, 5xx, throttling) are
retried. The store retries the whole operation with jittered exponential backoff (0.2 s
doubling up to 5 s) until the operation has spent ``OBSFLOW_S3_RETRY_SECONDS`` (default 30;
connect and read timeouts scale with it) or made ``AWS_MAX_ATTEMPTS`` attempts, if that is set.
Inside each attempt s3fs tries a call twice when the connection fails (0.1 s apart);
botocore's own retries are off so that the layers do not multiply. Then it raises
``StoreError`` ("cannot write s3://b/k: store unreachable after N attempts over T s:
<reason>"). Every operation is idempotent (a PUT of the same object twice leaves the same
object), so retrying whole operations is safe. Credentials never appear in the messages.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import posixpath
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from obsflow.connectors.errors import ConfigError, StoreError

DEFAULT_STORE = "./data/store"
RETRY_SECONDS_ENV = "OBSFLOW_S3_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 30.0

log = logging.getLogger("obsflow.store")
T = TypeVar("T")

# S3 error codes that mean "try again later" (besides any HTTP 5xx status).
_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "BandwidthLimitExceeded",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
    }
)
# Environment variables whose values must never show in a message.
_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")

# Stores (endpoint, bucket) that an operation of this process gave up on. Until one of their
# operations succeeds again, each operation gets a single attempt: once a run is failing
# because the store is down, what it does on the way out (sinks flushing on close, other
# workers) must not each wait out the whole retry budget.
_GAVE_UP: set[tuple[str, str]] = set()
_GAVE_UP_LOCK = threading.Lock()


@dataclass(frozen=True)
class RetryPolicy:
    """How long an S3 operation keeps retrying transient failures, and how.

    ``seconds`` bounds the time an operation spends retrying: no attempt starts after it, the
    last one starts right at it (so an operation fails after at most ``seconds`` plus one
    attempt, which the connect and read timeouts bound). ``attempts``, when set, also caps the
    number of attempts. Waits double from ``first_delay`` up to ``max_delay``, each jittered
    down by up to half so that workers do not retry in step. ``seconds=0`` makes one attempt.
    """

    seconds: float = DEFAULT_RETRY_SECONDS
    attempts: int | None = None
    first_delay: float = 0.2
    max_delay: float = 5.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """``OBSFLOW_S3_RETRY_SECONDS`` (default 30) and, if set, the standard
        ``AWS_MAX_ATTEMPTS``, which obsflow applies per store operation."""
        seconds = DEFAULT_RETRY_SECONDS
        text = os.environ.get(RETRY_SECONDS_ENV, "").strip()
        if text:
            try:
                seconds = float(text)
            except ValueError:
                seconds = math.nan
            if not (math.isfinite(seconds) and seconds >= 0):
                raise ConfigError(
                    f"{RETRY_SECONDS_ENV}={text!r}: use a number of seconds >= 0 (default "
                    f"{DEFAULT_RETRY_SECONDS:g}; 0 turns obsflow's own S3 retries off)"
                )
        attempts = None
        text = os.environ.get("AWS_MAX_ATTEMPTS", "").strip()
        if text:
            if not text.isdigit() or int(text) < 1:
                raise ConfigError(f"AWS_MAX_ATTEMPTS={text!r}: use a whole number >= 1")
            attempts = int(text)
        return cls(seconds=seconds, attempts=attempts)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...)."""
        ceiling = min(self.max_delay, self.first_delay * 2.0 ** min(attempt - 1, 30))
        return ceiling * random.uniform(0.5, 1.0)

    def client_config(self) -> dict[str, Any]:
        """botocore ``Config`` arguments: timeouts scaled to the budget, and no retries of
        botocore's own, which would multiply the store's (explicit settings beat the
        ``AWS_MAX_ATTEMPTS`` and ``AWS_RETRY_MODE`` variables there)."""
        return {
            "connect_timeout": min(5.0, max(1.0, self.seconds / 6)),
            "read_timeout": min(15.0, max(2.0, self.seconds / 3)),
            "retries": {"mode": "standard", "total_max_attempts": 1},
        }


def _transient(exc: BaseException) -> bool:
    """Whether a failure (or anything in its cause chain) is worth retrying."""
    import aiohttp
    import botocore.exceptions as bx  # type: ignore[import-untyped]
    from botocore.parsers import ResponseParserError  # type: ignore[import-untyped]

    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen or len(seen) > 20:
            continue
        seen.add(id(e))
        if isinstance(
            e,
            ConnectionError  # refused, reset, aborted, broken pipe
            | TimeoutError  # socket, asyncio and fsspec timeouts
            | aiohttp.ClientConnectionError
            | aiohttp.ClientPayloadError
            | bx.HTTPClientError  # botocore's connection, connect- and read-timeout errors
            | bx.IncompleteReadError
            | bx.ResponseStreamingError
            | ResponseParserError,  # what some throttling answers (invalid XML) give
        ):
            return True
        if isinstance(e, bx.ClientError):
            response = getattr(e, "response", None) or {}
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = str(response.get("Error", {}).get("Code", ""))
            return status >= 500 or status in (408, 429) or code in _TRANSIENT_CODES
        if isinstance(e, PermissionError | FileNotFoundError | FileExistsError):
            return False
        todo += [e.__cause__, e.__context__]
    return False


def _reason(exc: BaseException) -> str:
    """A one-line description of a backend failure, with credentials masked."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact(text)


def redact(text: str) -> str:
    """``text`` with the values of the AWS credential variables replaced by ``***``."""
    for name in _SECRET_VARS:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


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
    kwargs: dict[str, Any] = {
        "skip_instance_cache": True,
        "use_listings_cache": False,
        "config_kwargs": RetryPolicy.from_env().client_config(),
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        kwargs["client_kwargs"] = {"endpoint_url": endpoint}
    fs = fsspec.filesystem("s3", **kwargs)
    # s3fs retries connection errors and SlowDown itself, 5 times by default: keep one quick
    # retry (a stale pooled connection; reads streamed through fs.open get no other) without
    # multiplying the store's attempts or stretching one attempt beyond the store's budget.
    fs.retries = 2
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
        # Only remote stores retry: a local disk error does not go away by waiting.
        self.retry: RetryPolicy | None = RetryPolicy.from_env() if scheme == "s3" else None
        self.fs, self.root = BACKENDS[scheme](rest)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self._endpoint = (endpoint or "", self.root.split("/", 1)[0])

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __reduce__(self) -> tuple[type[Store], tuple[str]]:
        # Rebuild from the URL alone: no filesystem object (and no session state) is pickled.
        return (Store, (self.url,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Store) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def _call(self, action: str, rel: str, fn: Callable[[], T]) -> T:
        """Run one backend operation; retry transient failures; turn failures into StoreError.

        ``FileNotFoundError`` and ``StoreError`` pass through unchanged; everything else (OSError,
        the botocore errors s3fs passes on) becomes a ``StoreError`` naming the action and path.
        """
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                result = fn()
            except (StoreError, FileNotFoundError):
                raise
            except Exception as exc:
                policy = self.retry
                if policy is None or not _transient(exc):
                    raise StoreError(f"cannot {action} {self.uri(rel)}: {_reason(exc)}") from exc
                elapsed = time.monotonic() - started
                earlier = self._endpoint in _GAVE_UP
                if elapsed >= policy.seconds or attempt == policy.attempts or earlier:
                    with _GAVE_UP_LOCK:
                        _GAVE_UP.add(self._endpoint)
                    raise StoreError(
                        f"cannot {action} {self.uri(rel)}: store unreachable after {attempt} "
                        f"attempt{'s' if attempt > 1 else ''} over {elapsed:.1f} s"
                        f"{' (and earlier operations)' if earlier else ''}: {_reason(exc)}"
                    ) from exc
                (log.warning if attempt == 1 else log.debug)(
                    "%s %s failed (%s); retrying for up to %.0f s",
                    action,
                    self.uri(rel),
                    _reason(exc),
                    policy.seconds,
                )
                # The last attempt starts at the deadline, not a backoff before it.
                time.sleep(min(policy.delay(attempt), policy.seconds - elapsed))
            else:
                if _GAVE_UP and self._endpoint in _GAVE_UP:
                    with _GAVE_UP_LOCK:
                        _GAVE_UP.discard(self._endpoint)  # it answers again: full retries
                return result

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

        def write() -> None:
            if self.scheme == "file":
                # Temp names start with '.', so dataset readers skip them if we die mid-write.
                tmp = posixpath.join(posixpath.dirname(path), f".tmp-{uuid.uuid4().hex}")
                self.fs.pipe_file(tmp, data)
                os.replace(tmp, path)
            else:
                self.fs.pipe_file(path, data)  # an S3 PUT is atomic, and safe to repeat

        self._call("write", rel, write)

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

    def exists(self, rel: str) -> bool:
        path = self.path(rel)
        return self._call("check", rel, lambda: bool(self.fs.exists(path)))

    def listdir(self, rel: str = "") -> list[str]:
        """Names (not paths) directly under ``rel``; empty if it does not exist."""
        path = self.path(rel)
        try:
            entries = self._call("list", rel, lambda: self.fs.ls(path, detail=False, refresh=True))
        except FileNotFoundError:
            return []
        names = sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)
        return [n for n in names if n]

    def walk_files(self, rel: str = "") -> Iterator[str]:
        """Store-relative paths of every object under ``rel``."""
        base = self.path(rel)

        def find() -> list[str]:
            if not self.fs.exists(base):
                return []
            self.fs.invalidate_cache(base)
            return sorted(self.fs.find(base))

        for path in self._call("list", rel, find):
            yield posixpath.relpath("/" + str(path).lstrip("/"), "/" + self.root.lstrip("/"))

    def copy(self, src: str, dst: str) -> None:
        """Copy one object within the store (server-side where the backend can)."""
        if self.scheme == "file":
            self.write_bytes(dst, self.read_bytes(src))  # keeps the atomic-rename guarantee
        else:
            src_path, dst_path = self.path(src), self.path(dst)
            self._call("copy", dst, lambda: self.fs.copy(src_path, dst_path))

    def delete(self, rel: str, *, recursive: bool = False) -> None:
        path = self.path(rel)

        def delete() -> None:
            if self.fs.exists(path):  # a retry after a lost answer finds it gone: fine
                self.fs.rm(path, recursive=recursive)

        self._call("delete", rel, delete)

    # structured ------------------------------------------------------------------------

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, rel: str, *, max_bytes: int = 16 << 20) -> Any:
        return json.loads(self.read_bytes(rel, max_bytes=max_bytes))

    def write_parquet(self, rel: str, table: pa.Table) -> int:
        """Write a table as one Parquet object (atomically); returns its size in bytes."""
        buf = io.BytesIO()
        # Dictionary pages only for text (ids repeat); numbers rarely do, and skipping them is
        # a third faster with smaller files.
        text = [
            f.name
            for f in table.schema
            if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
        ]
        pq.write_table(table, buf, compression="zstd", row_group_size=1 << 20, use_dictionary=text)
        data = buf.getvalue()
        self.write_bytes(rel, data)
        return len(data)

    def read_parquet(self, rel: str, **kwargs: Any) -> pa.Table:
        """Read a Parquet file or folder (files starting with '_' or '.' are skipped)."""
        path = self.path(rel)
        table: pa.Table = self._call(
            "read", rel, lambda: pq.read_table(path, filesystem=self.fs, **kwargs)
        )
        return table
