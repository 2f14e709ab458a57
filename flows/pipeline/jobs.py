"""The job layer: prepare -> run -> finish, one path for every way of running obsflow.

The ``obsflow`` command only parses arguments and prints; the Python API (``ingest``,
``replay``, ``execute``; the Explorer calls ``execute``) is the same functions. A job:

1. *prepares*: validates what it was asked, completes commits a crash interrupted, notes the
   capture's last commit (the run's base: it will commit as the next number), and for ingest
   skips inputs a committed run already captured with the same options;
2. *runs* the dataflow (``build_flow`` only builds it) in threads, a local cluster of
   processes, or with a recovery directory; the dataflow itself commits the run when it
   ends (``flows.pipeline.finish``);
3. *finishes*: reads the run's summary back and adds the wall time.

There is no lock: two runs on one capture both run, and the one that commits second finds its
base taken and commits nothing (``ConcurrentWriterError``). ``execute`` then runs it again from
the new base — the inputs are read again, and readings the other run captured are duplicates
— up to ``RETRIES`` times (not a run resumed from a recovery directory, or across hosts).

``python -m bytewax.run`` runs the same dataflow without steps 1 and 3: it commits too (from
the capture's last commit when the flow was built) and writes the same summary.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from obsflow.connectors.batch import RawBatch
from obsflow.connectors.datasets.capture import (
    list_captures,
    new_run_id,
    open_capture,
)
from obsflow.connectors.errors import ConfigError, ObsflowError, StoreError
from obsflow.connectors.storage import commits, layout
from obsflow.connectors.storage.commits import ConcurrentWriterError
from obsflow.connectors.storage.migrate import check_layout
from obsflow.connectors.storage.store import Store
from obsflow.connectors.waiting import poll
from obsflow.flows.pipeline import ingest as ingest_flow
from obsflow.flows.pipeline import replay as replay_flow
from obsflow.flows.pipeline.runner import (
    CLUSTER_WAIT,
    Cluster,
    ClusterLostError,
    Recovery,
    Wiring,
    free_port,
    run_flow,
)
from obsflow.flows.steps.summary import Counts, summary_dict

Config = ingest_flow.IngestConfig | replay_flow.ReplayConfig
"""A job's config: each kind says what it is (``kind``), plans itself (``planned``: what to
skip), builds its dataflow (``flow``), rebuilds from ``options()`` (``from_options``)."""
CONFIGS: dict[str, type[ingest_flow.IngestConfig] | type[replay_flow.ReplayConfig]] = {
    c.kind: c for c in (ingest_flow.IngestConfig, replay_flow.ReplayConfig)
}
RETRIES = 3
"""Times a run that lost its commit to another run is run again from the new base."""


@dataclass(frozen=True)
class RunResult:
    """What a job did: its summary (as in ``runs/<run>.json``, plus wall time), the inputs it
    skipped, and notes worth telling the user (work of interrupted runs finished, ...)."""

    run: str | None
    summary: dict[str, Any]
    skipped: tuple[tuple[str, str], ...] = ()  # (input, run that captured it)
    notes: tuple[str, ...] = ()

    @property
    def balanced(self) -> bool:
        return bool(self.summary.get("balanced", True))


@dataclass
class Job:
    """A prepared run: its config (run id and base filled in) and what preparing found."""

    config: Config
    store: Store
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    done: dict[str, Any] | None = None  # the run had committed already (a resumed crash)


# -- prepare ----------------------------------------------------------------------------------


def prepare(
    config: Config,
    *,
    recovery: Recovery | None = None,
    force: bool = False,
    given_run: bool = False,
) -> Job:
    """Step 1 (see the module docstring). ``given_run``: keep ``config.run_id`` (a cluster's
    processes agree on it) rather than the recovery directory's or a new one."""
    store = Store(config.store)
    check_layout(store)  # an older layout must be migrated first, or its data is not seen
    kind = config.kind
    if kind == "replay" and config.capture not in list_captures(store):
        open_capture(store, config.capture)  # names the capture before anything about views
    run = config.run_id
    if recovery is not None:
        run = recovery.run_id(kind, run if given_run else None)
    # Every commit up to the run's base is complete in every table before the run plans on
    # them (a run that committed and crashed, or one completing right now).
    top, notes = commits.finish_pending(store, config.capture)
    # A resumed run keeps the base it began on: its commit takes the number after it or none.
    base = recovery.base(top) if recovery is not None else top
    config = replace(config, run_id=run, base=base)
    job = Job(config, store, notes=notes)
    if top > base:
        won = commits.last_commit(
            store, layout.capture_dir(config.capture), config.capture, base + 1
        )
        if won is not None and won.run == run:  # it committed before the crash
            job.done = _summary_of(store, run, base + 1, config.capture)
            return job
        raise ConcurrentWriterError(
            f"capture {config.capture!r} changed since run {run} began (a recovery "
            "directory can only resume a run on the capture it started from); delete the "
            "recovery directory and run the command again"
        )
    job.config, job.skipped = config.planned(store, force=force)
    return job


