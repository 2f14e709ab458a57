"""EPICS process variables as a live source: what Channel Access (``ca.py``) and PV Access
(``pva.py``) share.

``ca://PV[,PV...]`` and ``pva://PV[,PV...]`` name PVs, not hosts: where the IOCs are comes
from the standard EPICS environment (``EPICS_CA_ADDR_LIST``, ``EPICS_CA_AUTO_ADDR_LIST``,
``EPICS_PVA_ADDR_LIST``, ...), as for every EPICS client. ``--pvs FILE`` adds one PV a line
(``PV [CHANNEL]``: a PV whose name is no channel id, such as ``XF:31ID{Tbl:1}X``, is given
one).

Each monitor update is one reading: source = ``--source`` or the IOC (CA: the server's
``host:port``; PV Access does not tell a client which server it reached: ``pva``), channel =
the PV, time = the IOC's timestamp (event time, to the nanosecond), value; its alarm
severity and status go to the ``alarm_severity`` and ``alarm_status`` columns. An array PV
(a waveform, an NTNDArray) gives a payload, offloaded by reference above ``--inline-limit``;
an enum PV gives its index as the value (its labels are channel metadata); a string PV is
refused, with its reason in the session summary. The monitor callbacks write updates into
preallocated numpy columns (``Updates``, bounded: a full buffer holds the client library's
thread, so a slow store slows the IOC's sends instead of growing memory), and ``fetch``
turns what they hold into one Arrow IPC message, one Arrow array per column.

CA and PVA have no positions and keep nothing for a client that is away: updates posted
while no session runs, or while a PV is disconnected, are gone. The client records every
disconnect and reconnect as a gap; the reading a monitor sends again on reconnect has the
IOC timestamp already captured, and the capture's identity dedup (source, channel, time)
drops it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.messages import Message
from obsflow.connectors.formats.schema import ALARM_FIELDS, TIME_TYPE
from obsflow.connectors.ids import ID_PATTERN
from obsflow.connectors.payloads.format import DTYPES

PV_NAME = re.compile(r"^[\x21-\x7e]{1,256}$")  # printable, no blank: what an EPICS name holds
_ID = re.compile(ID_PATTERN)
SEVERITIES = ("NO_ALARM", "MINOR", "MAJOR", "INVALID")
BUFFER = 200_000  # updates held at most between two fetches (unless the session asks more)


@dataclass(frozen=True)
class PV:
    """A PV to monitor: its name in the control system and the channel id of its readings."""

    name: str
    channel: str


def parse_pvs(specs: Sequence[str], *, scheme: str) -> tuple[PV, ...]:
    """PVs from ``NAME`` or ``NAME CHANNEL`` entries (URL names, ``--pvs`` lines), checked:
    a channel must be a channel id, a glob is refused (neither protocol can list names)."""
    out: dict[str, PV] = {}
    for spec in specs:
        parts = spec.split()
        if not parts:
            continue
        if len(parts) > 2:
            raise ConfigError(f"PV entry {spec[:80]!r}: one PV name, then optionally its channel")
        name, channel = parts[0], parts[-1]
        if any(c in name for c in "*?["):
            raise ConfigError(
                f"{scheme}:// PV {name[:80]!r} is a glob: neither Channel Access nor PV Access "
                "lets a client list an IOC's PV names — list them (--pvs FILE)"
            )
        if not PV_NAME.fullmatch(name):
            raise ConfigError(
                f"{scheme}:// PV {name[:80]!r} is no EPICS name (printable, no blanks)"
            )
        if not _ID.fullmatch(channel):
            why = "" if len(parts) == 2 else f"; give it one in --pvs FILE: '{name} CHANNEL'"
            raise ConfigError(
                f"channel {channel[:80]!r} of PV {name[:80]!r} is no channel id — use "
                f"[A-Za-z0-9._:-]{{1,128}}{why}"
            )
        if out.get(name, PV(name, channel)).channel != channel:
            raise ConfigError(f"PV {name!r} is given two channels")
        out[name] = PV(name, channel)
    channels = [p.channel for p in out.values()]
    if len(set(channels)) != len(channels):
        twice = sorted({c for c in channels if channels.count(c) > 1})
        raise ConfigError(f"two PVs would be channel {twice[0]!r}: give them other channels")
    return tuple(out.values())


def read_pv_file(path: str) -> list[str]:
    """The entries of a ``--pvs`` file: one ``PV [CHANNEL]`` a line; blank lines and
    ``#`` comments are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--pvs {path}: {exc.__class__.__name__}: cannot read it") from None
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#")[0]]


