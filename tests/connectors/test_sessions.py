"""A live session's hold on its capture (``connectors.datasets.sessions``) on every backend:
racing claims have one winner, a fenced commit lands only while its token holds, positions
land with the commit, and liveness follows the lease on an injected clock."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from obsflow.connectors.datasets import sessions
from obsflow.connectors.datasets.capture import CAPTURE_STORED, planned_capture
from obsflow.connectors.storage import layout, table_writes, tables
from obsflow.connectors.storage.store import Store
from obsflow.connectors.storage.tables import FencedError, TableChange
from tests.connectors.test_tables import store  # noqa: F401  (the backends fixture)

NOW = 1_800_000_000 * 10**9  # an injected wall clock (ns)


def claim(st: Store, name: str, **kw: object) -> sessions.Hold:
    return sessions.hold(
        st,
        "cap",
        lambda: planned_capture(st, "cap", None),
        session=name,
        broker="nats://127.0.0.1:4222",
        clock=lambda: NOW,
        **kw,  # type: ignore[arg-type]
    )


def fenced_commit(st: Store, fence: tuple[str, int], positions: dict[str, int]) -> None:
    change = TableChange(
        layout.capture_dir("cap"), CAPTURE_STORED, txns=positions, fence=fence, info={}
    )
    table_writes.commit(st, change, app="cap", n=None)


def test_racing_claims_have_one_winner_and_the_loser_is_told_who(store: Store) -> None:  # noqa: F811
    """Eight sessions claim a new capture at once: one holds it, seven are refused naming it."""
    won: list[sessions.Hold] = []
    refused: list[str] = []

    def go(i: int) -> None:
        try:
            won.append(claim(store, f"s{i}"))
        except sessions.CaptureHeldError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1, refused
    assert len(refused) == 7
    winner = won[0].holder
    assert all(f"live session {winner.session} (pid {os.getpid()}" in r for r in refused)
    token, holder = sessions.holder_of(store, "cap")
    assert token == winner.token
    assert holder == winner
    won[0].release()


def test_a_fenced_commit_lands_only_while_its_token_holds(store: Store) -> None:  # noqa: F811
    first = claim(store, "first")
    fenced_commit(store, first.fence, {sessions.POSITION_APP + "nats:S:a": 11})
    assert first.position("nats:S:a") == 11
    first.release()  # free at once: its document is gone
    second = claim(store, "second")
    assert second.position("nats:S:a") == 11  # where the first stopped
    with pytest.raises(FencedError):
        fenced_commit(store, first.fence, {sessions.POSITION_APP + "nats:S:a": 99})
    snap = tables.snapshot(store, layout.capture_dir("cap"))
    assert snap is not None
    assert snap.txn(sessions.POSITION_APP + "nats:S:a") == 11  # the stale commit left nothing
    fenced_commit(store, second.fence, {sessions.POSITION_APP + "nats:S:a": 12})
    assert claim_position(store) == 12
    second.release()


def claim_position(st: Store) -> int:
    snap = tables.snapshot(st, layout.capture_dir("cap"))
    assert snap is not None
    return snap.txn(sessions.POSITION_APP + "nats:S:a")


def test_a_holder_is_alive_by_its_lease_elsewhere_and_by_its_process_here(
    tmp_path: Path,
) -> None:
    st = Store(str(tmp_path / "store"))
    held = claim(st, "a")
    holder = held.holder
    lease = int(holder.lease * 1e9)
    assert holder.alive(NOW + lease - 1)
    assert not holder.alive(NOW + lease)  # silent for the lease (paused): given up
    elsewhere = replace(holder, host=socket.gethostname() + "-other", pid=1, started="x")
    assert elsewhere.alive(NOW + lease - 1)  # another host: only the lease says
    with pytest.raises(sessions.CaptureHeldError, match="--wait"):
        claim(st, "b")
    # A process that is gone, on this host, is stale at once.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = replace(holder, pid=int(gone.stdout))
    assert not dead.alive(NOW)
    # --wait: the second claim waits (on an injected sleep) until the first lets go.
    looks: list[float] = []

    def sleep(seconds: float) -> None:
        looks.append(seconds)
        if len(looks) == 3:
            held.release()

    said: list[str] = []
    second = claim(st, "b", wait=True, sleep=sleep, on_wait=said.append)
    assert len(looks) == 3
    assert said == [said[0]]
    assert "waiting for it to end" in said[0]
    assert second.holder.session == "b"
    second.release()
