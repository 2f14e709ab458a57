"""An ingest as a Bytewax cluster across hosts, writing to S3 on a third host.

Each "host" is a Linux network namespace with its own address (``tests.netns``): the two
obsflow processes run ``obsflow ingest ... --addresses "10.77.0.1:2101;10.77.0.2:2101"
--process-id N --run-id R`` in ``w0`` and ``w1``, the store is a moto S3 server in ``s3``. The
cluster's outputs must equal one process's; a process killed with SIGKILL must stop the other
with one clear error; running both again with the same recovery directory must finish the
run with the same outputs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import CRASH_VIEWS, ROOT, sorted_frame
from tests.flows.test_recovery import snapshotted
from tests.netns import NODES, Hosts

pytestmark = pytest.mark.integration  # servers, brokers, child processes (tests/conftest.py)

S3 = f"http://{NODES['s3']}:5000"
PORT = 2101
ADDRESSES = f"{NODES['w0']}:{PORT};{NODES['w1']}:{PORT}"
SIM = "sim://?sources=6&channels=temperature,pressure&rate=1000&duration=90s&seed=5"
ENV = {
    **os.environ,
    "AWS_ENDPOINT_URL": S3,
    "AWS_ACCESS_KEY_ID": "cluster-test",
    "AWS_SECRET_ACCESS_KEY": "cluster-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "NO_PROXY": "*",  # every address here is on the bridge, never behind a proxy
    "PYTHONPATH": str(ROOT),
}
OUTPUTS = ("capture", "s10", "sess")
WAIT = 180  # s: the longest any step may take before the test fails instead of hanging


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    """The three hosts, moto on ``s3`` and a bucket ``obs`` on it."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with Hosts() as h, open(log, "wb") as out:
        moto = subprocess.Popen(
            h.argv("s3", sys.executable, "-m", "moto.server", "-H", NODES["s3"], "-p", "5000"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while not h.run_inside("w0", lambda: _answers(NODES["s3"], 5000)):
                assert moto.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "moto did not start in 60 s"
                time.sleep(0.05)
            _python(h, "import s3fs; s3fs.S3FileSystem().mkdir('obs')")
            yield h
        finally:
            moto.kill()
            moto.wait()


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _python(h: Hosts, code: str, *args: str) -> None:
    subprocess.run(
        h.argv("w0", sys.executable, "-c", code, *args),
        env=ENV,
        cwd=ROOT,
        check=True,
        timeout=WAIT,
        capture_output=True,
    )


def ingest(store: str, views: Path, *more: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "obsflow.flows.cli.main",
        "ingest",
        SIM,
        "--store",
        store,
        "--capture",
        "c",
        "--views",
        str(views),
        "--batch-rows",
        "20000",
        "-q",
        *more,
    ]


def cluster(
    h: Hosts, store: str, views: Path, run: str, logs: Path, *more: str
) -> list[subprocess.Popen[bytes]]:
    """Both processes of the cluster, started at once; stderr to ``logs/p<N>.err``."""
    logs.mkdir(exist_ok=True)
    procs = []
    for n in (0, 1):
        argv = ingest(
            store, views, "--addresses", ADDRESSES, "--process-id", str(n), "--run-id", run, *more
        )
        with open(logs / f"p{n}.err", "wb") as err:
            procs.append(subprocess.Popen(h.argv(f"w{n}", *argv), env=ENV, cwd=ROOT, stderr=err))
    return procs


def outputs(h: Hosts, store: str, into: Path) -> dict[str, pd.DataFrame]:
    """The capture and both views (without the run that wrote them), read from S3 on ``w0``."""
    code = (
        "import sys\n"
        "from tests.delta import polars_frame\n"
        "store, into = sys.argv[1], sys.argv[2]\n"
        "frame = polars_frame(store, 'captures/c').drop(columns=['commit'])\n"
        "frame.to_parquet(into + '/capture.parquet')\n"
        "for v in ('s10', 'sess'):\n"
        "    polars_frame(store, 'views/' + v).to_parquet(into + '/' + v + '.parquet')\n"
    )
    into.mkdir()
    _python(h, code, store, str(into))
    out = {"capture": sorted_frame(pd.read_parquet(into / "capture.parquet"))}
    for view in ("s10", "sess"):
        df = pd.read_parquet(into / f"{view}.parquet").drop(columns=["run"])
        out[view] = df.sort_values(["source", "channel", "window_start"]).reset_index(drop=True)
    return out


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("views") / "views.toml"
    path.write_text(CRASH_VIEWS)
    return path


@pytest.fixture(scope="module")
def one_process(
    hosts: Hosts, views: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, pd.DataFrame]:
    """The same ingest by one process on ``w0``: what the cluster must produce."""
    subprocess.run(
        hosts.argv("w0", *ingest("s3://obs/single", views)),
        env=ENV,
        cwd=ROOT,
        check=True,
        timeout=WAIT,
    )
    return outputs(hosts, "s3://obs/single", tmp_path_factory.mktemp("single") / "out")


def check(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    assert len(want["capture"]) > 300_000  # (the whole simulation: 6 x 2 x 1000 Hz x 30 s)
    for name in OUTPUTS:
        pd.testing.assert_frame_equal(got[name], want[name], obj=name)


def test_a_cluster_across_two_hosts_writes_what_one_process_writes(
    hosts: Hosts, views: Path, one_process: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    procs = cluster(hosts, "s3://obs/cluster", views, "c1", tmp_path)
    assert [p.wait(WAIT) for p in procs] == [0, 0], [
        (tmp_path / f"p{n}.err").read_text() for n in (0, 1)
    ]
    check(outputs(hosts, "s3://obs/cluster", tmp_path / "out"), one_process)
    # The same commands again: the run committed, so neither process runs anything.
    procs = cluster(hosts, "s3://obs/cluster", views, "c1", tmp_path / "again")
    assert [p.wait(WAIT) for p in procs] == [0, 0]
    assert "process 0 found nothing to run" in (tmp_path / "again" / "p1.err").read_text()
    check(outputs(hosts, "s3://obs/cluster", tmp_path / "out-again"), one_process)


def test_a_killed_host_stops_the_cluster_with_one_clear_error_and_a_rerun_resumes(
    hosts: Hosts, views: Path, one_process: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    store, recovery = "s3://obs/killed", tmp_path / "recovery"  # (one directory, as on NFS)
    # Small batches: the run lasts long enough to be caught mid-way on a fast machine (with
    # 256 Ki-row batches it once ended before the poll below saw it connected).
    more = ("--recovery", str(recovery), "--snapshot-interval", "0.2", "--batch-rows", "4000")
    procs = cluster(hosts, store, views, "c2", tmp_path / "first", *more)
    # Kill host w1's process once the two are connected and a snapshot is committed.
    deadline = time.monotonic() + WAIT
    while not (hosts.connected("w0", PORT) and snapshotted(recovery)):
        assert all(p.poll() is None for p in procs), "the cluster ended before the kill"
        assert time.monotonic() < deadline, "no connected cluster with a snapshot"
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait(WAIT)
    assert procs[0].wait(WAIT) != 0
    errors = (tmp_path / "first" / "p0.err").read_text().strip().splitlines()
    assert errors == [
        "obsflow: error: process 0 stopped: the cluster lost a process (its connection "
        "closed); start every process again with the same command and --recovery directory "
        "to resume"
    ]

    procs = cluster(hosts, store, views, "c2", tmp_path / "again", *more)
    assert [p.wait(WAIT) for p in procs] == [0, 0], [
        (tmp_path / "again" / f"p{n}.err").read_text() for n in (0, 1)
    ]
    assert resume_epochs(recovery)[-1] > 1  # the rerun resumed from a snapshot, not from scratch
    check(outputs(hosts, store, tmp_path / "out"), one_process)


def resume_epochs(recovery: Path) -> list[int]:
    """The epoch each execution recorded in the recovery directory resumed from, in order."""
    epochs: dict[int, int] = {}
    for db in recovery.glob("*.sqlite3"):
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            epochs.update(con.execute("select ex_num, resume_epoch from exs").fetchall())
    return [epochs[n] for n in sorted(epochs)]
