"""``obsflow serve`` under load: 200 live SSE clients while 20,000 readings/s are committed.

Everything runs on 127.0.0.1, each part in its own process: a ``nats-server``; ``obsflow
simulate --to nats://`` publishing ``--sources`` (200) sources at ``--rate`` (100 Hz) = 20,000
readings/s in real time as Arrow IPC, for ``--poll`` (20) seconds of the baseline and then
``--seconds`` (60) of the SSE run; ``obsflow ingest`` committing them
once a second into a 100 ms view (≈ 2,000 final view rows/s, plus the open windows'
provisional rows); ``obsflow serve``; and two client processes with ``--clients`` (200) SSE
subscriptions between them. A page subscribes to the series it shows, so most clients follow
one or two sources; ``--full`` (5) of them follow the whole view. One more client, stalled,
follows the whole view and never reads.

Printed, and checked (the run fails when a check fails):

- every client got every commit's event once and in order, and its rows — applied in order,
  a later row of a window replacing the earlier — equal the Explorer's read of the view with
  the client's filter at the end, row for row (exact floats);
- latency commit -> event received by a client, p50 / p99 / max over all clients and commits;
- the server's RSS over the run (sampled) and its peak, and its CPU time;
- when the stalled client was dropped.

The baseline, first in the same run: the same clients polling instead, each asking the API
every second for its series' rows of the last 10 s (what a dashboard without a push channel
does): the requests served, bytes and server CPU time, against the SSE run's.

Run: ``.venv/bin/python benchmarks/bench_serve.py [--seconds 60] [--clients 200]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from obsflow.connectors.datasets import reads  # noqa: E402
from obsflow.connectors.storage import commits  # noqa: E402
from obsflow.connectors.storage.store import Store  # noqa: E402
from tests.brokers import NatsServer  # noqa: E402
from tests.s3servers import free_port  # noqa: E402

BIN = Path(sys.executable).parent
VIEW = "w100ms"
VIEWS = f'[[view]]\nname = "{VIEW}"\nsize = "100ms"\naggregates = ["count", "mean", "max"]\n'
CAPTURE = "load"
SETTLE = 10.0  # seconds after every client connected: the latency "once connected"
KEY = ("source", "channel", "window_start")


def source_id(i: int) -> str:
    return f"sim-{i:03d}"  # obsflow simulate's names


def client_filters(i: int, full: int, sources: int) -> dict[str, list[str]]:
    """Client ``i``'s subscription: the whole view, one source, or two."""
    if i < full:
        return {}
    picked = {i % sources} if i % 2 else {i % sources, (i * 7 + 3) % sources}
    return {"source": [source_id(s) for s in sorted(picked)]}


# -- a client process: many SSE subscriptions ------------------------------------------------


