"""Commits: how a run's outputs become part of the store, in one order, all or nothing.

A run writes its data files into the tables' folders, where no reader sees them, and its
bookkeeping (seq numbers, dedup memory, open windows) under ``state/<run>/`` folders of its
own. Its commit then:

1. writes the run's *intent* — every table change it makes (``tables.TableChange``), the
   inputs it captured, its summary — to ``_obsflow/captures/<c>/intents/<run>.json``;
2. commits the capture table as the capture's next number ``n``: a Delta ``txn`` with the
   capture as application id and ``n`` as version, accepted only on top of number ``n - 1``.
   This is the commit point: one run wins each number, and a run whose base is no longer the
   capture's last commit (a paused writer, a racing one) commits nothing
   (``ConcurrentWriterError``). Its commitInfo holds what replay and the next run need: the
   kind of run, whether it ends the run's windows, views closed by hand, and where each
   partition's state is;
3. *completes*: commits every other table (views, late readings, dead letters, documents)
   with the same ``txn`` — a table that holds ``n`` already is left alone — records the inputs
   captured and the summary, drops the bookkeeping the commit superseded, then the intent.

A crash after step 2 is completed by the next command that writes the capture
(``finish_pending``), never twice. A crash before it leaves files no version names (``vacuum``
deletes them once older than the time-travel retention) and an intent that is dropped once
another run has taken its number. No command deletes another run's data files.

The commit numbers are the capture's order: replay reads the capture commit by commit (each
reading carries the number that captured it) and repeats what each commit declared.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.ids import check_name
from obsflow.connectors.storage import layout, table_writes, tables
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import TableChange

AsOf = int | datetime | None
"""A store as it was: a capture's commit number, or a time (None: as it is)."""


