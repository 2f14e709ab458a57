"""EPICS live sessions (``obsflow ingest ca://...`` / ``pva://...``) against real servers this
test starts (``tests.epics_iocs``: a caproto IOC, a p4p PV Access server), compared with the
log of every update the server posted: each captured exactly once with the IOC's timestamp,
alarm columns, waveforms byte for byte through ``obsflow payload get``, views equal to pandas
over the log, metadata and refusals recorded; an IOC restart and a killed session leave
only reported gaps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from obsflow.connectors.datasets import reads
from obsflow.connectors.datasets.channels import read_channels, read_gaps
from obsflow.connectors.payloads.offload import PayloadStore
from obsflow.connectors.storage import commits
from obsflow.connectors.storage.store import Store
from tests.epics_iocs import Ioc, read_log, waveform

pytestmark = pytest.mark.integration

OBSFLOW = str(Path(sys.executable).parent / "obsflow")
SECOND = 1_000_000_000
VIEWS = """
[[view]]
name = "pv_1s"
kind = "tumbling"
size = "1s"
aggregates = ["count", "mean", "min", "max"]
"""
SEVERITY = {0: "NO_ALARM", 1: "MINOR", 2: "MAJOR"}


def obsflow(ioc: Ioc, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **ioc.client_env()}
    return subprocess.Popen(
        [OBSFLOW, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def session(ioc: Ioc, store: Path, tmp_path: Path, *extra: str) -> list[str]:
    views = tmp_path / "views.toml"
    views.write_text(VIEWS)
    url = f"{ioc.protocol}://" + ",".join(ioc.pvs)
    return ["ingest", url, "--store", str(store), "--capture", "pvs", "--views", str(views), *extra]


def captured(store: Path) -> pd.DataFrame:
    cols = ["source", "channel", "time", "value", "alarm_severity", "alarm_status"]
    cols += ["payload_sha256", "payload_codec", "payload_inline"]
    table = reads.read_capture(Store(str(store)), "pvs", columns=cols)
    frame = table.to_pandas()
    return frame.assign(time=table.column("time").cast("int64").to_numpy())


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def monitoring_all(store: Path, channels: int) -> bool:
    """The session has captured a first value of every channel (it monitors them all)."""
    if not commits.head(Store(str(store)), "pvs"):
        return False
    return captured(store)["channel"].nunique() >= channels


def run_session(ioc: Ioc, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A session over the server's whole run: started before its updates, ended idle."""
    store, summary = tmp_path / "store", tmp_path / "summary.json"
    args = session(ioc, store, tmp_path, "--stop-when-idle", "3s", "--summary", str(summary))
    proc = obsflow(ioc, *args, "-q")
    try:
        wait_for(lambda: monitoring_all(store, len(ioc.pvs) - 1), 60, "no first values")
        ioc.begin()
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    return store, json.loads(summary.read_text())


