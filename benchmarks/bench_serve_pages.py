"""``obsflow serve``'s row endpoints on a big capture: bounded responses, paging, server memory.

A capture of ``--readings`` (7.5 M) simulated readings (8 sources, 50 Hz; built once with
``obsflow ingest`` into ``benchmarks/out/``, reused after) is served by ``obsflow serve`` on
127.0.0.1 in its own process. Printed:

- ``GET /api/captures/bench?limit=1``: latency (first, median, max of ``--repeat``);
- ``GET /api/captures/bench`` (no limit): rows returned and whether it links a next page;
- ``--clients`` (10) clients at once, each following the ``rel="next"`` links through the whole
  capture (``--format``, pages of the default limit): pages/s, rows/s over all clients, and
  whether each client got every row (the capture's row count);
- the server's RSS, sampled from ``/proc/PID/status`` every 50 ms, and its peak (``VmHWM``).

Run: ``.venv/bin/python benchmarks/bench_serve_pages.py [--readings 7500000] [--clients 10]
[--format json|csv|arrow]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import OUT, write_readings  # noqa: E402
from tests.s3servers import free_port  # noqa: E402

BIN = Path(sys.executable).parent
CAPTURE = "bench"


def build(readings: int) -> tuple[Path, int]:
    """The cached store with capture ``bench`` of ``readings`` readings, and its row count."""
    store = OUT / f"store-pages-{readings}"
    if not (store / "captures" / CAPTURE).exists():
        source = write_readings(OUT / f"sim-{readings}-s8-r50.parquet", readings)
        shutil.rmtree(store, ignore_errors=True)
        t = time.monotonic()
        subprocess.run(
            [BIN / "obsflow", "ingest", str(source), "--store", str(store), "--capture", CAPTURE],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(f"built {store} in {time.monotonic() - t:.0f} s")
    from obsflow.connectors.datasets.capture import capture_snapshot
    from obsflow.connectors.storage.store import Store

    snap = capture_snapshot(Store(str(store)), CAPTURE)
    assert snap is not None
    return store, sum(f.rows for f in snap.files)


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """The server's RSS every 50 ms (its maximum; ``VmHWM`` is read at the end too)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, rss_mib(self.pid))


def rows_in(response: httpx.Response, fmt: str) -> int:
    if fmt == "arrow":
        return int(pa.ipc.open_stream(response.content).read_all().num_rows)
    if fmt == "csv":
        return response.content.count(b"\n") - 1
    return response.content.count(b'{"source":')


def walk(base: str, fmt: str, out: list[tuple[int, int]]) -> None:
    """One client: every page of the capture, in turn; (pages, rows) appended to ``out``."""
    pages = rows = 0
    url: str | None = f"{base}/api/captures/{CAPTURE}?format={fmt}"
    with httpx.Client(timeout=120) as http:
        while url is not None:
            r = http.get(url)
            r.raise_for_status()
            pages, rows = pages + 1, rows + rows_in(r, fmt)
            nxt = r.links.get("next")
            url = None if nxt is None else base + nxt["url"]
    out.append((pages, rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readings", type=int, default=7_500_000)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--format", default="json", choices=["json", "csv", "arrow"])
    p.add_argument("--repeat", type=int, default=20, help="limit=1 requests timed")
    a = p.parse_args()
    store, total = build(a.readings)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "obsflow"), "serve", "--store", str(store), "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(300):
            try:
                httpx.get(f"{base}/api/captures", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        sampler = Sampler(server.pid)
        sampler.start()
        idle = rss_mib(server.pid)
        times = []
        for _ in range(a.repeat):
            t = time.perf_counter()
            r = httpx.get(f"{base}/api/captures/{CAPTURE}", params={"limit": 1}, timeout=60)
            times.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
            assert len(r.json()) == 1
        r = httpx.get(f"{base}/api/captures/{CAPTURE}", timeout=60)
        no_limit = (len(r.json()), "next" in r.links, len(r.content))
        got: list[tuple[int, int]] = []
        clients = [
            threading.Thread(target=walk, args=(base, a.format, got)) for _ in range(a.clients)
        ]
        t = time.monotonic()
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        elapsed = time.monotonic() - t
        sampler.done.set()
        sampler.join()
        peak = max(sampler.peak, rss_mib(server.pid, "VmHWM"))
    finally:
        server.terminate()
        server.wait(10)
    pages, rows = sum(g[0] for g in got), sum(g[1] for g in got)
    print(f"capture: {total:,} readings ({store})")
    print(
        f"limit=1: first {times[0] * 1000:.0f} ms, median {statistics.median(times) * 1000:.0f}"
        f" ms, max {max(times) * 1000:.0f} ms over {a.repeat}"
    )
    print(
        f"no limit: {no_limit[0]:,} rows ({no_limit[2] / 2**20:.1f} MiB), next link: {no_limit[1]}"
    )
    print(
        f"{a.clients} clients paging ({a.format}, default limit): {pages:,} pages, {rows:,} rows"
        f" in {elapsed:.1f} s = {pages / elapsed:.1f} pages/s, {rows / elapsed:,.0f} rows/s;"
        f" every client got all {total:,} rows: {all(g[1] == total for g in got)}"
        f" ({len(got)} of {a.clients} finished)"
    )
    print(f"server RSS: {idle:.0f} MiB idle, peak {peak:.0f} MiB (VmHWM / 50 ms samples)")


if __name__ == "__main__":
    main()
