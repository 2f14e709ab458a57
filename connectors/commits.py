"""Commits: how a run's outputs become part of the store, in one order, all or nothing.

A run writes everything it produces under ``_obsflow/staging/<run>/``, at the path each object
will have. Its commit is one create-only document, ``_obsflow/captures/<capture>/commits/<n>``,
numbered one past the capture's last commit when the run began (its *base*): if another run
committed in between, the number is taken and this run is refused — two writers can never
interleave. The document lists the objects the commit brings in; applying it moves them into
place and then drops the staging folder. Applying is idempotent, so a crash during it is
finished by the next command that writes to the store (``finish_pending``). Until then, and
for any run that never commits, nothing of the run is visible in the data folders.

The commit numbers are the capture's order: replay reads the capture objects commit by commit
(``capture_objects``), never in the order of object names, and repeats what a commit declared
(the end of a run, windows closed by ``obsflow views close``).

A *lease* (``lease.json``) names the run writing a capture now, so that a second writer is
refused when it starts rather than when it commits; a lease whose run stopped renewing it (or
whose process is gone, on this host) is taken over.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from obsflow.connectors import layout
from obsflow.connectors.errors import StoreError
from obsflow.connectors.ids import check_name
from obsflow.connectors.store import Store

LEASE_SECONDS = 120.0
"""A lease not renewed for this long belongs to a run that is gone."""
MARKER = "_run.json"
"""Written first into a staging folder: which capture the run writes."""


class ConcurrentWriterError(StoreError):
    """Another run wrote (or is writing) the same capture."""


@dataclass(frozen=True)
class Commit:
    """One entry of a capture's commit log."""

    n: int
    run: str
    kind: str  # ingest | replay | close | migrate | compact | archive
    objects: tuple[str, ...] = ()  # store-relative paths this commit moved into place
    end_of_run: bool = True  # windows whose watermark passed become final here
    close: tuple[dict[str, Any], ...] = ()  # views close events: view, sources, until (ns)
    replaced_views: tuple[str, ...] = ()  # views rebuilt whole: their other rows are dropped
    rows: int = 0  # readings this commit added to the capture
    created: str = ""
    # compact: each new object and the objects it replaces, one row group each, in order
    replaces: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # archive: each capture object moved to another store, and that store's URL
    archived: dict[str, str] = field(default_factory=dict)

    def parts(self, capture: str) -> dict[int, list[str]]:
        """The capture objects of this commit per partition, in the order they were written
        (for a compaction: the objects it wrote, which hold readings of earlier commits)."""
        out: dict[int, list[str]] = {}
        prefix = layout.capture_dir(capture) + "/"
        for rel in self.objects:
            if rel.startswith(prefix):
                folder, _, name = rel[len(prefix) :].partition("/")
                m = layout.PART_DIR_RE.match(folder)
                if m and layout.CAPTURE_OBJECT_RE.match(name):
                    out.setdefault(int(m["part"]), []).append(rel)
        for rels in out.values():
            rels.sort(key=lambda r: r.rsplit("-", 1)[-1])  # chunk number order
        return out

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["objects"], doc["close"] = list(self.objects), list(self.close)
        doc["replaced_views"] = list(self.replaced_views)
        doc["replaces"] = {k: list(v) for k, v in self.replaces.items()}
        doc["archived"] = dict(self.archived)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Commit:
        return cls(
            n=int(doc["n"]),
            run=check_name(doc["run"], kind="run id"),
            kind=str(doc["kind"]),
            objects=tuple(doc.get("objects", ())),
            end_of_run=bool(doc.get("end_of_run", True)),
            close=tuple(doc.get("close", ())),
            replaced_views=tuple(doc.get("replaced_views", ())),
            rows=int(doc.get("rows", 0)),
            created=str(doc.get("created", "")),
            replaces={str(k): tuple(v) for k, v in doc.get("replaces", {}).items()},
            archived={str(k): str(v) for k, v in doc.get("archived", {}).items()},
        )


def head(store: Store, capture: str) -> int:
    """The number of a capture's last commit (0 when it has none)."""
    numbers = [layout.commit_number(n) for n in store.listdir(layout.commits_dir(capture))]
    return max((n for n in numbers if n is not None), default=0)


def read_log(store: Store, capture: str, *, since: int = 0) -> list[Commit]:
    """A capture's commits after number ``since``, in order."""
    folder = layout.commits_dir(capture)
    numbers = sorted(
        n for n in (layout.commit_number(x) for x in store.listdir(folder)) if n and n > since
    )
    return [Commit.from_json(store.read_json(layout.commit_doc(capture, n))) for n in numbers]