def _summary_of(store: Store, run: str, n: int, capture: str) -> dict[str, Any]:
    rel = layout.run_summary(run)
    if store.exists(rel):
        doc: dict[str, Any] = store.read_json(rel)
        return doc
    return summary_dict(Counts(), run=run, commit=n, capture=capture)


# -- run --------------------------------------------------------------------------------------


def run(
    job: Job,
    *,
    workers: int = 1,
    processes: int = 1,
    recovery: Recovery | None = None,
    source: Source[RawBatch] | None = None,
    cluster: Cluster | None = None,
) -> None:
    """Step 2: run the dataflow, which commits the run when it ends. ``source`` replaces an
    ingest's input (a live cycle's messages); ``cluster``: as this process of it."""
    if job.done is not None:
        return
    config = job.config
    durable = recovery is not None  # else nothing resumes from the steps' snapshots
    flow = config.flow(Wiring(source=source, durable=durable))
    try:
        if processes > 1:
            run_processes(flow, config.kind, config.options(), processes, workers)
        else:
            run_flow(flow, workers, recovery, cluster)
    except Exception as exc:
        lost = _cause(exc, ConcurrentWriterError)  # (Bytewax wraps what a step raised)
        if lost is not None:
            raise lost from None
        # A run that lost the race may fail before its commit: the state it started from
        # was superseded (and dropped) by the run that won. Say so, as the commit would.
        assert config.base is not None
        if _cause(exc, StoreError | FileNotFoundError) is not None:
            taken = _taken_by(job.store, config.capture, config.base + 1)
            if taken == config.run_id:  # it committed; completing the other tables failed
                raise StoreError(
                    f"run {config.run_id} committed #{config.base + 1} of capture "
                    f"{config.capture!r}, but completing it failed ({exc}); the next command "
                    "on the capture completes it"
                ) from exc
            if taken is not None:
                raise ConcurrentWriterError(
                    f"capture {config.capture!r} changed while run {config.run_id} was "
                    f"running; nothing of run {config.run_id} was committed — run the "
                    "command again"
                ) from None
        raise


def _taken_by(store: Store, capture: str, n: int) -> str | None:
    """The run that committed number ``n`` of the capture (None: none yet, or the store
    cannot tell: then the run's own error is the one to report)."""
    try:
        won = commits.last_commit(store, layout.capture_dir(capture), capture, n)
    except ObsflowError:
        return None
    return None if won is None else won.run


