"""Running dataflows: worker threads, local process clusters, and crash recovery.

With a recovery directory, Bytewax snapshots sources and state every ``snapshot_interval``;
running the same command again resumes from the last snapshot, and every obsflow sink
rewrites exactly what it wrote after it (deterministic object names), so outputs hold each
row once. The run id is kept in the recovery directory, so a resumed run continues the same
run: same object names, same summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from obsflow.connectors.datasets.capture import new_run_id
from obsflow.connectors.errors import ConfigError, ObsflowError
from obsflow.connectors.ids import check_name
from obsflow.connectors.storage.commits import StateMap, capture_base
from obsflow.connectors.storage.store import Store

EPOCH = timedelta(seconds=2)
CLUSTER_WAIT = 120.0  # s a cluster process waits for what process 0 prepares
# What the steps' snapshots are keyed by; 2: capture partitions keyed by ``routing``;
# 3: composite steps as Bytewax operators (``ingest.view_<v>.window``, ``ingest.summary.totals``).
RECOVERY_FORMAT = 3
_RUN_FILE = "obsflow-run.json"


@dataclass(frozen=True)
class Wiring:
    """What a flow reads and writes in place of its defaults: ``source`` replaces its input
    (a live cycle's messages; tests feed a ``TestingSource``), ``sink`` receives its final
    ``("run", Counts)`` instead of the run's finish (no commit then), and ``durable=False``
    when the run has no recovery (snapshots then write and copy nothing)."""

    source: Source[Any] | None = None
    sink: Sink[Any] | None = None
    durable: bool = True


DEFAULT_WIRING = Wiring()
C = TypeVar("C")  # a job's config


def entry_point(
    config: Callable[..., C], dataflow: Callable[[C, Wiring], Dataflow]
) -> Callable[..., Dataflow]:
    """A job's ``build_flow`` for ``python -m bytewax.run "<module>:build_flow(option=...)"``:
    the dataflow of the config those options build (``config``: its ``from_options``);
    ``durable=False`` for a run without recovery (a local cluster's other processes)."""

    def build_flow(durable: bool = True, **options: Any) -> Dataflow:
        return dataflow(config(**options), Wiring(durable=durable))

    return build_flow


class _OnCapture(Protocol):
    @property
    def capture(self) -> str: ...

    @property
    def base(self) -> int | None:
        """The capture's commit a run builds on (None: its last)."""


J = TypeVar("J", bound=_OnCapture)


def on_base(config: J, store: Store) -> tuple[J, int, StateMap]:
    """``config`` with the capture's commit it builds on settled (commits up to it completed
    first), that commit, and where each partition's state was at it."""
    base, state = capture_base(store, config.capture, config.base)
    return replace(config, base=base), base, state  # type: ignore[type-var]


@dataclass(frozen=True)
class Recovery:
    """A local recovery directory (the one thing obsflow keeps on local disk)."""

    directory: Path
    snapshot_interval: float = 10.0

    def __post_init__(self) -> None:
        if not self.snapshot_interval > 0:
            raise ConfigError("--snapshot-interval must be a positive number of seconds")

    def _doc(self) -> dict[str, Any]:
        path = self.directory / _RUN_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def _save(self, doc: dict[str, Any]) -> None:
        # Atomically: a kill mid-write must not leave a half document for the resume to trip
        # on (a reader polling it saw an empty file once).
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{_RUN_FILE}.tmp"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.directory / _RUN_FILE)

    def run_id(self, command: str, given: str | None = None) -> str:
        """The run id of the interrupted run to resume, or a new one (``given``, else drawn)
        recorded for next time."""
        doc = self._doc()
        if doc:
            if doc.get("format", 1) != RECOVERY_FORMAT:
                raise ConfigError(
                    f"recovery directory {str(self.directory)!r} was written by an older "
                    "obsflow, whose steps kept their state under other names: it cannot resume "
                    "that run. Delete the directory and run the command again (the run starts "
                    "over; nothing it wrote was committed)"
                )
            if doc.get("command") != command:
                raise ConfigError(
                    f"recovery directory {str(self.directory)!r} belongs to an "
                    f"'{doc.get('command')}' run; use another directory"
                )
            if given is not None and doc["run"] != given:
                raise ConfigError(
                    f"recovery directory {str(self.directory)!r} belongs to run {doc['run']}, "
                    f"not {given}; use another directory"
                )
            return check_name(doc["run"], kind="run id")
        run = given or new_run_id()
        self._save({"command": command, "run": run, "format": RECOVERY_FORMAT})
        return run

    def base(self, head: int) -> int:
        """The capture's last commit when the run began: ``head`` the first time, then what
        was recorded (a resumed run commits on the capture it started from, or not at all)."""
        doc = self._doc()
        if "base" not in doc:
            doc["base"] = head
            self._save(doc)
        return int(doc["base"])

    def config(self, workers: int, cluster: Cluster | None = None) -> RecoveryConfig:
        """Bytewax's recovery config; creates the recovery partitions on first use.

        A cluster shares one directory (on real hosts, a shared filesystem): its first process
        creates the partitions (each moved in whole), the others wait for all of them."""
        if cluster is None or cluster.coordinator:
            self.directory.mkdir(parents=True, exist_ok=True)
            if not any(self.directory.glob("*.sqlite3")):
                with tempfile.TemporaryDirectory(dir=self.directory, prefix=".init-") as tmp:
                    init_db_dir(Path(tmp), max(1, workers))  # type: ignore[no-untyped-call]
                    for part in sorted(Path(tmp).glob("*.sqlite3")):
                        os.replace(part, self.directory / part.name)
        else:
            deadline = time.monotonic() + CLUSTER_WAIT
            while len(list(self.directory.glob("*.sqlite3"))) < workers:
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"recovery directory {str(self.directory)!r} holds no recovery "
                        f"partitions after {CLUSTER_WAIT:.0f} s: process 0 creates them; give "
                        "every process the same directory (a shared filesystem on real hosts)"
                    )
                time.sleep(0.1)
        return RecoveryConfig(str(self.directory))  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Cluster:
    """This process's place in a Bytewax cluster across hosts: every process is given the same
    ``addresses`` (``host:port`` of each, in process order) and its own ``process_id``.

    Process 0 coordinates: it prepares the run (base commit, inputs to skip), publishes the
    prepared options in the store for the others (``flows.pipeline.jobs``) and reads the summary
    back.
    """

    addresses: tuple[str, ...]
    process_id: int

    def __post_init__(self) -> None:
        if len(self.addresses) < 2:
            raise ConfigError("--addresses needs two or more host:port entries, separated by ;")
        for address in self.addresses:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"--addresses: {address!r} is not host:port")
        if not 0 <= self.process_id < len(self.addresses):
            raise ConfigError(
                f"--process-id must be 0..{len(self.addresses) - 1} (one per address), "
                f"not {self.process_id}"
            )

    @classmethod
    def parse(cls, addresses: str, process_id: int | None) -> Cluster:
        if process_id is None:
            raise ConfigError("--addresses needs --process-id (this process's index in them)")
        return cls(tuple(a.strip() for a in addresses.split(";") if a.strip()), process_id)

    @property
    def coordinator(self) -> bool:
        return self.process_id == 0