def parse_as_of(value: object) -> AsOf:
    """``--as-of``: a capture's commit number (an integer) or a time (ISO 8601; naive: UTC)."""
    if value is None or (isinstance(value, int | datetime) and not isinstance(value, bool)):
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    from obsflow.connectors.formats.parsing import to_utc  # (pandas: not at start-up)

    stamp = to_utc(value, "--as-of")
    return datetime.fromtimestamp(stamp.value // 10**9, UTC).replace(
        microsecond=(stamp.value // 1000) % 10**6
    )


StateMap = dict[int, list[str]]
"""Partition -> the runs whose ``state/<run>/`` folders hold its bookkeeping (the first one's
holds the partition's current state document; the others, files it refers to)."""


class ConcurrentWriterError(StoreError):
    """Another run committed the capture while this one was running."""


class SessionLostError(StoreError):
    """A live session's capture was taken over by another session (its fence no longer
    holds): the run committed nothing, and its session must stop."""


@dataclass(frozen=True)
class Commit:
    """One numbered commit of a capture (from the capture table's commitInfo)."""

    n: int
    run: str
    kind: str  # ingest | replay | close | archive | migrate
    end_of_run: bool = True  # windows whose watermark passed become final here
    close: tuple[dict[str, Any], ...] = ()  # views close events: view, sources, until (ns)
    replaced_views: tuple[str, ...] = ()  # views rebuilt whole
    rows: int = 0  # readings this commit added to the capture
    created: str = ""
    state: StateMap = field(default_factory=dict)
    archived: dict[str, str] = field(default_factory=dict)  # file -> archive store URL
    version: int = 0  # the capture table's Delta version
    timestamp: int = 0  # ms since the epoch

    def info(self) -> dict[str, Any]:
        """What the capture table's commitInfo holds for this commit."""
        return {
            "run": self.run,
            "kind": self.kind,
            "end_of_run": self.end_of_run,
            "close": list(self.close),
            "replaced_views": list(self.replaced_views),
            "rows": self.rows,
            "created": self.created,
            "state": {str(k): list(v) for k, v in self.state.items()},
            "archived": dict(self.archived),
        }

    @classmethod
    def of(cls, entry: dict[str, Any]) -> Commit | None:
        """The commit a history entry records (None: not a numbered commit of obsflow's)."""
        doc = entry.get("obsflow")
        if not isinstance(doc, dict) or "commit" not in doc or "run" not in doc:
            return None
        return cls(
            n=int(doc["commit"]),
            run=check_name(doc["run"], kind="run id"),
            kind=str(doc.get("kind", "")),
            end_of_run=bool(doc.get("end_of_run", True)),
            close=tuple(doc.get("close", ())),
            replaced_views=tuple(doc.get("replaced_views", ())),
            rows=int(doc.get("rows", 0)),
            created=str(doc.get("created", "")),
            state=state_map(doc.get("state")),
            archived={str(k): str(v) for k, v in (doc.get("archived") or {}).items()},
            version=int(entry.get("version", 0)),
            timestamp=int(entry.get("timestamp", 0)),
        )


def state_map(doc: Any) -> StateMap:
    return {int(k): [check_name(r, kind="run id") for r in v] for k, v in (doc or {}).items()}


def state_runs(state: StateMap) -> set[str]:
    return {r for runs in state.values() for r in runs}


# -- reading the log --------------------------------------------------------------------------


def head(store: Store, capture: str) -> int:
    """The number of a capture's last commit (0 when it has none)."""
    snap = tables.snapshot(store, layout.capture_dir(capture))
    return 0 if snap is None else snap.txn(capture)


def read_log(
    store: Store, capture: str, *, since: int = 0, upto: int | None = None
) -> list[Commit]:
    """A capture's commits numbered ``since < n <= upto``, in order."""
    out: dict[int, Commit] = {}
    for entry in tables.history(store, layout.capture_dir(capture)):
        c = Commit.of(entry)
        if c is not None and c.n > since and (upto is None or c.n <= upto):
            out.setdefault(c.n, c)  # (newest first: a number is committed once)
    return [out[n] for n in sorted(out)]


def last_commit(
    store: Store, table: str, app: str, n: int | None = None, *, version: int | None = None
) -> Commit | None:
    """Commit ``n`` (default: the latest) of ``app`` as ``table`` recorded it, looking back
    through the table's newest entries first (from Delta ``version``; None: the latest)."""
    for entry in tables.entries(store, table, version=version):
        doc = entry.get("obsflow") or {}
        if doc.get("app") == app and "commit" in doc and (n is None or doc["commit"] == n):
            return Commit.of(entry)
        if n is not None and doc.get("app") == app and int(doc.get("commit", n)) < n:
            return None
    return None


def capture_base(store: Store, capture: str, base: int | None) -> tuple[int, StateMap]:
    """A run's base — the capture's commit it starts from (``base``; None: the last one,
    every commit up to it completed first: ``finish_pending``) — and where each partition's
    state was at that commit."""
    if base is None:
        base, _ = finish_pending(store, capture)
    snap = tables.snapshot(store, layout.capture_dir(capture))
    if base == 0 or snap is None:
        return base, {}
    found = last_commit(store, snap.table, capture, base, version=snap.version)
    if found is None:
        raise StoreError(f"capture {capture!r} has no commit #{base}")
    return base, dict(found.state)


def last_info(store: Store, table: str, app: str, *, version: int | None = None) -> dict[str, Any]:
    """The obsflow commitInfo of ``table``'s latest numbered commit of ``app`` (at or before
    Delta ``version``; {}: none)."""
    for entry in tables.entries(store, table, version=version):
        doc = entry.get("obsflow") or {}
        if doc.get("app") == app and "commit" in doc:
            return dict(doc)
    return {}


def commit_at(store: Store, capture: str, as_of: AsOf) -> int | None:
    """The capture's commit number ``as_of`` means (None: the last one): a number as it is
    (checked), a time the last commit made by then."""
    if as_of is None:
        return None
    log = read_log(store, capture)
    if isinstance(as_of, int):
        if not any(c.n == as_of for c in log):
            known = f"1..{log[-1].n}" if log else "none yet"
            raise ConfigError(f"capture {capture!r} has no commit #{as_of} (its commits: {known})")
        return as_of
    ms = as_of.timestamp() * 1000
    before = [c.n for c in log if c.timestamp <= ms]
    if not before:
        raise ConfigError(f"capture {capture!r} had no commit yet at {as_of.isoformat()}")
    return before[-1]


def snapshot_as_of(
    store: Store, table: str, app: str | None, as_of: AsOf
) -> tables.Snapshot | None:
    """The version of ``table`` a read ``as_of`` sees (None: the table did not exist then):
    the latest, the one current at a time, or the one after commit ``as_of`` of ``app``."""
    if as_of is None or isinstance(as_of, datetime):
        return tables.snapshot(store, table, as_of=as_of)
    if app is None:
        raise ConfigError(f"--as-of {as_of}: a commit number is a capture's; give a time")
    v = table_version(store, table, app, as_of)
    return None if v is None else tables.snapshot(store, table, as_of=v)


def table_version(store: Store, table: str, app: str, n: int) -> int | None:
    """The Delta version of ``table`` as it was at ``app``'s commit ``n``: the last version
    before ``app``'s first commit numbered after ``n`` (None: the table did not exist yet)."""
    entries = sorted(tables.history(store, table), key=lambda e: int(e.get("version", 0)))
    found = None
    for entry in entries:
        doc = entry.get("obsflow") or {}
        if doc.get("app") == app and int(doc.get("commit", 0)) > n:
            break
        found = int(entry.get("version", 0))
    return found


# -- committing -------------------------------------------------------------------------------


@dataclass
class Intent:
    """A run's commit: what it changes, in every table, and what it records besides."""

    capture: str
    commit: Commit
    capture_change: TableChange
    changes: list[TableChange] = field(default_factory=list)
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # sha256 -> record
    summary: dict[str, Any] | None = None
    retired: list[str] = field(default_factory=list)  # bookkeeping folders it supersedes

    @property
    def run(self) -> str:
        return self.commit.run

    @property
    def n(self) -> int:
        return self.commit.n

    def to_json(self) -> dict[str, Any]:
        return {
            "capture": self.capture,
            "n": self.n,
            "commit": self.commit.info(),
            "capture_change": self.capture_change.to_json(),
            "changes": [c.to_json() for c in self.changes],
            "inputs": self.inputs,
            "summary": self.summary,
            "retired": self.retired,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Intent:
        commit = Commit.of({"obsflow": {**doc["commit"], "commit": doc["n"]}})
        assert commit is not None
        return cls(
            capture=check_name(doc["capture"], kind="capture name"),
            commit=commit,
            capture_change=TableChange.from_json(doc["capture_change"]),
            changes=[TableChange.from_json(c) for c in doc.get("changes", ())],
            inputs=dict(doc.get("inputs", {})),
            summary=doc.get("summary"),
            retired=[str(r) for r in doc.get("retired", ())],
        )


def commit_run(store: Store, intent: Intent) -> Commit:
    """Commit a run (see the module docstring); ``ConcurrentWriterError`` if another run
    committed the capture since this one's base."""
    store.create_json(layout.LAYOUT_DOC, {"layout": layout.LAYOUT})
    rel = layout.intent_doc(intent.capture, intent.run)
    store.write_json(rel, intent.to_json())
    change = intent.capture_change
    change.info = {**intent.commit.info(), **change.info}
    try:
        table_writes.commit(store, change, app=intent.capture, n=intent.n, after=intent.n - 1)
    except tables.FencedError:
        store.delete(rel)
        raise SessionLostError(
            f"capture {intent.capture!r} was taken over by another live session while run "
            f"{intent.run} was running; nothing of run {intent.run} was committed"
        ) from None
    except tables.ConflictError:
        won = None
    else:
        won = last_commit(store, layout.capture_dir(intent.capture), intent.capture, intent.n)
    if won is None or won.run != intent.run:
        store.delete(rel)
        by = f": run {won.run} committed #{intent.n} ({won.kind})" if won else ""
        raise ConcurrentWriterError(
            f"capture {intent.capture!r} changed while run {intent.run} was running{by}; "
            f"nothing of run {intent.run} was committed — run the command again"
        )
    complete(store, intent)
    return won


def complete(store: Store, intent: Intent) -> None:
    """Step 3 of a committed run (idempotent: safe to repeat, and from another process)."""
    for change in intent.changes:
        change.info = {"run": intent.run, "kind": intent.commit.kind, **change.info}
        table_writes.commit(store, change, app=intent.capture, n=intent.n)
    for sha, record in intent.inputs.items():
        store.write_json(f"{layout.inputs_dir(intent.capture)}/{sha}.json", record)
    if intent.summary is not None:
        store.write_json(layout.run_summary(intent.run), intent.summary)
    for folder in intent.retired:
        store.delete(folder, recursive=True)
    store.delete(layout.intent_doc(intent.capture, intent.run))


def finish_pending(store: Store, capture: str) -> tuple[int, list[str]]:
    """Complete, in order, every commit of ``capture`` up to its last one whose run did not
    complete it (a crash, or a run completing it right now); drop the intents of runs that
    lost their number. Returns that last commit's number — every table then holds every
    commit up to it, so a run may start from it — and messages saying what was done.

    The number is read before the intents: a run writes its intent before its capture
    commit, so every commit up to it has its intent listed (or completed already)."""
    done: list[str] = []
    top = head(store, capture)
    folder = layout.intents_dir(capture)
    names = [n for n in store.listdir(folder) if n.endswith(".json")]
    intents: list[Intent] = []
    for name in names:
        with contextlib.suppress(FileNotFoundError):  # (completed meanwhile)
            intents.append(Intent.from_json(store.read_json(f"{folder}/{name}")))
    for intent in sorted(intents, key=lambda i: i.n):
        if intent.n > top:
            continue  # its run may still commit
        won = last_commit(store, layout.capture_dir(capture), capture, intent.n)
        if won is not None and won.run == intent.run:
            complete(store, intent)
            done.append(f"completed commit #{intent.n} of capture {capture!r} (run {intent.run})")
        else:
            store.delete(layout.intent_doc(capture, intent.run))
    return top, done


def pending(store: Store, capture: str) -> list[Intent]:
    """Intents of ``capture`` whose runs committed but were not completed yet."""
    folder = layout.intents_dir(capture)
    names = [n for n in store.listdir(folder) if n.endswith(".json")]
    if not names:
        return []
    top = head(store, capture)
    out = []
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            intent = Intent.from_json(store.read_json(f"{folder}/{name}"))
            if intent.n <= top:
                out.append(intent)
    return out


def now() -> str:
    return datetime.now(UTC).isoformat()