def _cause(exc: BaseException, kind: Any) -> Any:
    """``exc`` or the first exception of its cause chain that is a ``kind``, if any."""
    seen: BaseException | None = exc
    for _ in range(16):
        if seen is None:
            return None
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def run_processes(
    flow: Dataflow, module: str, options: dict[str, Any], processes: int, workers: int
) -> None:
    """Run a dataflow as a Bytewax cluster of local processes (as on several hosts): this
    process is process 0 and runs ``flow``; the others are started to build it from
    ``options``.

    Process 0 being this one (already started, its imports done) saves an interpreter's
    start-up, and it listens at once: the others connect to it, and one that finds nobody
    listening waits a whole second before it tries again (timely's networking)."""
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    # No recovery in a local cluster: the steps' snapshots need not write anything.
    args = ", ".join(f"{k}={v!r}" for k, v in {**options, "durable": False}.items())
    expr = f"obsflow.flows.pipeline.{module}:build_flow({args})"
    bytewax_run = [sys.executable, "-m", "bytewax.run", expr, "-w", str(workers)]
    others = [
        subprocess.Popen([*bytewax_run, "-i", str(i), "-a", addresses]) for i in range(1, processes)
    ]
    done = threading.Event()
    threading.Thread(target=_watch, args=(others, module, done), daemon=True).start()
    try:
        run_flow(flow, workers, None, Cluster.parse(addresses, 0))
    except BaseException as exc:
        for p in others:  # (a lost process 0 stops them too, but not at once)
            p.kill()
        codes = [p.wait() for p in others]
        if isinstance(exc, ClusterLostError):  # its advice is for a cluster across hosts
            raise ObsflowError(
                f"{module} stopped: a process of the local cluster went away (exit codes "
                f"{codes}); nothing was committed"
            ) from None
        raise
    finally:
        done.set()
    codes = [p.wait() for p in others]
    if any(codes):
        raise ObsflowError(f"{module} process exit codes {codes}; nothing was committed")


PEER_GRACE = 30.0  # s process 0 has to notice a lost process itself (ClusterLostError)


def _watch(
    others: list[subprocess.Popen[bytes]],
    module: str,
    done: threading.Event,
    exit: Callable[[int], object] = os._exit,
) -> None:
    """Process 0 waits for ever for a process that died before it connected (timely keeps
    listening): once one has failed and process 0 is still running ``PEER_GRACE`` later, end
    it with one line. Nothing was committed (the commit is process 0's last step)."""
    while not done.wait(min(0.5, PEER_GRACE)):
        failed = [(i, p.returncode) for i, p in enumerate(others, 1) if p.poll() not in (None, 0)]
        if failed and not done.wait(PEER_GRACE):
            i, code = failed[0]
            sys.stderr.write(
                f"obsflow: error: {module} stopped: process {i} of the local cluster exited "
                f"with code {code} before the run ended; nothing was committed\n"
            )
            sys.stderr.flush()
            for p in others:
                p.kill()
            exit(1)  # (process 0 is blocked in Bytewax's networking: nothing to unwind)
            return


# -- finish -----------------------------------------------------------------------------------


def finish(job: Job, started: float) -> RunResult:
    """Step 3: the run's summary with its wall time."""
    run_id = job.config.run_id
    rel = layout.run_summary(run_id)
    if job.done is not None:
        summary = job.done
        job.notes.append(f"run {run_id} had committed before it stopped; nothing left to do")
    else:
        try:
            summary = job.store.read_json(rel)
        except FileNotFoundError:
            raise StoreError(
                f"run {run_id} ended without committing ({job.store.uri(rel)} is missing)"
            ) from None
        elapsed = time.monotonic() - started
        summary["seconds"] = round(elapsed, 3)
        summary["readings_per_s"] = round(summary["input"] / elapsed) if elapsed > 0 else None
        job.store.write_json(rel, summary)
    return RunResult(run_id, summary, tuple(job.skipped), tuple(job.notes))


def execute(
    config: Config,
    *,
    workers: int = 1,
    processes: int = 1,
    recovery: Recovery | None = None,
    force: bool = False,
    source: Source[RawBatch] | None = None,
    cluster: Cluster | None = None,
) -> RunResult:
    """prepare -> run -> finish, run again from the new base if another run committed the
    capture meanwhile (see the module docstring). With ``cluster`` (as its process 0), the
    prepared options are published in the store between prepare and run
    (``execute_in_cluster``)."""
    if processes > 1 and recovery is not None:  # (said before anything is prepared)
        raise ConfigError(
            "--processes starts a cluster on this host without --recovery; across hosts (or "
            "with --recovery) run one process per host with --addresses"
        )
    notes: list[str] = []
    for attempt in range(RETRIES + 1):
        try:
            result = _execute(config, workers, processes, recovery, force, source, cluster)
        except ConcurrentWriterError as exc:
            if recovery is not None or cluster is not None or attempt == RETRIES:
                raise
            notes.append(f"{exc}: ran it again")
            config = replace(config, run_id=new_run_id())
            continue
        return replace(result, notes=(*notes, *result.notes)) if notes else result
    raise AssertionError("unreachable")


