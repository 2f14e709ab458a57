"""Real EPICS servers on 127.0.0.1 for tests: a Channel Access IOC (caproto's asyncio server)
and a PV Access server (p4p), each a child process on free ports, that post updates and log
every one they posted (the tests' oracle).

PVs (prefix ``P``): ``P:s0`` .. ``P:s{n-1}`` scalars (units ``mm``, display -10..10) posted
at ``--rate`` Hz, ``P:wf`` a float64 waveform (NTNDArray over PVA) of ``--waveform-size``
posted at ``--waveform-rate`` Hz, ``P:mode`` an enum posted at 1 Hz, ``P:name`` a string
never posted again. Every update's timestamp is the wall time of its tick, to the ns; a
waveform is ``waveform(size, ns)``, so the log holds its time, not its 800 kB. Values carry
an alarm now and then (every 7th: MINOR/HIGH, every 50th: MAJOR/HIHI).

The server posts only its initial values until ``--go FILE`` exists (the test lets it start
once a session monitors every PV), then posts for ``--duration`` s and stays up. SIGTERM
ends it between ticks, so its log never lacks an update it posted. The log is TSV:
``pv, ns, value, severity`` (a waveform's value: its tick number).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.s3servers import HOST, _ChildServer, free_port

EPICS_EPOCH = 631_152_000
HERE = Path(__file__).resolve()


def waveform(size: int, ns: int) -> np.ndarray:
    """The waveform posted at ``ns``."""
    return np.random.default_rng(ns).standard_normal(size)


def alarm(k: int) -> tuple[int, str]:
    """(severity, status) of the ``k``-th update of a PV."""
    if k % 50 == 0:
        return 2, "HIHI"
    # (never MINOR next to MAJOR: caproto's server drops a MINOR <-> MAJOR change of a
    # ChannelDouble's alarm, so such an update goes out with NO_ALARM)
    if k % 7 == 0 and k % 50 not in (49, 1):
        return 1, "HIGH"
    return 0, "NO_ALARM"


class Ioc(_ChildServer):
    """A test IOC (``protocol``: ``ca`` or ``pva``); ``client_env`` points a client at it.
    Its ports are kept across ``stop()``/``start()`` (an IOC restart)."""

    _name = "epics-ioc"

    def __init__(
        self,
        protocol: str,
        log: Path,
        *,
        scalars: int = 4,
        rate: float = 100.0,
        waveform_size: int = 100_000,
        waveform_rate: float = 2.0,
        duration: float = 10.0,
    ) -> None:
        super().__init__(startup_timeout=30.0, stop_timeout=10.0)
        self.protocol, self.log = protocol, log
        self.options = [
            f"--scalars={scalars}",
            f"--rate={rate}",
            f"--waveform-size={waveform_size}",
            f"--waveform-rate={waveform_rate}",
            f"--duration={duration}",
        ]
        self.go = log.with_suffix(".go")
        self.ports = (free_port(), free_port())
        self.scalars, self.waveform_size = scalars, waveform_size

    @property
    def pvs(self) -> list[str]:
        return [*(f"P:s{i}" for i in range(self.scalars)), "P:wf", "P:mode", "P:name"]

    def client_env(self) -> dict[str, str]:
        server, broadcast = (str(p) for p in self.ports)
        if self.protocol == "ca":
            return {
                "EPICS_CA_ADDR_LIST": HOST,
                "EPICS_CA_AUTO_ADDR_LIST": "NO",
                "EPICS_CA_SERVER_PORT": server,
                "EPICS_CA_REPEATER_PORT": broadcast,
            }
        return {
            "EPICS_PVA_ADDR_LIST": HOST,
            "EPICS_PVA_AUTO_ADDR_LIST": "NO",
            "EPICS_PVA_SERVER_PORT": server,
            "EPICS_PVA_BROADCAST_PORT": broadcast,
        }

    def start(self) -> Ioc:
        if self.running:
            return self
        import tempfile

        workdir = Path(tempfile.mkdtemp(prefix="obsflow-ioc-"))
        argv = [sys.executable, str(HERE), self.protocol, f"--log={self.log}", f"--go={self.go}"]
        env = {**os.environ, **self.client_env(), "PYTHONPATH": str(HERE.parent.parent)}
        self._launch([*argv, *self.options], env, workdir, self._ready)
        return self

    def _ready(self) -> bool:
        import socket

        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((HOST, self.ports[0])) != 0:
                return False
        return self.log.exists() and self.log.stat().st_size > 0  # initial values posted

    def begin(self) -> None:
        """Let the server post its updates."""
        self.go.touch()

    def done(self) -> bool:
        return self.log.with_suffix(".done").exists()


def read_log(path: Path) -> Any:
    """An IOC log as a DataFrame: pv, time (ns), value, severity."""
    import pandas as pd

    return pd.read_csv(
        path, sep="\t", names=["pv", "time", "value", "severity"], dtype={"time": "int64"}
    )


# -- the child process -----------------------------------------------------------------------


class Poster:
    """Ticks, alarms and the log, whatever the protocol."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.log = open(args.log, "a")  # noqa: SIM115 (a restarted IOC appends; open while it runs)
        self.k: dict[str, int] = {}
        self.stopping = False
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))

    def next(self, pv: str) -> int:
        self.k[pv] = self.k.get(pv, 0) + 1
        return self.k[pv]

    def wrote(self, lines: list[str]) -> None:
        self.log.write("".join(lines))
        self.log.flush()

    def schedule(self) -> Any:
        """Yield (ns, scalars due, waveform due, enum due) ticks until the duration is over."""
        a = self.args
        go = Path(a.go)
        while not go.exists() and not self.stopping:
            time.sleep(0.02)
        start = time.monotonic()
        tick, wf_every = 1.0 / a.rate, max(1, round(a.rate / a.waveform_rate))
        enum_every = max(1, round(a.rate))
        n = 0
        while not self.stopping and time.monotonic() - start < a.duration:
            n += 1
            delay = start + n * tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield time.time_ns(), n % wf_every == 0, n % enum_every == 0
        Path(a.log).with_suffix(".done").touch()
        while not self.stopping:
            time.sleep(0.05)


