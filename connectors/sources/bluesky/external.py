"""Bluesky external data (``resource``/``datum``, ``stream_resource``/``stream_datum``) as arrays.

An ``ExternalResolver`` remembers the asset documents of a document stream and reads the arrays
they point to. What it reads, as the handlers that wrote them define it:

- ``resource`` spec ``NPY_SEQ`` (ophyd.sim's ``SynSignalWithRegistry``): one ``.npy`` file per
  datum, ``<root>/<resource_path>_<index>.npy`` with the datum's ``index``;
- ``resource`` spec ``AD_HDF5`` (the area detector HDF5 plugin): the file
  ``<root>/<resource_path>``, dataset ``/entry/data/data``; a datum's ``point_number`` is
  ``frame_per_point`` rows (resource_kwargs, default 1) from ``point_number * frame_per_point``;
- ``stream_resource`` mimetype ``application/x-hdf5`` (ophyd-async's HDF writers): the file of
  its ``file://`` ``uri``, dataset ``parameters["dataset"]``; each index of a ``stream_datum``
  is ``m`` rows — ``parameters["multiplier"]`` if given, else the leading dimension of the
  descriptor's shape when that shape has the dataset's rank (ophyd-async declares
  ``[frames per event, *frame shape]``), else 1 — as bluesky's HDF5 consolidator reads them.

One datum, or one index of a stream datum, gives one array: its rows, without the leading axis
when there is only one (a frame ``(y, x)``, a scalar ``()``). Arrays come back C-contiguous,
little-endian, of an allow-listed dtype (``payload_format.DTYPES``).

``root_map`` relocates files (databroker's ``root_map``, for data moved after the run): the
longest key that is a file's path or a directory above it is replaced by its value — a
``resource``'s ``root`` exactly as databroker maps it, and ``stream_resource`` URI paths.

Sizes are checked before anything is allocated: the descriptor's declared shape × dtype, then
the file's (``.npy`` header, HDF5 dataset shape) — above ``max_bytes`` is ``oversize``. A file
that is not there yet (or an HDF5 dataset not yet that long) is read again every ``poll``
seconds until ``wait`` seconds after the first miss of a batch (one deadline per batch, so a
batch blocks at most ``wait``). HDF5 files are opened read-only (SWMR readers) and kept open
for one batch (``reading()``), then closed.

Every failure is an ``ExternalError`` whose ``reason`` is the reject code: ``unsupported_external``,
``missing_file``, ``index_out_of_range``, ``oversize``, ``bad_reference``, ``bad_payload``.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Container, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import numpy as np
from numpy.typing import NDArray

from obsflow.connectors.errors import ObsflowError
from obsflow.connectors.payloads.format import PayloadRefError, dtype_name

SPECS = ("NPY_SEQ", "AD_HDF5")
MIMETYPES = ("application/x-hdf5",)
AD_HDF5_DATASET = "/entry/data/data"
DEFAULT_MAX_BYTES = 256 * 2**20
DEFAULT_WAIT = 10.0
DEFAULT_POLL = 0.15
REASONS = (
    "unsupported_external",
    "missing_file",
    "index_out_of_range",
    "oversize",
    "bad_reference",
    "bad_payload",
)
ASSET_DOCUMENTS = ("resource", "datum", "datum_page", "stream_resource", "stream_datum")
_DTYPE_NUMPY = re.compile(r"[|<>=]?[biufc][0-9]{1,2}")
T = TypeVar("T")


class ExternalError(ObsflowError, ValueError):
    """External data that cannot become an array; ``reason`` is the reject code."""

    def __init__(self, reason: str, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry = retry  # the file may yet appear or grow (a detector writing late)


@dataclass(frozen=True)
class Declared:
    """What a descriptor's data key declares for one event's value (``shape``, ``dtype_numpy``)."""

    shape: tuple[Any, ...] = ()
    dtype_numpy: Any = ""

    @classmethod
    def of(cls, data_key: Mapping[str, Any]) -> Declared:
        shape = data_key.get("shape") or ()
        return cls(
            tuple(shape) if isinstance(shape, list | tuple) else (shape,),
            data_key.get("dtype_numpy", ""),
        )

    def check(self, max_bytes: int) -> None:
        """``bad_payload`` for a dtype no payload may have, ``oversize`` for a shape too large.

        Unknown dimensions (``None``) count as 1 and an unknown dtype as 1 byte: a lower bound.
        """
        itemsize = 1
        if self.dtype_numpy:
            text = self.dtype_numpy
            if not isinstance(text, str) or not _DTYPE_NUMPY.fullmatch(text):
                raise ExternalError(
                    "bad_payload",
                    f"descriptor declares dtype_numpy {str(text)[:40]!r} — payloads are plain "
                    "numbers (bool, int, uint, float, complex)",
                )
            itemsize = np.dtype(text).itemsize
        dims = [d for d in self.shape if d is not None]
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in dims):
            raise ExternalError("bad_payload", f"descriptor declares shape {list(self.shape)}")
        declared = math.prod(dims) * itemsize  # Python ints: a huge shape cannot overflow
        if declared > max_bytes:
            raise ExternalError(
                "oversize",
                f"descriptor declares shape {list(self.shape)} of "
                f"{self.dtype_numpy or 'unknown dtype'}: {declared} bytes (max {max_bytes})",
            )


@dataclass
class ExternalResolver:
    """The asset documents of a document stream, and the arrays they point to.

    Picklable between batches (no open files then). ``clock`` and ``sleep`` are injectable for
    tests of the waiting.
    """

    root_map: Mapping[str, str] = field(default_factory=dict)
    # Directories external files may be read from (after root_map; symlinks resolved); empty:
    # anywhere the process may read. Documents name the files: this keeps them to the data.
    allowed: tuple[str, ...] = ()
    max_bytes: int = DEFAULT_MAX_BYTES
    wait: float = DEFAULT_WAIT
    poll: float = DEFAULT_POLL
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    datums: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    stream_resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    stream_datums: set[str] = field(default_factory=set)  # resolved (or rejected) ones
    _roots: list[tuple[str, str]] = field(default_factory=list, init=False, repr=False)
    _files: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    _deadline: float | None = field(default=None, init=False, repr=False, compare=False)
    _reading: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        roots = []
        for old, new in dict(self.root_map).items():
            if not isinstance(old, str) or not isinstance(new, str) or not old or not new:
                raise ValueError(f"root_map entry {old!r}={new!r} — both sides must be paths")
            roots.append((_as_path(old).rstrip("/") or "/", _as_path(new).rstrip("/") or "/"))
        self._roots = sorted(roots, key=lambda pair: -len(pair[0]))
        if self.max_bytes <= 0 or self.wait < 0 or self.poll <= 0:
            raise ValueError(
                f"max_bytes {self.max_bytes}, wait {self.wait}, poll {self.poll} — "
                "use max_bytes > 0, wait >= 0, poll > 0"
            )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_files={}, _deadline=None, _reading=False)
        return state

    # --- documents ----------------------------------------------------------------------------

    def knows(self, name: str, doc: Mapping[str, Any]) -> bool:
        """Whether an asset document (by its uid) was remembered already."""
        if name == "datum_page":
            return all(i in self.datums for i in doc["datum_id"])
        remembered: dict[str, Container[str]] = {
            "resource": self.resources,
            "datum": self.datums,
            "stream_resource": self.stream_resources,
            "stream_datum": self.stream_datums,
        }
        kept = remembered.get(name)
        return kept is not None and doc["datum_id" if name == "datum" else "uid"] in kept

    def remember(self, name: str, doc: Mapping[str, Any]) -> None:
        """Keep an asset document; ``bad_reference`` when it points at nothing remembered."""
        if name == "resource":
            self.resources[doc["uid"]] = dict(doc)
        elif name == "stream_resource":
            self.stream_resources[doc["uid"]] = dict(doc)
        elif name == "datum":
            self._resource_of_datum(doc["resource"], doc["datum_id"])
            self.datums[doc["datum_id"]] = (doc["resource"], dict(doc["datum_kwargs"]))
        elif name == "datum_page":
            ids = doc["datum_id"]
            self._resource_of_datum(doc["resource"], f"page of {len(ids)}")
            columns = doc["datum_kwargs"]
            if any(len(v) != len(ids) for v in columns.values()):
                raise ExternalError(
                    "bad_reference",
                    f"datum_page of {len(ids)} ids has datum_kwargs of other lengths",
                )
            for i, datum_id in enumerate(ids):
                self.datums[datum_id] = (doc["resource"], {k: v[i] for k, v in columns.items()})
        elif name == "stream_datum":
            self.stream_resource_of(doc)
            self.stream_datums.add(doc["uid"])
        else:
            raise ValueError(f"{name!r} is no asset document ({', '.join(ASSET_DOCUMENTS)})")

    def _resource_of_datum(self, resource: str, datum: str) -> None:
        if resource not in self.resources:
            raise ExternalError(
                "bad_reference", f"datum {datum} of resource {resource!r}, which was never seen"
            )

    def stream_resource_of(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """The stream resource of a stream datum, its ranges checked; else ``bad_reference``."""
        found = self.stream_resources.get(doc["stream_resource"])
        if found is None:
            raise ExternalError(
                "bad_reference",
                f"stream_datum {doc['uid']!r} of stream_resource {doc['stream_resource']!r}, "
                "which was never seen",
            )
        indices, seq_nums = doc["indices"], doc["seq_nums"]
        width = indices["stop"] - indices["start"]
        if indices["start"] < 0 or width < 0 or seq_nums["stop"] - seq_nums["start"] != width:
            raise ExternalError(
                "bad_reference",
                f"stream_datum {doc['uid']!r}: indices {indices} and seq_nums {seq_nums} "
                "must be ranges of one length from 0 up",
            )
        return found

    # --- reading ------------------------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[None]:
        """One batch's reads: HDF5 files stay open until its end; one deadline for waiting."""
        if self._reading:  # nested: the outer batch owns files and deadline
            yield
            return
        self._reading, self._deadline = True, None
        try:
            yield
        finally:
            files, self._files = self._files, {}
            for handle in files.values():
                handle.close()
            self._reading, self._deadline = False, None

    def datum_array(self, datum_id: str, declared: Declared = Declared()) -> NDArray[Any]:
        """The array of a datum (the value of an event's external key)."""
        found = self.datums.get(datum_id)
        if found is None:
            raise ExternalError(
                "bad_reference",
                f"datum {str(datum_id)[:200]!r} was never seen (a datum comes before its event)",
            )
        resource_uid, kwargs = found
        resource = self.resources[resource_uid]
        spec = resource.get("spec")
        root, rpath = resource.get("root", ""), resource.get("resource_path", "")
        where = f"resource {resource_uid!r} (spec {spec!r}, root {root!r}, resource_path {rpath!r})"
        if spec not in SPECS:
            raise ExternalError(
                "unsupported_external", f"{where}: obsflow reads the specs {', '.join(SPECS)}"
            )
        declared.check(self.max_bytes)
        path = self.relocate(os.path.join(root, rpath) if root else rpath)
        with self.reading():
            if spec == "NPY_SEQ":
                index = _count(kwargs.get("index"), "datum_kwargs index", where)
                npy = self._inside(f"{path}_{index}.npy", where)
                return self._retrying(npy, lambda: _read_npy(npy, self.max_bytes))
            per_point = _count(
                resource.get("resource_kwargs", {}).get("frame_per_point", 1),
                "frame_per_point",
                where,
            )
            point = _count(kwargs.get("point_number"), "datum_kwargs point_number", where)
            if per_point < 1:
                raise ExternalError("bad_reference", f"{where}: frame_per_point {per_point} < 1")
            path = self._inside(path, where)
            return self._retrying(
                path, lambda: self._rows(path, AD_HDF5_DATASET, point, 1, per_point)[0]
            )

    def stream_arrays(
        self, doc: Mapping[str, Any], declared: Declared = Declared()
    ) -> list[NDArray[Any]]:
        """The arrays of a stream datum, one per index (``indices.start`` up to ``stop``)."""
        resource = self.stream_resource_of(doc)
        uri, mimetype = resource.get("uri", ""), resource.get("mimetype")
        where = f"stream_resource {resource['uid']!r} (mimetype {mimetype!r}, uri {uri!r})"
        if mimetype not in MIMETYPES:
            raise ExternalError(
                "unsupported_external",
                f"{where}: obsflow reads the mimetypes {', '.join(MIMETYPES)}",
            )
        parameters = resource.get("parameters") or {}
        dataset = parameters.get("dataset")
        if not isinstance(dataset, str) or not dataset:
            raise ExternalError("bad_reference", f"{where}: parameters name no 'dataset'")
        multiplier = parameters.get("multiplier")
        if multiplier is not None and (_count(multiplier, "multiplier", where) < 1):
            raise ExternalError("bad_reference", f"{where}: multiplier {multiplier} < 1")
        declared.check(self.max_bytes)
        path = self._inside(self.relocate(_uri_path(uri, where)), where)
        start, stop = doc["indices"]["start"], doc["indices"]["stop"]

        def read() -> list[NDArray[Any]]:
            return self._rows(path, dataset, start, stop - start, multiplier, declared.shape)

        with self.reading():
            return self._retrying(path, read)

    def _inside(self, path: str, where: str) -> str:
        """``path`` (a file to read), refused (``bad_reference``) outside the ``allowed``
        directories, symlinks resolved."""
        if self.allowed:
            real = os.path.realpath(path)
            inside = (os.path.realpath(d) for d in self.allowed)
            if not any(os.path.commonpath([real, d]) == d for d in inside):
                raise ExternalError(
                    "bad_reference",
                    f"{where}: {path} is outside the directories external files may be read "
                    f"from ({', '.join(self.allowed)}; --external-root)",
                )
        return path

    def relocate(self, path: str) -> str:
        """``path`` with the longest ``root_map`` key that is it, or a directory above it,
        replaced by its value."""
        for old, new in self._roots:
            if path == old:
                return new
            if path.startswith(old if old.endswith("/") else old + "/"):
                return new.rstrip("/") + "/" + path[len(old) :].lstrip("/")
        return path

    def _retrying(self, path: str, read: Callable[[], T]) -> T:
        while True:
            try:
                return read()
            except ExternalError as exc:
                if not exc.retry:
                    raise
                now = self.clock()
                if self._deadline is None:
                    self._deadline = now + self.wait
                if now >= self._deadline:
                    raise
                self._close(path)  # reopen: a writer may have grown the file meanwhile
                self.sleep(min(self.poll, self._deadline - now))

    def _close(self, path: str) -> None:
        handle = self._files.pop(path, None)
        if handle is not None:
            handle.close()

    def _rows(
        self,
        path: str,
        dataset: str,
        first: int,
        count: int,
        per_index: int | None,
        shape: tuple[Any, ...] = (),
    ) -> list[NDArray[Any]]:
        """The arrays of indices ``first`` .. ``first + count - 1``, each ``per_index`` rows of
        the dataset (None: as ``_rows_per_index`` infers from the declared ``shape``)."""
        handle = self._open(path)
        ds = handle.get(dataset)
        if ds is None or not hasattr(ds, "shape") or not hasattr(ds, "dtype"):
            raise ExternalError("bad_reference", f"{path} has no dataset {dataset!r}")
        if ds.ndim < 1:
            raise ExternalError("bad_payload", f"{path}:{dataset} is a scalar, not rows")
        try:
            dtype_name(ds.dtype)
        except PayloadRefError as exc:
            raise ExternalError("bad_payload", f"{path}:{dataset}: {exc}") from None
        m = per_index or _rows_per_index(shape, ds.ndim)
        row_bytes = math.prod(ds.shape[1:]) * ds.dtype.itemsize
        if m * row_bytes > self.max_bytes:
            raise ExternalError(
                "oversize",
                f"{path}:{dataset} has rows of shape {ds.shape[1:]} {ds.dtype}: {m} of them are "
                f"{m * row_bytes} bytes (max {self.max_bytes})",
            )
        lo, hi = first * m, (first + count) * m
        if hi > ds.shape[0]:
            raise ExternalError(
                "index_out_of_range",
                f"{path}:{dataset} has {ds.shape[0]} rows; rows {lo}..{hi - 1} were asked for",
                retry=True,
            )
        out = []
        for i in range(lo, hi, m):
            rows = ds[i : i + m]
            out.append(_plain(rows[0] if m == 1 else rows))
        return out

    def _open(self, path: str) -> Any:
        handle = self._files.get(path)
        if handle is not None:
            return handle
        h5py = _h5py()
        if not os.path.exists(path):
            raise ExternalError("missing_file", f"{path} does not exist", retry=True)
        try:
            handle = h5py.File(path, "r", swmr=True)
        except OSError as exc:  # not (yet) a whole HDF5 file
            raise ExternalError(
                "bad_payload", f"{path} is no readable HDF5 file: {exc}", retry=True
            ) from None
        if self._reading:
            self._files[path] = handle
        return handle