class Updates:
    """Monitor updates as preallocated columns, bounded at ``capacity``: ``add`` is called by
    the client library's threads, ``take`` by the session."""

    def __init__(self, pvs: Sequence[PV], capacity: int) -> None:
        self.pvs = list(pvs)
        self.capacity = capacity
        self.n = 0
        self._pv = np.empty(capacity, np.int32)
        self._source = np.empty(capacity, np.int32)
        self._time = np.empty(capacity, np.int64)
        self._value = np.empty(capacity, np.float64)
        self._severity = np.empty(capacity, np.int8)
        self._status = np.empty(capacity, np.int32)
        self._arrays: dict[int, np.ndarray] = {}  # row -> its array (a few per batch)
        self.sources: list[str] = []  # source codes -> ids
        self.statuses: list[str] = []  # status codes -> text
        self._codes: dict[str, int] = {}
        self.last_time = np.zeros(len(self.pvs), np.int64)  # per PV: its last IOC time
        self.closing = False
        self.cond = threading.Condition()

    def source_code(self, source: str) -> int:
        with self.cond:
            if source not in self.sources:
                self.sources.append(source)
            return self.sources.index(source)

    def status_code(self, text: str) -> int:
        code = self._codes.get(text)
        if code is None:
            with self.cond:
                code = self._codes.setdefault(text, len(self.statuses))
                if code == len(self.statuses):
                    self.statuses.append(text)
        return code

    def add(
        self,
        pv: int,
        source: int,
        time_ns: int,
        value: float,
        severity: int,
        status: int,
        array: np.ndarray | None = None,
    ) -> None:
        """One update (``array``: an array PV's data, native byte order)."""
        with self.cond:
            while self.n >= self.capacity and not self.closing:
                self.cond.wait(0.5)  # full: hold the library's thread (back-pressure)
            if self.closing:
                return
            i = self.n
            self._pv[i], self._source[i], self._time[i] = pv, source, time_ns
            self._value[i], self._severity[i], self._status[i] = value, severity, status
            if array is not None:
                self._arrays[i] = array
            self.last_time[pv] = time_ns
            self.n = i + 1
            self.cond.notify_all()

    def take(self, most: int, timeout: float) -> pa.Table | None:
        """Up to ``most`` updates that came within ``timeout`` seconds, as a raw table
        (``source``, ``channel``, ``time``, ``value``, the alarm columns, and ``payload``,
        ``payload_dtype``, ``payload_shape`` when an array came), or None."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.n < most and not self.closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            k = min(self.n, most)
            if not k:
                return None
            cols = [c[:k].copy() for c in self._columns()]
            arrays = {i: a for i, a in self._arrays.items() if i < k}
            for c in self._columns():  # what is left moves to the front
                c[: self.n - k] = c[k : self.n]
            self._arrays = {i - k: a for i, a in self._arrays.items() if i >= k}
            self.n -= k
            sources, statuses = list(self.sources), list(self.statuses)
            self.cond.notify_all()  # room again
        return self._table(cols, arrays, sources, statuses)

    def _columns(self) -> tuple[np.ndarray, ...]:
        return self._pv, self._source, self._time, self._value, self._severity, self._status

    def _table(
        self,
        cols: list[np.ndarray],
        arrays: dict[int, np.ndarray],
        sources: list[str],
        statuses: list[str],
    ) -> pa.Table:
        pv, source, times, value, severity, status = cols
        channels = pa.array([p.channel for p in self.pvs], pa.string())
        columns: dict[str, pa.Array] = {
            "source": pa.array(sources, pa.string()).take(pa.array(source)),
            "channel": channels.take(pa.array(pv)),
            "time": pa.array(times, pa.int64()).cast(TIME_TYPE),
            "value": pa.array(value, pa.float64()),
            ALARM_FIELDS[0]: pa.array(SEVERITIES, pa.string()).take(pa.array(severity)),
            ALARM_FIELDS[1]: pa.array(statuses, pa.string()).take(pa.array(status)),
        }
        if arrays:
            n = len(times)
            rows = [arrays.get(i) for i in range(n)] if n <= 4096 else None
            if rows is None:  # (many rows: only the array rows are touched)
                rows = [None] * n
                for i, a in arrays.items():
                    rows[i] = a
            columns["payload"] = pa.array(
                [None if a is None else a.tobytes() for a in rows],
                pa.binary(),
            )
            columns["payload_dtype"] = pa.array(
                [None if a is None else a.dtype.name for a in rows], pa.string()
            )
            columns["payload_shape"] = pa.array(
                [None if a is None else list(a.shape) for a in rows], pa.list_(pa.int64())
            )
        return pa.table(columns)

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()


def native(array: Any) -> np.ndarray:
    """An update's array in native byte order (CA sends big-endian), of a payload dtype."""
    a = np.asarray(array)
    if a.dtype.byteorder not in ("=", "|"):
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype.name not in DTYPES:
        raise ValueError(f"an array of {a.dtype} is no payload")
    return a