class Follower:
    """One SSE subscription: the events' positions and arrival times, and the view's rows as
    the events build them."""

    def __init__(self, base: str, i: int, filters: dict[str, list[str]]) -> None:
        self.base, self.i, self.filters = base, i, filters
        self.ids: list[int] = []
        self.arrivals: list[float] = []
        self.rows = 0
        self.state: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self.first = -1

    async def follow(self, http: Any, final: asyncio.Future[int]) -> None:
        params = [(k, v) for k, vs in self.filters.items() for v in vs]
        url = f"{self.base}/api/views/{VIEW}/events"
        async with http.stream("GET", url, params=params) as response:
            response.raise_for_status()
            buffer = bytearray()
            async for chunk in response.aiter_bytes():
                buffer += chunk
                start = 0
                while (end := buffer.find(b"\r\n\r\n", start)) >= 0:
                    self.on_event(bytes(buffer[start:end]))
                    start = end + 4
                del buffer[:start]
                if final.done() and self.ids and self.ids[-1] >= final.result():
                    return

    def on_event(self, raw: bytes) -> None:
        now = time.time()
        fields = dict(line.split(b":", 1) for line in raw.split(b"\r\n") if b":" in line[:6])
        if b"data" not in fields:
            return  # a ping (a comment)
        data = json.loads(fields[b"data"])
        if data["reset"]:
            self.state.clear()
        for r in data["rows"]:
            self.state[(r["source"], r["channel"], r["window_start"])] = (
                r["count"],
                r["mean"],
                r["max"],
                r["final"],
            )
        self.rows += len(data["rows"])
        if b"id" in fields:
            n = int(fields[b"id"])
            if data["commit"] is None:  # the snapshot's last event: where the stream starts
                self.first = n
            else:
                self.ids.append(n)
                self.arrivals.append(now)

    def check(self, store: Store) -> dict[str, Any]:
        """This client's rows against the Explorer's read of the view with its filter."""
        table = reads.read_view(store, VIEW, sources=self.filters.get("source"))
        frame = table.to_pandas()
        frame["window_start"] = frame["window_start"].map(
            lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.%f") + f"{t.nanosecond:03d}Z"
        )
        want = {
            (s, c, w): (int(n), None if pd.isna(m) else float(m), float(x), bool(f))
            for s, c, w, n, m, x, f in frame[
                ["source", "channel", "window_start", "count", "mean", "max", "final"]
            ].itertuples(index=False)
        }
        expected_ids = list(range(self.first + 1, self.first + 1 + len(self.ids)))
        return {
            "i": self.i,
            "filters": self.filters,
            "first": self.first,
            "ids_in_order": self.ids == expected_ids,
            "last": self.ids[-1] if self.ids else self.first,
            "rows_received": self.rows,
            "view_rows": len(want),
            "equal": self.state == want,
            "differ": len(set(self.state.items()) ^ set(want.items())),
            "arrivals": dict(zip(map(str, self.ids), self.arrivals, strict=True)),
        }


async def clients_main(base: str, store_url: str, ids: list[int], full: int, sources: int) -> None:
    import httpx

    loop = asyncio.get_running_loop()
    final: asyncio.Future[int] = loop.create_future()
    followers = [Follower(base, i, client_filters(i, full, sources)) for i in ids]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, connect=30), limits=limits) as http:
        tasks = [asyncio.create_task(f.follow(http, final)) for f in followers]
        print("connecting", flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)  # the last commit
        final.set_result(int(line))
        done, pending = await asyncio.wait(tasks, timeout=60)
        for t in pending:
            t.cancel()
        errors = [repr(t.exception()) for t in done if t.exception()]
    store = Store(store_url)
    out = [f.check(store) for f in followers]
    print("RESULT " + json.dumps({"clients": out, "errors": errors, "timed_out": len(pending)}))


# -- the polling baseline's clients ------------------------------------------------------------


async def pollers_main(base: str, ids: list[int], full: int, sources: int, seconds: float) -> None:
    import httpx

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    got = {"bytes": 0, "requests": 0, "rows": 0}

    async def poll(i: int) -> None:
        params = [(k, v) for k, vs in client_filters(i, full, sources).items() for v in vs]
        start = time.time()
        while (now := time.time()) - start < seconds:
            since = pd.Timestamp(now - 10, unit="s", tz="UTC").isoformat()
            r = await http.get(f"{base}/api/views/{VIEW}", params=[*params, ("from", since)])
            r.raise_for_status()
            got["bytes"] += len(r.content)
            got["requests"] += 1
            got["rows"] += len(r.json())
            await asyncio.sleep(max(0.0, 1.0 - (time.time() - now)))

    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(poll(i) for i in ids))
    print("RESULT " + json.dumps(got))


# -- the parent --------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """A process's RSS every 0.25 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.stopped = pid, threading.Event()
        self.samples: list[tuple[float, float]] = []  # (time, MiB)

    def run(self) -> None:
        while not self.stopped.wait(0.25):
            with contextlib.suppress(OSError):
                self.samples.append((time.time(), status_mib(self.pid, "VmRSS")))