def _execute(
    config: Config,
    workers: int,
    processes: int,
    recovery: Recovery | None,
    force: bool,
    source: Source[RawBatch] | None,
    cluster: Cluster | None,
) -> RunResult:
    job = prepare(config, recovery=recovery, force=force, given_run=cluster is not None)
    nothing = job.config.idle()
    runs = job.done is None and not nothing
    plan = layout.cluster_plan(job.config.run_id)
    if cluster is not None:  # (when nothing runs, the others must not wait for it)
        published = {"kind": config.kind, "options": job.config.options(), "runs": runs}
        job.store.write_json(plan, published)
    if nothing:
        summary = summary_dict(Counts(), capture=config.capture, mode=config.kind)
        return RunResult(None, summary, tuple(job.skipped), tuple(job.notes))
    started = time.monotonic()
    run(
        job,
        workers=workers,
        processes=processes,
        recovery=recovery,
        source=source,
        cluster=cluster,
    )
    result = finish(job, started)
    if cluster is not None and runs:  # the others have read it (the run needed them); gone,
        job.store.delete(plan)  # it cannot mislead a later command with this run id
    return result


def execute_in_cluster(
    config: Config,
    cluster: Cluster,
    *,
    workers: int = 1,
    recovery: Recovery | None = None,
    force: bool = False,
) -> RunResult:
    """One process of a run across hosts (every process runs the same command with its own
    ``--process-id`` and the same ``config.run_id``).

    Process 0 prepares the run as ``execute`` does, publishes the
    prepared options in the store (``layout.cluster_plan``), runs its share and reads the
    summary back. The others wait for those options, run their share from them and return
    the run's summary once it is committed.
    """
    if cluster.coordinator:
        return execute(config, workers=workers, recovery=recovery, force=force, cluster=cluster)
    plan = layout.cluster_plan(config.run_id)
    store = Store(config.store)
    doc = _wait_for(store, plan, f"the options process 0 prepared for run {config.run_id}")
    if doc.get("kind") != config.kind:
        raise ConfigError(f"run {config.run_id} is a {doc.get('kind')} run, not {config.kind}")
    if not doc.get("runs"):
        return RunResult(None, {}, notes=("process 0 found nothing to run",))
    options = dict(doc["options"])
    prepared: Config = CONFIGS[config.kind].from_options(**options)
    run(Job(prepared, store), workers=workers, recovery=recovery, cluster=cluster)
    summary = _wait_for(store, layout.run_summary(config.run_id), "the run's summary")
    note = f"process {cluster.process_id}: its share is done; process 0 reports the run"
    return RunResult(config.run_id, summary, notes=(note,))


def _wait_for(store: Store, rel: str, what: str) -> dict[str, Any]:
    """A JSON document another process of the cluster writes, once it is there."""
    doc: dict[str, Any] = poll(
        lambda: store.read_json(rel),
        retry_on=FileNotFoundError,
        seconds=CLUSTER_WAIT,
        every=0.2,
        gave_up=lambda _: ConfigError(
            f"no {what} in {store.uri(rel)} after {CLUSTER_WAIT:.0f} s: start process 0 with "
            "the same --store and --run-id"
        ),
    )
    return doc


def ingest(config: ingest_flow.IngestConfig | None = None, **kwargs: Any) -> RunResult:
    """Ingest into a capture (see ``IngestConfig``); ``workers``, ``processes``, ``recovery``
    and ``force`` as for ``execute``, everything else builds the config."""
    run_opts = {
        k: kwargs.pop(k) for k in ("workers", "processes", "recovery", "force") if k in kwargs
    }
    return execute(config or ingest_flow.IngestConfig.from_options(**kwargs), **run_opts)


def replay(config: replay_flow.ReplayConfig | None = None, **kwargs: Any) -> RunResult:
    """Rebuild views from a capture (see ``ReplayConfig``); options as for ``ingest``."""
    run_opts = {k: kwargs.pop(k) for k in ("workers", "processes", "recovery") if k in kwargs}
    return execute(config or replay_flow.ReplayConfig.from_options(**kwargs), **run_opts)
