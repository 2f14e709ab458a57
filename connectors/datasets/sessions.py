"""Live sessions hold their capture: one at a time, fenced in the capture's own Delta log.

A live session *claims* its capture before it connects to its broker. It writes a holder
document (who, where, since when; ``_obsflow/captures/<c>/sessions/<token>.json``), then
commits to the capture table a Delta ``txn`` with application id ``SESSION_APP`` and a fresh
random *token* as its number — conditional on the token it read, so of two sessions claiming
at once one wins. Every commit of the session then carries that token as a fence
(``tables.TableChange.fence``): it lands only while the table still holds the token, checked
on the very version it commits on. A session paused past its lease and taken over finds its
token gone at its next commit and commits nothing (``commits.SessionLostError``); what it had
fetched comes again to the new holder, in the broker's order.

The same commits record where the session stands on its broker: one ``txn`` per source
partition, ``POSITION_APP + key`` (``nats:<stream>:<subject>``, ``kafka:<topic>:<partition>``)
-> the next position to read. A session resumes from them (``Hold.position``).

Whether a second session is refused is a matter of liveness, read from the holder document:
renewed every third of the lease (``OBSFLOW_SESSION_LEASE_SECONDS``, 30 s), a holder is alive
while it was renewed within the lease — and, on this host, while its process runs (a killed
session is stale at once). Clocks only decide when a silent holder is given up; safety rests
on the fence alone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from obsflow.connectors.datasets.capture import CAPTURE_STORED, CaptureMeta
from obsflow.connectors.errors import ObsflowError
from obsflow.connectors.ids import check_name
from obsflow.connectors.storage import layout, table_writes, tables
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import FencedError, TableChange

SESSION_APP = "obsflow.session"
POSITION_APP = "obsflow.position:"
WAIT_EVERY = 0.5  # seconds between looks at a held capture (--wait)


def lease_seconds() -> float:
    """How long a silent holder keeps its capture (``OBSFLOW_SESSION_LEASE_SECONDS``)."""
    return float(os.environ.get("OBSFLOW_SESSION_LEASE_SECONDS", "30"))


class CaptureHeldError(ObsflowError):
    """Another live session holds the capture."""


def session_doc(capture: str, token: int) -> str:
    return f"{layout.capture_meta_dir(capture)}/sessions/{int(token):019d}.json"


@dataclass(frozen=True)
class Holder:
    """A live session holding its capture, as its document says."""

    session: str  # the session's id
    token: int  # its number for SESSION_APP in the capture table
    host: str
    pid: int
    since: str  # ISO 8601 UTC
    renewed: int  # ns since the epoch (wall clock) of its last renewal
    lease: float  # seconds
    broker: str = ""
    started: str = ""  # the process's start (/proc), so that a reused pid is not it

    def alive(self, now_ns: int) -> bool:
        if self.host == socket.gethostname() and _process_start(self.pid) != self.started:
            return False  # its process is gone: no need to wait out the lease
        return now_ns - self.renewed < self.lease * 1e9

    def describe(self, now_ns: int) -> str:
        age = max(0.0, (now_ns - self.renewed) / 1e9)
        return (
            f"live session {self.session} (pid {self.pid} on {self.host}, reading "
            f"{self.broker or '?'} since {self.since}; heard from {age:.0f} s ago)"
        )

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Holder:
        return cls(
            session=check_name(str(doc["session"]), kind="session id"),
            token=int(doc["token"]),
            host=str(doc["host"])[:255],
            pid=int(doc["pid"]),
            since=str(doc["since"])[:64],
            renewed=int(doc["renewed"]),
            lease=float(doc["lease"]),
            broker=str(doc.get("broker", ""))[:512],
            started=str(doc.get("started", ""))[:64],
        )


def _process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, from /proc); "" if it is gone or
    unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()  # (the name in parentheses may hold spaces)
    return fields[19] if len(fields) > 19 else ""


def holder_of(store: Store, capture: str) -> tuple[int, Holder | None]:
    """The capture's current token (0: never held) and its holder (None: released)."""
    snap = tables.snapshot(store, layout.capture_dir(capture))
    token = 0 if snap is None else snap.txn(SESSION_APP)
    if not token:
        return 0, None
    try:
        doc = store.read_json(session_doc(capture, token), max_bytes=1 << 16)
    except FileNotFoundError:
        return token, None
    return token, Holder.from_json(doc)