def _rows_per_index(shape: tuple[Any, ...], ndim: int) -> int:
    """Rows per index of a stream datum: the declared leading dimension when the declared shape
    has the dataset's rank (``[frames per event, *frame]``), else one."""
    if len(shape) == ndim and isinstance(shape[0], int) and shape[0] >= 1:
        return shape[0]
    return 1


def _count(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ExternalError("bad_reference", f"{where}: {what} {value!r} is not a count")
    return value


def _as_path(text: str) -> str:
    return unquote(urlsplit(text).path) if text.startswith("file:") else text


def _uri_path(uri: Any, where: str) -> str:
    if not isinstance(uri, str) or not uri:
        raise ExternalError("bad_reference", f"{where}: no uri")
    parts = urlsplit(uri)
    if parts.scheme not in ("file", "") or parts.netloc not in ("", "localhost"):
        raise ExternalError(
            "unsupported_external", f"{where}: obsflow reads file:// URIs of this host"
        )
    return unquote(parts.path)


def _plain(array: NDArray[Any]) -> NDArray[Any]:
    """C-contiguous, little-endian, allow-listed dtype; else ``bad_payload``."""
    try:
        dtype_name(array.dtype)
    except PayloadRefError as exc:
        raise ExternalError("bad_payload", str(exc)) from None
    return np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")


def _read_npy(path: str, max_bytes: int) -> NDArray[Any]:
    """A ``.npy`` file: header first (dtype allow-list, size cap), then exactly its data."""
    try:
        f = open(path, "rb")  # noqa: SIM115 — closed below, after the header checks
    except FileNotFoundError:
        raise ExternalError("missing_file", f"{path} does not exist", retry=True) from None
    except OSError as exc:
        raise ExternalError("bad_payload", f"{path} cannot be read: {exc}") from None
    with f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
        except (ValueError, OSError, SyntaxError) as exc:  # partly written, or no .npy at all
            raise ExternalError(
                "bad_payload", f"{path} has no .npy header: {exc}", retry=True
            ) from None
        try:
            dtype_name(dtype)
        except PayloadRefError as exc:
            raise ExternalError("bad_payload", f"{path}: {exc}") from None
        size = math.prod(shape) * dtype.itemsize
        if size > max_bytes:
            raise ExternalError(
                "oversize", f"{path} holds shape {shape} of {dtype}: {size} bytes (max {max_bytes})"
            )
        data = f.read(size)
    if len(data) != size:
        raise ExternalError(
            "bad_payload", f"{path} has {len(data)} of its {size} bytes of data", retry=True
        )
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return _plain(array)


def _h5py() -> Any:
    try:
        import h5py  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:  # pragma: no cover - the bluesky extra brings it
        raise ModuleNotFoundError(
            "reading HDF5 external data needs h5py — pip install 'obsflow[bluesky]'"
        ) from exc
    return h5py
