"""The store's backends: a registry mapping a URL scheme (``file``, ``memory``, ``s3``) to a factory
of (fsspec filesystem, root path), and what only a local folder needs (atomic create-only writes).

S3 endpoint and credentials come only from the standard AWS environment; nothing here holds them.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

import fsspec

from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.storage.retry import RetryPolicy, http_error

_NO_HARDLINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS}


def local(path: str) -> tuple[Any, str]:
    fs = fsspec.filesystem("file", auto_mkdir=True)
    return fs, os.path.abspath(path)


_MEMORY_ROOT: str | None = None


def memory_root() -> str:
    """This process's folder for ``memory://`` stores (RAM-backed ``/dev/shm`` where there is
    one), removed when the process exits."""
    global _MEMORY_ROOT
    if _MEMORY_ROOT is None:
        shm = "/dev/shm"  # noqa: S108 - a private folder made by mkdtemp below, mode 0700
        base = shm if os.access(shm, os.W_OK) else tempfile.gettempdir()
        _MEMORY_ROOT = tempfile.mkdtemp(prefix=f"obsflow-memory-{os.getpid()}-", dir=base)
        atexit.register(shutil.rmtree, _MEMORY_ROOT, True)
    return _MEMORY_ROOT


def memory(path: str) -> tuple[Any, str]:
    # delta-rs opens tables by path and cannot see Python's in-memory filesystems: a memory://
    # store is a folder of this process, gone when it exits (as memory would be).
    name = path.strip("/")
    if not name:
        raise ConfigError("a memory:// store needs a name: memory://NAME")
    check_rel(name)
    return local(os.path.join(memory_root(), name))


def s3_endpoint() -> str | None:
    """The S3 endpoint of the standard AWS environment (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3(path: str) -> tuple[Any, str]:
    # s3fs reads keys and region from the environment itself; the endpoint is passed
    # explicitly so that older botocore releases that ignore AWS_ENDPOINT_URL still work.
    # No listings cache: other writers (processes, other Store objects) change the bucket, and
    # a stale listing makes exists() miss new objects and size() report old sizes.
    kwargs: dict[str, Any] = {
        "skip_instance_cache": True,
        "use_listings_cache": False,
        "config_kwargs": RetryPolicy.from_env().client_config(),
    }
    endpoint = s3_endpoint()
    if endpoint:
        kwargs["client_kwargs"] = {"endpoint_url": endpoint}
    fs = fsspec.filesystem("s3", **kwargs)
    # s3fs retries connection errors and SlowDown itself, 5 times by default: keep one quick
    # retry (a stale pooled connection) without multiplying the store's attempts or stretching
    # one attempt beyond the store's budget.
    fs.retries = 2
    return fs, path.strip("/")


def delta_s3_options(policy: RetryPolicy) -> dict[str, str]:
    """delta-rs storage options for an S3 table: the endpoint and the retry budget of
    ``policy``. Credentials are not among them: delta-rs reads the AWS environment itself."""
    options = {"AWS_ALLOW_HTTP": "false"}
    endpoint = s3_endpoint()
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    options["retry_timeout"] = f"{max(1, int(policy.seconds))}s"
    options["timeout"] = f"{max(10, int(policy.seconds))}s"
    options["connect_timeout"] = "5s"
    if policy.attempts is not None:
        options["max_retries"] = str(max(0, policy.attempts - 1))
    return options


BACKENDS: dict[str, Callable[[str], tuple[Any, str]]] = {
    "file": local,
    "memory": memory,
    "s3": s3,
}
"""URL scheme -> factory returning (fsspec filesystem, root path)."""


def check_rel(rel: str) -> str:
    """A store-relative path must stay inside the store: no absolute paths, no ``..``."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
        raise StoreError(f"path {rel!r} would leave the store")
    return rel


def create_local(path: str, data: bytes) -> bool:
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
            # of one key both write a complete object with the same bytes.
            if os.path.exists(path):
                return False
            os.replace(tmp, path)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def precondition_failed(exc: BaseException) -> bool:
    status, code = http_error(exc)
    return isinstance(exc, FileExistsError) or status == 412 or code == "PreconditionFailed"