class ClusterLostError(ObsflowError):
    """A process of the cluster went away (killed, crashed, cut off): the run stopped."""


def check_cluster_run_id(options: dict[str, Any]) -> None:
    """Under ``python -m bytewax.run -i/-a`` every process builds the dataflow itself: a run id
    drawn at random would differ between them, so one must be given."""
    in_cluster = "BYTEWAX_ADDRESSES" in os.environ or any(
        a in ("-a", "--addresses") or a.startswith("--addresses=") for a in sys.argv
    )
    if in_cluster and not options.get("run_id"):
        raise ConfigError(
            "with several processes (bytewax.run -a), pass the same run_id='...' to every "
            "process: each one builds the dataflow and they must agree on the run"
        )


def run_flow(
    flow: Dataflow,
    workers: int,
    recovery: Recovery | None = None,
    cluster: Cluster | None = None,
) -> None:
    """Run a dataflow in this process with ``workers`` worker threads (as one process of
    ``cluster``, if given)."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    options: dict[str, Any] = {"workers_per_process": workers, "epoch_interval": EPOCH}
    if recovery is not None:
        options["epoch_interval"] = timedelta(seconds=recovery.snapshot_interval)
        processes = len(cluster.addresses) if cluster else 1
        options["recovery_config"] = recovery.config(workers * processes, cluster)
    if cluster is not None:
        options.update(process_id=cluster.process_id, addresses=list(cluster.addresses))
    with panics_kept_apart():
        try:
            cli_main(flow, **options)  # type: ignore[no-untyped-call]
        except BaseException as exc:
            # A lost peer surfaces as a Rust panic of the communication threads ("Send thread
            # panic"), a BaseException that names nothing: say what happened and what to do.
            if cluster is None or "thread panic" not in str(exc):
                raise
            raise ClusterLostError(
                f"process {cluster.process_id} stopped: the cluster lost a process (its "
                "connection closed); start every process again with the same command "
                + ("and --recovery directory to resume" if recovery else "to run again")
            ) from None


@contextlib.contextmanager
def panics_kept_apart() -> Iterator[None]:
    """Keep Bytewax's panic text off the terminal while a dataflow runs.

    Bytewax reports an exception raised in a step as a Rust panic, written straight to file
    descriptor 2 (with ``RUST_BACKTRACE=1``, a stack backtrace too), before the exception
    reaches Python, where the CLI reports it in one line. So while the dataflow runs, fd 2
    goes to a temporary file and Python's ``sys.stderr`` (progress lines), when it is the
    terminal, to a copy of the original fd 2; afterwards whatever else was written to fd 2 is
    passed on, without the panic reports.
    """
    try:
        on_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # captured (pytest, a notebook): leave it
        on_fd2 = False
    sys.stderr.flush()
    python_stderr = sys.stderr
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        if on_fd2:
            sys.stderr = open(  # noqa: SIM115 - closed below
                os.dup(saved), "w", buffering=1, encoding=python_stderr.encoding, errors="replace"
            )
        try:
            yield
        finally:
            if on_fd2:
                sys.stderr.close()
                sys.stderr = python_stderr
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = without_panics(held.read().decode(errors="replace"))
            if text:
                sys.stderr.write(text)
                sys.stderr.flush()


def without_panics(text: str) -> str:
    """``text`` without Rust panic reports: from a ``thread '…' panicked at`` line through its
    closing ``note: …`` line and the blank lines after it."""
    out, in_panic, after = [], False, False
    for line in text.splitlines(keepends=True):
        if line.startswith("thread '") and " panicked at " in line:
            in_panic = True
        elif in_panic and line.startswith("note: "):
            in_panic, after = False, True
        elif not in_panic and not (after and not line.strip()):
            out.append(line)
            after = False
    return "".join(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
