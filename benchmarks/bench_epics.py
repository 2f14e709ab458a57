"""EPICS live capture: PV updates per second one session captures, and publish -> commit
latency, against a test IOC (``tests.epics_iocs``: caproto CA or p4p PVA) on 127.0.0.1.

    .venv/bin/python benchmarks/bench_epics.py --protocol ca --scalars 20 --rate 100 --duration 20

The IOC logs every update it posted; the rate is captured readings over the posting span,
the latency per reading is its commit's time (the capture's Delta commit) minus its IOC
timestamp (the same host clock). Both sides share the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from obsflow.connectors.datasets import reads  # noqa: E402
from obsflow.connectors.storage import commits  # noqa: E402
from obsflow.connectors.storage.store import Store  # noqa: E402
from tests.epics_iocs import Ioc, read_log  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--protocol", choices=["ca", "pva"], default="ca")
    ap.add_argument("--scalars", type=int, default=20)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--waveform-size", type=int, default=100_000)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--flush-interval", default="1s")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-epics-"))
    store = tmp / "store"
    ioc = Ioc(
        a.protocol,
        tmp / "ioc.log",
        scalars=a.scalars,
        rate=a.rate,
        waveform_size=a.waveform_size,
        duration=a.duration,
    )
    with ioc:
        url = f"{a.protocol}://" + ",".join(ioc.pvs)
        argv = [str(Path(sys.executable).parent / "obsflow"), "ingest", url, "--store", str(store)]
        argv += ["--capture", "pvs", "--stop-when-idle", "3s", "-q"]
        argv += ["--flush-interval", a.flush_interval]
        proc = subprocess.Popen(argv, env={**os.environ, **ioc.client_env()})
        while not commits.head(Store(str(store)), "pvs"):
            time.sleep(0.1)
        ioc.begin()
        proc.wait()
    log = read_log(ioc.log)
    st = Store(str(store))
    got = reads.read_capture(st, "pvs", columns=["channel", "time", "commit"])
    frame = got.to_pandas().assign(time=got.column("time").cast("int64").to_numpy())
    made = {c.n: pd.Timestamp(c.created).value for c in commits.read_log(st, "pvs")}
    frame = frame[frame["commit"] > 1]  # (commit 1: the initial values, before the start)
    posted = log[log["time"] > log["time"].min()]
    span = (posted["time"].max() - posted["time"].min()) / 1e9
    latency = (frame["commit"].map(made) - frame["time"]) / 1e6
    result = {
        "protocol": a.protocol,
        "pvs": len(ioc.pvs),
        "posted": len(posted),
        "captured": len(frame),
        "missing": len(posted) - len(frame),
        "updates_per_s": round(len(frame) / span),
        "latency_ms_p50": round(float(np.percentile(latency, 50))),
        "latency_ms_p99": round(float(np.percentile(latency, 99))),
        "latency_ms_max": round(float(latency.max())),
        "flush_interval": a.flush_interval,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