def check_exactly_once(ioc: Ioc, store: Path, summary: dict[str, Any], source: str) -> None:
    log = read_log(ioc.log)
    got = captured(store)
    assert not got.duplicated(["channel", "time"]).any()
    assert set(got["source"]) == {source}
    # Every update posted, once, with the IOC's timestamp (to the ns), value and alarm.
    want = log.rename(columns={"pv": "channel"}).sort_values(["channel", "time"])
    have = got.sort_values(["channel", "time"])
    assert list(zip(have["channel"], have["time"], strict=True)) == list(
        zip(want["channel"], want["time"], strict=True)
    )
    scalar = ~want["channel"].eq("P:wf").to_numpy()
    np.testing.assert_array_equal(
        have["value"].to_numpy()[scalar], want["value"].to_numpy()[scalar]
    )
    assert list(have["alarm_severity"]) == [SEVERITY[s] for s in want["severity"]]
    statuses = dict(zip(have["alarm_severity"], have["alarm_status"], strict=True))
    assert statuses["MINOR"] == "HIGH"
    assert statuses["MAJOR"] == "HIHI"
    assert summary["balanced"]
    assert summary["accepted"] == len(log)
    assert summary["refused"] == {"P:name": summary["refused"]["P:name"]}
    assert "string" in summary["refused"]["P:name"]

    # Waveforms: by reference, each equal byte for byte to what was posted.
    waves = have[have["channel"] == "P:wf"]
    assert len(waves) == (log["pv"] == "P:wf").sum()
    assert waves["payload_inline"].isna().all()
    payloads = PayloadStore(Store(str(store)))
    refs = reads.read_capture(Store(str(store)), "pvs", payloads=True).to_pandas()
    for n, (sha, ns) in enumerate(zip(waves["payload_sha256"], waves["time"], strict=True)):
        posted = waveform(ioc.waveform_size, int(ns))
        if n < 2:  # through the CLI
            out = store.parent / f"wf{n}.npy"
            done = subprocess.run(
                [OBSFLOW, "payload", "get", sha, "--store", str(store), "-o", str(out)],
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stderr
            fetched = np.load(out)
        else:
            fetched = payloads.fetch(refs[refs["payload_sha256"] == sha].iloc[0].to_dict())
        assert fetched.dtype == posted.dtype
        assert fetched.tobytes() == posted.tobytes()

    # Views: pandas over the log.
    scalars = want[scalar].assign(window_start=lambda f: f["time"] // SECOND * SECOND)
    oracle = (
        scalars.groupby(["channel", "window_start"])["value"]
        .agg(["count", "mean", "min", "max"])
        .reset_index()
    )
    view = reads.read_view(Store(str(store)), "pv_1s").to_pandas()
    view = view[view["channel"] != "P:wf"]
    view = view.assign(window_start=view["window_start"].astype("int64"))
    merged = oracle.merge(view, on=["channel", "window_start"], suffixes=("", "_view"))
    assert len(merged) == len(oracle) == len(view)
    assert (merged["count"] == merged["count_view"]).all()
    for agg in ("mean", "min", "max"):
        np.testing.assert_allclose(merged[agg], merged[f"{agg}_view"], rtol=1e-12)

    # Channel metadata: units and display limits, enum labels, kinds.
    meta = read_channels(Store(str(store)), "pvs")
    assert meta["P:s0"]["units"] == "mm"
    assert (meta["P:s0"]["display_low"], meta["P:s0"]["display_high"]) == (-10.0, 10.0)
    assert meta["P:mode"]["enum"] == ["Idle", "Run"]
    assert meta["P:mode"]["kind"] == "enum"
    assert meta["P:wf"]["kind"] in ("waveform", "ndarray")


@pytest.mark.parametrize("protocol", ["ca", "pva"])
def test_every_posted_update_is_captured_once_with_the_iocs_time(
    protocol: str, tmp_path: Path
) -> None:
    with Ioc(protocol, tmp_path / "ioc.log", scalars=4, rate=100, duration=6) as ioc:
        store, summary = run_session(ioc, tmp_path)
    source = f"127.0.0.1:{ioc.ports[0]}" if protocol == "ca" else "pva"
    check_exactly_once(ioc, store, summary, source)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["ca", "pva"])
def test_twenty_pvs_at_100_hz_for_a_minute_are_captured_once(protocol: str, tmp_path: Path) -> None:
    with Ioc(protocol, tmp_path / "ioc.log", scalars=17, rate=100, duration=60) as ioc:
        store, summary = run_session(ioc, tmp_path)
    source = f"127.0.0.1:{ioc.ports[0]}" if protocol == "ca" else "pva"
    check_exactly_once(ioc, store, summary, source)


def test_an_ioc_restart_and_a_killed_session_leave_reported_gaps_only(tmp_path: Path) -> None:
    """The IOC restarted mid-run, then the session SIGKILLed and run again: nothing is
    captured twice, and every logged update missing from the capture was posted within a
    gap the sessions reported (a PV's disconnect, or no session running)."""
    ioc = Ioc("ca", tmp_path / "ioc.log", scalars=3, rate=50, waveform_size=1000, duration=12)
    store = tmp_path / "store"
    args = session(ioc, store, tmp_path, "-q")
    with ioc:
        first = obsflow(ioc, *args)  # (until killed: through the IOC's restart)
        try:
            wait_for(lambda: monitoring_all(store, len(ioc.pvs) - 1), 60, "no first values")
            ioc.begin()
            rows = len(captured(store))
            wait_for(lambda: len(captured(store)) > rows + 300, 60, "no updates")
            ioc.stop()  # (SIGTERM: the log holds every update it posted)
            ioc.start()  # the same ports; it posts at once (its go file exists)
            restarted = len(captured(store))
            wait_for(lambda: len(captured(store)) > restarted + 300, 90, "no reconnect")
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.communicate()
        summary = tmp_path / "summary.json"
        second = obsflow(ioc, *args, "--stop-when-idle", "4s", "--summary", str(summary))
        _, err = second.communicate(timeout=300)
        assert second.returncode == 0, err

    log = read_log(ioc.log).rename(columns={"pv": "channel"})
    got = captured(store)
    assert not got.duplicated(["channel", "time"]).any()
    keys = set(zip(log["channel"], log["time"], strict=True))
    assert set(zip(got["channel"], got["time"], strict=True)) <= keys  # nothing not posted

    gaps = read_gaps(Store(str(store)), "pvs")
    kinds = {g["kind"] for g in gaps}
    assert kinds == {"disconnected", "no session"}, gaps
    for pv in ("P:s0", "P:s1", "P:s2", "P:wf", "P:mode"):  # the restart, for each PV
        assert any(g["kind"] == "disconnected" and g["pv"] == pv and g["until"] for g in gaps)
    assert json.loads(summary.read_text())["gaps"][0]["kind"] == "no session"

    def ns(text: str | None) -> int:
        return int(pd.Timestamp(text).value) if text else 2**62

    # A disconnect's gap runs from the PV's last update received (what the IOC sent after it
    # may never have left the IOC) until the reconnect.
    windows = [(g.get("pv"), ns(g.get("last_update") or g["since"]), ns(g["until"])) for g in gaps]
    have = set(zip(got["channel"], got["time"], strict=True))
    missing = log[[k not in have for k in zip(log["channel"], log["time"], strict=True)]]
    assert len(missing), "the kill and the restart lost nothing: the test shows nothing"
    for channel, t in zip(missing["channel"], missing["time"], strict=True):
        assert any(pv in (None, channel) and a <= t <= b for pv, a, b in windows), (channel, t)


BEFORE_ALARMS = Path(__file__).parents[1] / "fixtures" / "capture_before_alarms" / "store"


def test_a_capture_from_before_the_alarm_columns_gets_an_epics_sessions_alarms(
    tmp_path: Path,
) -> None:
    """A capture written before ``alarm_severity``/``alarm_status`` existed, continued by an
    EPICS session: the table gains both columns, and the session's readings have their
    alarms (obsflow and Polars read them; the older readings read null)."""
    import polars as pl

    store = tmp_path / "store"
    shutil.copytree(BEFORE_ALARMS, store)
    before = len(captured(store))
    ioc = Ioc("ca", tmp_path / "ioc.log", scalars=1, rate=50, waveform_size=10, duration=2)
    url = "ca://" + ",".join(p for p in ioc.pvs if p != "P:name")
    args = ["ingest", url, "--store", str(store), "--capture", "pvs", "-q"]
    with ioc:
        proc = obsflow(ioc, *args, "--stop-when-idle", "3s")
        try:
            wait_for(lambda: commits.head(Store(str(store)), "pvs") > 1, 60, "no first values")
            ioc.begin()
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err

    log = read_log(ioc.log)
    got = captured(store)
    epics = got[got["source"] != "ioc-old"].sort_values(["channel", "time"])
    assert len(got) == before + len(log)
    want = log.sort_values(["pv", "time"])
    assert list(epics["alarm_severity"]) == [SEVERITY[s] for s in want["severity"]]
    assert "MINOR" in set(epics["alarm_severity"])
    folder = store / "captures" / "pvs"
    frame = pl.read_delta(str(folder))
    assert frame.filter(pl.col("source") == "ioc-old")["alarm_severity"].null_count() == before
    theirs = frame.filter(pl.col("source") != "ioc-old").sort("channel", "time_ns")
    assert theirs["alarm_severity"].to_list() == list(epics["alarm_severity"])
    assert theirs["alarm_status"].to_list() == list(epics["alarm_status"])