def status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"no {field}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def obsflow(
    *args: str, log: Path, exe: Path = BIN / "obsflow", **kw: Any
) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(exe), *args], stderr=log.open("w"), **kw)


def wait_for(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (out := check()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)
    return out


def get_json(url: str) -> Any:
    import httpx

    with contextlib.suppress(httpx.TransportError):
        r = httpx.get(url, timeout=5)
        return r.json() if r.status_code == 200 else None
    return None


def client_procs(mode: str, a: Any, base: str, extra: list[str]) -> list[subprocess.Popen[str]]:
    halves = [range(0, a.clients, 2), range(1, a.clients, 2)]  # full-stream clients split too
    return [
        subprocess.Popen(
            [sys.executable, __file__, mode, base, ",".join(map(str, ids)), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for ids in halves
    ]


def result_of(proc: subprocess.Popen[str], stdin: str | None = None) -> dict[str, Any]:
    out, _ = proc.communicate(stdin, timeout=300)
    lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"a client process failed ({proc.returncode}): {out[-2000:]}")
    return dict(json.loads(lines[-1][len("RESULT ") :]))


def stalled_client(port: int) -> socket.socket:
    """A full-view subscription whose reader never reads (a small receive buffer: the server's
    sends block soon)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET /api/views/{VIEW}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return s


def subscribers(base: str) -> int:
    status = get_json(f"{base}/api/status") or {}
    return int(status.get("feeds", {}).get(VIEW, {}).get("subscribers", -1))


def run(a: Any, work: Path, trees: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """One live ingest served by each tree's server at once (its own clients each)."""
    nats = NatsServer(work / "js").start()
    store = work / "store"
    (work / "views.toml").write_text(VIEWS)
    procs: list[subprocess.Popen[Any]] = []
    try:
        topic = "load.sim"
        sim = obsflow(
            *("simulate", "--to", nats.url, "--topic", topic, "--format", "arrow"),
            *("--sources", str(a.sources), "--channels", "t", "--rate", str(a.rate)),
            *("--duration", f"{a.poll + a.seconds}s"),
            log=work / "simulate.log",
        )
        procs.append(sim)
        wait_for(lambda: "publishing" in (work / "simulate.log").read_text(), "the simulator")
        ingest = obsflow(
            *("ingest", nats.url, "--topic", topic, "--consumer", "load", "--format", "arrow"),
            *("--store", str(store), "--capture", CAPTURE, "--views", str(work / "views.toml")),
            *("--flush-interval", "1s", "--stop-when-idle", "6s", "-q"),
            log=work / "ingest.log",
        )
        procs.append(ingest)
        st = Store(str(store))
        wait_for(lambda: commits.head(st, CAPTURE) >= 1, "the first commit")
        servers: dict[str, Any] = {}
        for name, exe in trees.items():  # (each tree's server, both on the same store)
            sport = free_port()
            sbase = f"http://127.0.0.1:{sport}"
            proc = obsflow(
                *("serve", "--store", str(store), "--port", str(sport)),
                log=work / f"serve-{name}.log",
                exe=exe,
            )
            procs.append(proc)
            servers[name] = {"proc": proc, "port": sport, "base": sbase}
        for srv in servers.values():
            wait_for(lambda srv=srv: get_json(f"{srv['base']}/api/views"), "the server")
        # The baseline first: the clients polling, while the readings flow.
        for srv in servers.values():
            srv["cpu0"] = cpu_seconds(srv["proc"].pid)
            extra = [str(a.full), str(a.sources), str(a.poll)]
            srv["pollers"] = client_procs("--poll", a, srv["base"], extra)
        for srv in servers.values():
            srv["polled"] = [result_of(p) for p in srv["pollers"]]
            srv["poll_cpu"] = cpu_seconds(srv["proc"].pid) - srv["cpu0"]
        # Then the same clients following the view's events, and one stalled client.
        for srv in servers.values():
            srv["sampler"] = Sampler(srv["proc"].pid)
            srv["sampler"].start()
            srv["cpu0"] = cpu_seconds(srv["proc"].pid)
            extra = [str(store), str(a.full), str(a.sources)]
            srv["clients"] = client_procs("--clients", a, srv["base"], extra)
        for srv in servers.values():
            for c in srv["clients"]:
                assert c.stdout is not None
                c.stdout.readline()  # "connecting"
            srv["stalled"] = stalled_client(srv["port"])
        for srv in servers.values():
            wait_for(
                lambda srv=srv: subscribers(srv["base"]) == a.clients + 1,
                "every subscription",
                120,
            )
        connected = time.time()
        for srv in servers.values():
            srv["dropped_at"] = None
        while sim.poll() is None:
            for srv in servers.values():
                if srv["dropped_at"] is None and subscribers(srv["base"]) == a.clients:
                    srv["dropped_at"] = time.time()
            time.sleep(0.2)
        if sim.returncode:
            raise SystemExit(f"simulate failed: {(work / 'simulate.log').read_text()}")
        if ingest.wait(120):
            raise SystemExit(f"ingest failed: {(work / 'ingest.log').read_text()}")
        log = commits.read_log(st, CAPTURE)
        final = log[-1].n
        for srv in servers.values():
            srv["results"] = [result_of(c, f"{final}\n") for c in srv["clients"]]
            srv["sampler"].stopped.set()
            srv["cpu"] = cpu_seconds(srv["proc"].pid) - srv["cpu0"]
            srv["peak"] = status_mib(srv["proc"].pid, "VmHWM")
            srv["stalled"].close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(20)
            p.kill()
        nats.stop()
    created = {e.n: pd.Timestamp(e.created).timestamp() for e in log}
    shared = {
        "readings": reads.read_capture(st, CAPTURE, columns=["source"]).num_rows,
        "commits": len(log),
        "view_rows": reads.read_view(st, VIEW, columns=["source"]).num_rows,
    }
    return {name: {**shared, **measured(srv, created, connected)} for name, srv in servers.items()}


def measured(srv: dict[str, Any], created: dict[int, float], connected: float) -> dict[str, Any]:
    """One server's numbers, from its clients' arrivals and its samples."""
    results = srv["results"]
    rows = [c for r in results for c in r["clients"]]
    delays = np.array(
        [t - created[int(n)] for c in rows for n, t in c["arrivals"].items()], dtype=float
    )
    settled = connected + SETTLE  # past the connect storm (200 snapshots at once)
    steady = np.array(
        [
            t - created[int(n)]
            for c in rows
            for n, t in c["arrivals"].items()
            if created[int(n)] > settled
        ],
        dtype=float,
    )
    final = max(created)
    return {
        "clients": rows,
        "errors": [e for r in results for e in r["errors"]],
        "timed_out": sum(r["timed_out"] for r in results),
        "delays": delays,
        "steady": steady,
        "rss": srv["sampler"].samples,
        "peak_rss": srv["peak"],
        "cpu": srv["cpu"],
        "sse_span": created[final] - connected,
        "dropped_after": None if srv["dropped_at"] is None else srv["dropped_at"] - connected,
        "poll": srv["polled"],
        "poll_cpu": srv["poll_cpu"],
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--clients":
        base, ids, store, full, sources = sys.argv[2:7]
        asyncio.run(
            clients_main(base, store, [int(i) for i in ids.split(",")], int(full), int(sources))
        )
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--poll":
        base, ids, full, sources, seconds = sys.argv[2:7]
        asyncio.run(
            pollers_main(
                base, [int(i) for i in ids.split(",")], int(full), int(sources), float(seconds)
            )
        )
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--full", type=int, default=5, help="clients that follow the whole view")
    p.add_argument("--sources", type=int, default=200)
    p.add_argument("--rate", type=float, default=100.0, help="Hz per source")
    p.add_argument("--poll", type=float, default=20.0, help="seconds of the polling baseline")
    p.add_argument(
        "--before",
        metavar="DIR",
        help="another checkout (its own .venv): its server runs too, on the same live ingest",
    )
    a = p.parse_args()
    trees = {"after": BIN / "obsflow"}
    if a.before:
        exe = Path(a.before) / ".venv" / "bin" / "obsflow"
        if not exe.exists():
            raise SystemExit(f"--before: no {exe} (make -s .venv/.installed there)")
        trees = {"before": exe, **trees}
    print(
        f"ran: {' '.join(sys.argv[1:]) or '(defaults)'}; servers: "
        + ", ".join(f"{n} {e}" for n, e in trees.items())
    )
    work = Path(tempfile.mkdtemp(prefix="obsflow-bench-serve-"))
    try:
        r = run(a, work, trees)
    except BaseException:
        print(f"(logs kept in {work})")
        raise
    shutil.rmtree(work, ignore_errors=True)
    failed = False
    for name, result in r.items():
        print(f"\n== {name} ==")
        try:
            report(a, result)
        except SystemExit:
            failed = True
    if failed:
        raise SystemExit(1)


def report(a: Any, r: dict[str, Any]) -> None:
    clients = r["clients"]
    bad = [c for c in clients if not (c["equal"] and c["ids_in_order"])]
    d, st = r["delays"], r["steady"]
    rss = np.array([m for _, m in r["rss"]])
    third = max(1, len(rss) // 3)
    print(
        f"\nobsflow serve: {a.clients} SSE clients ({a.full} follow the whole view, the others "
        f"one or two of {a.sources} sources) + 1 stalled; {os.cpu_count()} cores\n"
        f"  committed: {r['readings']:,} readings in {r['commits']} commits over "
        f"{a.poll + a.seconds:g} s ({r['readings'] / (a.poll + a.seconds):,.0f} readings/s); "
        f"view {VIEW}: "
        f"{r['view_rows']:,} rows\n"
        f"  clients with every commit once, in order, and rows equal to the view: "
        f"{len(clients) - len(bad)} of {len(clients)}"
        f" (errors {len(r['errors'])}, timed out {r['timed_out']})\n"
        f"  rows received: {sum(c['rows_received'] for c in clients):,} in all; a whole-view "
        f"client {max(c['rows_received'] for c in clients):,}\n"
        f"  commit -> event at a client: p50 {np.percentile(d, 50) * 1e3:,.0f} ms, "
        f"p99 {np.percentile(d, 99) * 1e3:,.0f} ms, max {d.max() * 1e3:,.0f} ms "
        f"({d.size:,} events)\n"
        f"    of commits {SETTLE:g} s or more after the clients connected: p50 "
        f"{np.percentile(st, 50) * 1e3:,.0f} ms, p99 {np.percentile(st, 99) * 1e3:,.0f} ms, "
        f"max {st.max() * 1e3:,.0f} ms\n"
        f"  server RSS: first third of the run max {rss[:third].max():,.0f} MiB, last third "
        f"max {rss[-third:].max():,.0f} MiB, peak {r['peak_rss']:,.0f} MiB\n"
        f"  server CPU: {r['cpu']:,.1f} s over {r['sse_span']:,.0f} s of streaming\n"
        + (
            f"  stalled client dropped {r['dropped_after']:.1f} s after the clients connected"
            if r["dropped_after"] is not None
            else "  the stalled client was never dropped"
        )
    )
    polled = r["poll"]
    print(
        f"baseline, the same {a.clients} clients polling the API every second for their "
        f"series' last 10 s, for {a.poll:.0f} s:\n"
        f"  {sum(x['requests'] for x in polled):,} requests, "
        f"{sum(x['bytes'] for x in polled) / 2**20:,.1f} MiB, server CPU {r['poll_cpu']:,.1f} s"
    )
    for c in bad[:5]:
        print(
            f"  MISMATCH client {c['i']} {c['filters']}: ids in order {c['ids_in_order']}, "
            f"{c['differ']} rows differ ({c['view_rows']} in the view)"
        )
    if bad or r["errors"] or r["timed_out"] or r["dropped_after"] is None:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