def capture_objects(
    store: Store, capture: str, log: list[Commit] | None = None
) -> dict[int, list[str]]:
    """Every capture object in the capture's store per partition, in capture order (commit by
    commit); objects a compaction replaced give way to the one that holds them now, and those
    moved to an archive (``archived_objects``) are left out. ``log``: the capture's commit log,
    if already read."""
    out: dict[int, list[str]] = {}
    log = read_log(store, capture) if log is None else log
    gone = {old for entry in log for olds in entry.replaces.values() for old in olds}
    gone.update(archived_objects(log))
    for entry in log:
        for part, rels in entry.parts(capture).items():
            out.setdefault(part, []).extend(r for r in rels if r not in gone)
    return out


def archived_objects(log: Iterable[Commit]) -> dict[str, str]:
    """Capture objects moved to an archive store: ``object -> that store's URL``."""
    return {rel: url for entry in log for rel, url in entry.archived.items()}


def begin(store: Store, run: str, capture: str) -> None:
    """Mark a staging folder as a run's (so ``finish_pending`` knows whose it is)."""
    store.write_json(
        layout.staged(run, MARKER), {"run": run, "capture": capture, "started": _now()}
    )


def staged_objects(store: Store, run: str) -> list[str]:
    """Store-relative final paths of what ``run`` has staged, sorted."""
    prefix = layout.staging_dir(run) + "/"
    return [
        rel[len(prefix) :]
        for rel in store.walk_files(layout.staging_dir(run))
        if rel[len(prefix) :] != MARKER and not rel.rsplit("/", 1)[-1].startswith(".")
    ]


def commit(
    store: Store,
    capture: str,
    run: str,
    kind: str,
    *,
    base: int | None,
    end_of_run: bool = True,
    close: Iterable[dict[str, Any]] = (),
    replaced_views: Iterable[str] = (),
    rows: int = 0,
    replaces: dict[str, list[str]] | None = None,
    archived: dict[str, str] | None = None,
) -> Commit:
    """Commit what ``run`` staged as the capture's next entry, then apply it.

    ``base`` is the capture's head when the run began: the entry takes number ``base + 1``
    or the run is refused (``ConcurrentWriterError``). ``None`` takes the next free number
    (no protection: for runs started without the job layer).
    """
    n = (head(store, capture) if base is None else base) + 1
    entry = Commit(
        n=n,
        run=run,
        kind=kind,
        objects=tuple(staged_objects(store, run)),
        end_of_run=end_of_run,
        close=tuple(close),
        replaced_views=tuple(replaced_views),
        rows=rows,
        created=_now(),
        replaces={k: tuple(v) for k, v in (replaces or {}).items()},
        archived=dict(archived or {}),
    )
    store.create_json(layout.LAYOUT_DOC, {"layout": layout.LAYOUT})
    if not store.create_json(layout.commit_doc(capture, n), entry.to_json()):
        other = Commit.from_json(store.read_json(layout.commit_doc(capture, n)))
        if other.run != run:  # our own entry means an earlier attempt committed already
            raise ConcurrentWriterError(
                f"capture {capture!r} changed while run {run} was running: run {other.run} "
                f"committed #{n} ({other.kind}); nothing of run {run} was committed — run the "
                "command again"
            )
        entry = other
    apply(store, capture, entry)
    return entry


def apply(store: Store, capture: str, entry: Commit) -> None:
    """Move a commit's staged objects into place (idempotent), then drop its staging folder."""
    stage = layout.staging_dir(entry.run)
    for rel in entry.objects:
        src = layout.staged(entry.run, rel)
        try:
            store.move(src, rel)
        except FileNotFoundError:
            if not store.exists(rel):
                raise StoreError(
                    f"commit #{entry.n} of capture {capture!r} lists {rel}, which is neither "
                    f"staged nor in place: the store was changed by hand"
                ) from None
    for olds in entry.replaces.values():  # only once every new object is in place
        for old in olds:
            store.delete(old)
    for rel in entry.archived:  # their copies were checked before the commit was written
        store.delete(rel)
    if entry.replaced_views:
        kept = set(entry.objects)
        for view in entry.replaced_views:
            for folder in (layout.view_dir(view), layout.late_dir(view)):
                for rel in store.walk_files(folder):
                    if rel not in kept:
                        store.delete(rel)
    store.delete(stage, recursive=True)