class EpicsSession:
    """What both clients share: the PVs, the update buffer, gaps and channel metadata.

    Subclasses call ``connected``/``disconnected`` from their library's callbacks and
    ``updates.add`` for each monitor update."""

    scheme = "epics"

    def __init__(self, pvs: Sequence[PV], source: str | None, capacity: int) -> None:
        if not pvs:
            raise ConfigError(f"{self.scheme}:// needs PV names (in the URL or --pvs FILE)")
        self.pvs = tuple(pvs)
        self.index = {p.name: i for i, p in enumerate(self.pvs)}
        self.source = source
        self.updates = Updates(self.pvs, max(capacity, 1))
        self._lock = threading.Lock()
        self._down: dict[int, dict[str, Any]] = {}  # PV -> its open gap
        self._ever: set[int] = set()  # PVs connected at least once
        self._gaps: list[dict[str, Any]] = []
        self._meta: dict[str, dict[str, Any]] = {}
        self.refused: dict[str, str] = {}  # PV -> why its updates are not captured

    def connected(self, pv: int) -> None:
        with self._lock:
            self._ever.add(pv)

    def resumed(self, pv: int) -> None:
        """A monitor update came: a disconnect's gap ends here, not at the reconnect (what
        the IOC posts between the reconnect and the monitor's new subscription is lost; the
        PV's current value, re-sent on subscribing, is its first update)."""
        if pv in self._down:  # (cheap test first: this runs for every update)
            with self._lock:
                gap = self._down.pop(pv, None)
                if gap is not None:
                    gap["until"] = time.time_ns()
                    self._gaps.append(gap)

    def disconnected(self, pv: int) -> None:
        with self._lock:
            if pv in self._ever and pv not in self._down and self.pvs[pv].name not in self.refused:
                last = int(self.updates.last_time[pv])
                self._down[pv] = {
                    "pv": self.pvs[pv].name,
                    "channel": self.pvs[pv].channel,
                    "since": time.time_ns(),
                    "last_update": last or None,
                    "until": None,
                }

    def refuse(self, pv: int, why: str) -> None:
        with self._lock:
            self.refused.setdefault(self.pvs[pv].name, why)

    def describe_channel(self, pv: int, meta: dict[str, Any]) -> None:
        with self._lock:
            self._meta[self.pvs[pv].channel] = {"pv": self.pvs[pv].name, **meta}

    # -- what the session asks (``flows.pipeline.live``) ---------------------------------------

    def gaps(self) -> list[dict[str, Any]]:
        """The gaps closed since the last call (times in ns since the epoch; ``last_update``:
        the IOC time of the PV's last update before it)."""
        with self._lock:
            out, self._gaps = self._gaps, []
        return out

    def open_gaps(self) -> list[dict[str, Any]]:
        """Gaps not closed yet (a PV still disconnected)."""
        with self._lock:
            return [dict(g) for g in self._down.values()]

    def channels(self) -> dict[str, dict[str, Any]]:
        """Per channel: the PV, its kind, units, display limits, enum labels."""
        with self._lock:
            return {k: dict(v) for k, v in self._meta.items()}

    def refusals(self) -> dict[str, str]:
        with self._lock:
            return dict(self.refused)

    def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        """What came within ``timeout``: one Arrow IPC message of up to ``max_messages``
        updates (none when nothing came)."""
        self.poll()
        table = self.updates.take(max_messages, timeout)
        if table is None:
            return []
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return [Message(sink.getvalue().to_pybytes(), self.scheme, time.time_ns())]

    def poll(self) -> None:
        """Work the session's thread does before each fetch (subclasses: subscribe, read
        metadata), kept out of the library's callback threads."""

    def ack(self, messages: list[Message]) -> None:
        """Nothing to acknowledge: an IOC keeps no queue for a client."""

    def drained(self) -> bool:
        with self.updates.cond:
            return self.updates.n == 0