@dataclass
class Hold:
    """A capture held by this session: its fence, positions, renewal and release."""

    store: Store
    capture: str
    holder: Holder
    recorded: dict[str, int] = field(default_factory=dict)
    lost: threading.Event = field(default_factory=threading.Event)  # another took it over
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _start: tables.Snapshot | None = None

    @property
    def fence(self) -> tuple[str, int]:
        return SESSION_APP, self.holder.token

    def position(self, key: str) -> int:
        """The next position of source partition ``key`` the capture recorded (0: none), as
        the capture stood when the session began (only its own commits move it since)."""
        if key not in self.recorded:
            if self._start is None:
                self._start = tables.snapshot(self.store, layout.capture_dir(self.capture))
            snap = self._start
            self.recorded[key] = 0 if snap is None else snap.txn(POSITION_APP + key)
        return self.recorded[key]

    def renew(self, now_ns: int | None = None) -> None:
        renewed = time.time_ns() if now_ns is None else now_ns
        self.holder = Holder(**{**asdict(self.holder), "renewed": renewed})
        self.store.write_json(session_doc(self.capture, self.holder.token), asdict(self.holder))

    def keep(self) -> None:
        """Renew the holder document every third of the lease, in a thread, until released."""

        def loop() -> None:
            while not self._stop.wait(self.holder.lease / 3):
                with contextlib.suppress(Exception):  # (a store away: the fence keeps us safe)
                    if holder_of(self.store, self.capture)[0] != self.holder.token:
                        self.lost.set()  # (a session paused past its lease, continued)
                        return
                    self.renew()

        self._thread = threading.Thread(target=loop, name="obsflow-session", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and drop the holder document: the capture is free at once (the token
        stays in the log; the next session's claim is conditional on it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with contextlib.suppress(Exception):
            self.store.delete(session_doc(self.capture, self.holder.token))


def hold(
    store: Store,
    capture: str,
    meta: Callable[[], CaptureMeta],
    *,
    session: str,
    broker: str,
    wait: bool = False,
    on_wait: Callable[[str], None] = lambda _m: None,
    clock: Callable[[], int] = time.time_ns,
    sleep: Callable[[float], None] = time.sleep,
) -> Hold:
    """Claim ``capture`` for live session ``session`` (see the module docstring): refused
    with ``CaptureHeldError`` while another session holds it, or, with ``wait``, once it is
    free. ``meta`` gives the capture to create when there is none yet (the claim creates its
    table, empty, so that there is a log to be fenced in)."""
    waiting = False
    while True:
        token, holder = holder_of(store, capture)
        if holder is not None and holder.alive(clock()):
            held = f"capture {capture!r} is held by {holder.describe(clock())}"
            if not wait:
                raise CaptureHeldError(f"{held}: stop it first, or add --wait to start after it")
            if not waiting:
                on_wait(f"{held}: waiting for it to end")
                waiting = True
            sleep(WAIT_EVERY)
            continue
        mine = Holder(
            session=session,
            token=secrets.randbelow(1 << 62) + 1,
            host=socket.gethostname(),
            pid=os.getpid(),
            since=datetime.now(UTC).isoformat(timespec="seconds"),
            renewed=clock(),
            lease=lease_seconds(),
            broker=broker,
            started=_process_start(os.getpid()),
        )
        # The document first: whoever reads the token can always find who holds it.
        claimed = Hold(store, capture, mine)
        claimed.renew(mine.renewed)
        store.create_json(layout.LAYOUT_DOC, {"layout": layout.LAYOUT})
        change = TableChange(
            layout.capture_dir(capture),
            CAPTURE_STORED,
            description=meta().description(),
            info={"session": session, "holds": mine.token},
            txns={SESSION_APP: mine.token},
            fence=(SESSION_APP, token),
        )
        try:
            table_writes.commit(store, change, app=capture, n=None)
        except FencedError:  # another session claimed it first: look again
            claimed.release()
            continue
        claimed.keep()
        return claimed