def applied(store: Store, entry: Commit) -> bool:
    """Whether a commit's objects are in place: applying it drops its staging folder (and its
    marker) only after moving them. A reader of new commits waits for this."""
    return not store.exists(layout.staged(entry.run, MARKER))


def finish_pending(store: Store, *, capture: str, keep: str | None = None) -> list[str]:
    """Finish commits a crash interrupted (of any capture), and drop the staging of
    ``capture``'s runs that never committed (except ``keep``, a run being resumed).

    Returns messages describing what was done. Call it holding the capture's lease.
    """
    done: list[str] = []
    for run in store.listdir(f"{layout.META}/staging"):
        marker = layout.staged(run, MARKER)
        if run == keep or not store.exists(marker):
            continue
        owner = check_name(store.read_json(marker).get("capture"), kind="capture name")
        entry = _entry_of(store, owner, run)
        if entry is not None:
            apply(store, owner, entry)
            done.append(f"finished applying commit #{entry.n} of capture {owner!r} (run {run})")
        elif owner == capture:
            store.delete(layout.staging_dir(run), recursive=True)
            done.append(f"discarded the outputs of run {run}, which never committed")
    return done


def _entry_of(store: Store, capture: str, run: str) -> Commit | None:
    """The commit of ``run`` among the capture's last few, if it committed."""
    top = head(store, capture)
    for n in range(top, max(0, top - 64), -1):
        entry = Commit.from_json(store.read_json(layout.commit_doc(capture, n)))
        if entry.run == run:
            return entry
    return None


def committed(store: Store, capture: str, run: str) -> Commit | None:
    """The commit of ``run``, applying it first if a crash interrupted that."""
    entry = _entry_of(store, capture, run)
    if entry is not None and store.exists(layout.staging_dir(run)):
        apply(store, capture, entry)
    return entry


# -- leases ---------------------------------------------------------------------------------


@dataclass
class Lease:
    """The right to write a capture, held by one run while it runs (see module docstring)."""

    store: Store
    capture: str
    run: str
    taken_over: str | None = None  # the run whose stale lease this one replaced

    @classmethod
    def acquire(cls, store: Store, capture: str, run: str) -> Lease:
        rel = layout.lease_doc(capture)
        doc = _lease_doc(run)
        if store.create_json(rel, doc):
            return cls(store, capture, run)
        try:
            other = store.read_json(rel)
        except FileNotFoundError:  # released in between: try once more
            if store.create_json(rel, doc):
                return cls(store, capture, run)
            other = store.read_json(rel)
        if other.get("run") != run and not _stale(other):
            age = time.time() - float(other.get("renewed", 0))
            raise ConcurrentWriterError(
                f"capture {capture!r} is being written by run {other.get('run')} (pid "
                f"{other.get('pid')} on {other.get('host')}, last seen {age:.0f} s ago); "
                "wait for it to finish — one writer per capture"
            )
        store.write_json(rel, doc)
        taken = None if other.get("run") == run else str(other.get("run"))
        return cls(store, capture, run, taken)

    @classmethod
    def acquire_waiting(cls, store: Store, capture: str, run: str, wait: float) -> Lease:
        """``acquire``, waiting up to ``wait`` seconds for the writer holding the capture (a
        live session's cycle) to let go."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return cls.acquire(store, capture, run)
            except ConcurrentWriterError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def renew(self) -> None:
        self.store.write_json(layout.lease_doc(self.capture), _lease_doc(self.run))

    def release(self) -> None:
        rel = layout.lease_doc(self.capture)
        try:
            if self.store.read_json(rel).get("run") == self.run:
                self.store.delete(rel)
        except FileNotFoundError:
            pass


def _lease_doc(run: str) -> dict[str, Any]:
    return {"run": run, "host": socket.gethostname(), "pid": os.getpid(), "renewed": time.time()}


def _stale(doc: dict[str, Any]) -> bool:
    if time.time() - float(doc.get("renewed", 0)) > LEASE_SECONDS:
        return True
    if doc.get("host") == socket.gethostname():
        try:
            os.kill(int(doc.get("pid", 0)), 0)
        except ProcessLookupError:
            return True  # its process is gone
        except (PermissionError, ValueError, OverflowError):
            return False
    return False


def _now() -> str:
    return datetime.now(UTC).isoformat()