def run_ca(args: argparse.Namespace) -> None:
    import asyncio

    from caproto import AlarmStatus, ChannelDouble, ChannelEnum, ChannelString
    from caproto.asyncio.server import Context

    poster = Poster(args)
    names = [f"P:s{i}" for i in range(args.scalars)]
    now = time.time_ns()
    stamp = ((now // 10**9) - EPICS_EPOCH, now % 10**9)
    db: dict[str, Any] = {
        n: ChannelDouble(
            value=0.0, units="mm", lower_disp_limit=-10.0, upper_disp_limit=10.0, timestamp=stamp
        )
        for n in names
    }
    db["P:wf"] = ChannelDouble(
        value=waveform(args.waveform_size, now), max_length=args.waveform_size, timestamp=stamp
    )
    db["P:mode"] = ChannelEnum(value="Idle", enum_strings=["Idle", "Run"], timestamp=stamp)
    db["P:name"] = ChannelString(value="test ioc", timestamp=stamp)
    lines = [f"{n}\t{now}\t0.0\t0\n" for n in names] + [
        f"P:wf\t{now}\t0\t0\n",
        f"P:mode\t{now}\t0\t0\n",
    ]

    async def post() -> None:
        await asyncio.sleep(0)
        poster.wrote(lines)
        ticks = poster.schedule()
        while True:
            step = await asyncio.to_thread(next, ticks, None)
            if step is None:
                return
            ns, wf, en = step
            ts = ((ns // 10**9) - EPICS_EPOCH, ns % 10**9)
            out = []
            for j, n in enumerate(names):
                k = poster.next(n)
                sev, status = alarm(k)
                value = k + j / 100
                await db[n].write(value, timestamp=ts, severity=sev, status=AlarmStatus[status])
                out.append(f"{n}\t{ns}\t{value!r}\t{sev}\n")
            if wf:
                k = poster.next("P:wf")
                await db["P:wf"].write(waveform(args.waveform_size, ns), timestamp=ts)
                out.append(f"P:wf\t{ns}\t{k}\t0\n")
            if en:
                k = poster.next("P:mode")
                await db["P:mode"].write(["Idle", "Run"][k % 2], timestamp=ts)
                out.append(f"P:mode\t{ns}\t{k % 2}\t0\n")
            poster.wrote(out)

    async def main() -> None:
        ctx = Context(db, interfaces=[HOST])
        server = asyncio.create_task(ctx.run())
        await post()
        server.cancel()

    asyncio.run(main())


def run_pva(args: argparse.Namespace) -> None:
    from p4p.nt import NTEnum, NTNDArray, NTScalar
    from p4p.server import Server
    from p4p.server.thread import SharedPV

    poster = Poster(args)
    names = [f"P:s{i}" for i in range(args.scalars)]
    now = time.time_ns()
    ts = (now // 10**9, now % 10**9)
    display = {"units": "mm", "limitLow": -10.0, "limitHigh": 10.0}
    pvs: dict[str, Any] = {
        n: SharedPV(nt=NTScalar("d", display=True), initial={"value": 0.0, "display": display})
        for n in names
    }
    pvs["P:wf"] = SharedPV(nt=NTNDArray(), initial=waveform(args.waveform_size, now))
    pvs["P:mode"] = SharedPV(nt=NTEnum(), initial={"index": 0, "choices": ["Idle", "Run"]})
    pvs["P:name"] = SharedPV(nt=NTScalar("s"), initial="test ioc")
    for n, pv in pvs.items():  # the initial values again, with the logged timestamp
        if n.startswith("P:s"):
            pv.post(0.0, timestamp=ts)
    pvs["P:wf"].post(waveform(args.waveform_size, now), timestamp=ts)
    pvs["P:mode"].post({"index": 0, "choices": ["Idle", "Run"]}, timestamp=ts)
    pvs["P:name"].post("test ioc", timestamp=ts)
    conf = {
        "EPICS_PVAS_INTF_ADDR_LIST": HOST,
        "EPICS_PVAS_SERVER_PORT": os.environ["EPICS_PVA_SERVER_PORT"],
        "EPICS_PVAS_BROADCAST_PORT": os.environ["EPICS_PVA_BROADCAST_PORT"],
    }
    with Server(providers=[pvs], conf=conf, useenv=False):
        poster.wrote(
            [f"{n}\t{now}\t0.0\t0\n" for n in names]
            + [f"P:wf\t{now}\t0\t0\n", f"P:mode\t{now}\t0\t0\n"]
        )
        for ns, wf, en in poster.schedule():
            t = (ns // 10**9, ns % 10**9)
            out = []
            for j, n in enumerate(names):
                k = poster.next(n)
                sev, status = alarm(k)
                value = k + j / 100
                pvs[n].post(value, timestamp=t, severity=sev, message=status if sev else "")
                out.append(f"{n}\t{ns}\t{value!r}\t{sev}\n")
            if wf:
                k = poster.next("P:wf")
                pvs["P:wf"].post(waveform(args.waveform_size, ns), timestamp=t)
                out.append(f"P:wf\t{ns}\t{k}\t0\n")
            if en:
                k = poster.next("P:mode")
                pvs["P:mode"].post({"index": k % 2, "choices": ["Idle", "Run"]}, timestamp=t)
                out.append(f"P:mode\t{ns}\t{k % 2}\t0\n")
            poster.wrote(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("protocol", choices=["ca", "pva"])
    parser.add_argument("--log", required=True)
    parser.add_argument("--go", required=True)
    parser.add_argument("--scalars", type=int, default=4)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--waveform-size", type=int, default=100_000)
    parser.add_argument("--waveform-rate", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    (run_ca if args.protocol == "ca" else run_pva)(args)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent.parent))
    main()
