"""Payload offload throughput to S3: obsflow ``PayloadStore`` vs a plain s3fs ``pipe_file``.

The same detector frames (64 x 4 MiB uint16 Poisson frames by default, made once with
``obsflow.connectors.sources.simulator.PayloadSpec("frame:1024x2048:uint16").make`` and cached under
``benchmarks/out/``) go to the same S3 endpoint: a moto server started on 127.0.0.1, and with
``--seaweed`` also SeaweedFS (``weed mini``). Each contender runs in its own child process and
reads the frames one at a time from the cached ``.npy`` file (plain reads, no mmap), so peak
RSS shows what the upload itself holds, not the whole data set:

- s3fs sequential: ``fs.pipe_file(path, frame.tobytes())`` for each frame, one after another.
- s3fs N threads: the same calls from a pool of ``max_in_flight`` threads (the concurrency
  obsflow uses), frames handed out as slots free up.
- obsflow: ``PayloadStore(Store("s3://bucket/prefix")).offload_many(frames)``: sha256,
  existence check (a 24-byte ranged GET), codec trial on a 192 KiB sample, zstd of the byte
  planes when it saves >= 20 %, conditional create-only PUT; ``max_in_flight`` at a time.
- obsflow, zstd off: the same with ``min_saving=0.99`` (the trial runs, nothing is compressed):
  a diagnostic of what the obsflow path costs besides compression.
- obsflow ingest: ``obsflow.flows.pipeline.ingest`` end to end of a Parquet file holding the same
frames as
  binary payloads (read, validate, offload, capture written to S3), no views (``--no-ingest``
  skips it).

MB/s is 10^6 bytes per second of RAW frame bytes for every contender; obsflow's "stored" MB/s
is what it actually uploaded (compressed). Goal (issue): obsflow >= 0.7x the plain s3fs
baseline with the same concurrency (also shown: vs sequential), with bounded memory: here,
obsflow's peak RSS above its start at most 2x that of the s3fs thread pool (which holds only
what is in flight). Also printed: client and server CPU seconds of each run.

Run: ``.venv/bin/python benchmarks/bench_payloads.py [--frames N] [--payload SPEC]
[--max-in-flight N] [--repeat N] [--seaweed] [--no-ingest]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, emit, peak_rss_mb, rss_mb, run_child

sys.path.insert(0, str(ROOT / "tests"))  # the S3 test servers: a plain module, no pytest
import s3servers

from obsflow.connectors.sources.simulator import PayloadSpec

GOAL = 0.7
MEMORY_FACTOR = 2.0  # "bounded": obsflow grows at most this times the s3fs thread pool
BUCKET = "obsflow-bench"
KEY, SECRET = "benchkey", "benchsecret0123"
MB = 1e6


# -- the frames -----------------------------------------------------------------------------


def frames_path(n: int, payload: str, seed: int) -> Path:
    spec = PayloadSpec.parse(payload)
    shape = "x".join(map(str, spec.shape))
    return OUT / f"frames-{n}-{spec.name}-{shape}-{spec.dtype}-seed{seed}.npy"


def write_frames(path: Path, n: int, payload: str, seed: int) -> Path:
    """``n`` distinct frames stacked in one ``.npy`` file (reused if present)."""
    spec = PayloadSpec.parse(payload)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=spec.dtype, shape=(n, *spec.shape))
    for k in range(n):
        out[k] = spec.make(np.random.default_rng([seed, k]), k)
    out.flush()
    del out
    tmp.replace(path)
    return path


def iter_frames(path: str) -> Iterator[np.ndarray]:
    """The frames of a stacked ``.npy`` file, one plain read each (never all in memory)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(f)
        assert not fortran
        count = math.prod(shape[1:])
        for _ in range(shape[0]):
            yield np.fromfile(f, dtype=dtype, count=count).reshape(shape[1:])


def frames_info(path: Path) -> tuple[int, int]:
    """(number of frames, bytes per frame)."""
    arr = np.load(path, mmap_mode="r")
    return arr.shape[0], arr[0].nbytes


def write_frames_parquet(npy: Path, payload: str) -> Path:
    """The frames as readings of one detector: binary payload + dtype + shape (ingest input)."""
    path = npy.with_suffix(".parquet")
    if path.exists():
        return path
    spec = PayloadSpec.parse(payload)
    tmp = path.with_suffix(".tmp")
    start = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z in ns; one frame a second
    with pq.ParquetWriter(tmp, _frame_schema()) as writer:
        for k, frame in enumerate(iter_frames(str(npy))):
            row = {
                "source": ["det-0"],
                "time": pa.array([start + k * 10**9], pa.timestamp("ns", "UTC")),
                "channel": [spec.name],
                "value": pa.nulls(1, pa.float64()),
                "payload": pa.array([frame.tobytes()], pa.large_binary()),
                "payload_dtype": [spec.dtype],
                "payload_shape": [list(spec.shape)],
            }
            writer.write_table(pa.table(row, schema=_frame_schema()))  # a row group per frame
    tmp.replace(path)
    return path


def _frame_schema() -> pa.Schema:
    return pa.schema(
        [
            ("source", pa.string()),
            ("time", pa.timestamp("ns", "UTC")),
            ("channel", pa.string()),
            ("value", pa.float64()),
            ("payload", pa.large_binary()),
            ("payload_dtype", pa.string()),
            ("payload_shape", pa.list_(pa.int64())),
        ]
    )


# -- children ---------------------------------------------------------------------------------


def _bounded(fn: Callable[[int, np.ndarray], None], items: Iterator[np.ndarray], n: int) -> None:
    """``fn(k, item)`` for each item on ``n`` threads, taking items only as slots free up."""
    pending: set[Future[None]] = set()
    with ThreadPoolExecutor(n) as pool:
        for k, item in enumerate(items):
            while len(pending) >= n:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    fut.result()
            pending.add(pool.submit(fn, k, item))
        for fut in wait(pending).done:
            fut.result()


def _timed(job: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    base = rss_mb()
    cpu, started = time.process_time(), time.perf_counter()
    out = job()
    out["seconds"] = time.perf_counter() - started
    out["client_cpu_s"] = time.process_time() - cpu
    out["peak_rss_mb"] = peak_rss_mb()
    out["rss_before_mb"] = base
    return out


def child_s3fs(frames: str, prefix: str, threads: int) -> dict[str, Any]:
    """Plain s3fs: ``pipe_file`` of each frame's bytes, sequentially or from a thread pool."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key=KEY,
        secret=SECRET,
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        skip_instance_cache=True,
    )
    fs.ls(BUCKET)  # connect before the clock starts (obsflow's child does the same)
    sizes: list[int] = []

    def put(k: int, frame: np.ndarray) -> None:
        data = frame.tobytes()
        fs.pipe_file(f"{BUCKET}/{prefix}/{k:06d}", data)
        sizes.append(len(data))

    def job() -> dict[str, Any]:
        if threads <= 1:
            for k, frame in enumerate(iter_frames(frames)):
                put(k, frame)
        else:
            _bounded(put, iter_frames(frames), threads)
        return {"raw_bytes": sum(sizes), "stored_bytes": sum(sizes), "objects": len(sizes)}

    out = _timed(job)
    out["found_objects"] = len(fs.ls(f"{BUCKET}/{prefix}", refresh=True))
    return out


def child_obsflow(frames: str, prefix: str, threads: int, min_saving: float) -> dict[str, Any]:
    """``PayloadStore.offload_many`` of the frames; then (untimed) read two of them back."""
    from obsflow.connectors.payloads.offload import PayloadStore
    from obsflow.connectors.storage.store import Store

    ps = PayloadStore(
        Store(f"s3://{BUCKET}/{prefix}"), max_in_flight=threads, min_saving=min_saving
    )
    ps.store.fs.ls(BUCKET)  # connect before the clock starts
    result: list[Any] = []

    def job() -> dict[str, Any]:
        result.extend(ps.offload_many(iter_frames(frames)))
        refs = [p.ref for p in result]
        return {
            "raw_bytes": sum(r.raw_size for r in refs),
            "stored_bytes": sum(r.stored_size for r in refs),
            "objects": len(refs),
            "codecs": dict(Counter(r.codec for r in refs)),
        }

    out = _timed(job)
    out["found_objects"] = len(ps.store.fs.find(ps.store.path("payloads")))
    first, last = next(iter_frames(frames)), None
    for last in iter_frames(frames):  # noqa: B007 - the last frame
        pass
    out["read_back_ok"] = bool(
        np.array_equal(ps.get(result[0].ref), first)
        and np.array_equal(ps.get(result[-1].ref), last)
    )
    return out


def child_ingest(parquet: str, prefix: str) -> dict[str, Any]:
    """An ingest job of the frames file into an S3 store, no views; time it all."""
    from obsflow.connectors.storage.store import Store
    from obsflow.flows.pipeline import jobs
    from obsflow.flows.pipeline.ingest import IngestConfig

    url = f"s3://{BUCKET}/{prefix}"
    Store(url).fs.ls(BUCKET)
    config = IngestConfig(inputs=(parquet,), store=url, capture="frames", progress=False, views=())

    summary: dict[str, Any] = {}

    def job() -> dict[str, Any]:
        summary.update(jobs.execute(config, workers=1).summary)
        return {}

    out = _timed(job)
    table = pq.read_table(parquet, columns=["payload"])
    raw = sum(len(b) for b in table.column("payload").to_pylist())
    store = Store(url)
    objects = store.fs.find(store.path("payloads"), detail=True)
    out.update(
        raw_bytes=raw,
        stored_bytes=sum(v["size"] for v in objects.values()),
        objects=summary.get("payloads", 0),
        found_objects=len(objects),
        accepted=summary["accepted"],
        balanced=summary["balanced"],
    )
    return out


# -- parent -----------------------------------------------------------------------------------


def server_cpu_s(server: Any) -> float:
    """CPU seconds (user + system) the server process has used so far; NaN if unknown."""
    proc = getattr(server, "_proc", None)
    if proc is None:
        return math.nan
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan


def best(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of repeated runs, with the highest peak RSS of all of them."""
    out = dict(min(results, key=lambda r: r["seconds"]))
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
    out["all_seconds"] = [r["seconds"] for r in results]
    return out


def run_server(
    label: str, server: Any, script: str, contenders: list[tuple[str, list[str]]], repeat: int
) -> dict[str, dict[str, Any]]:
    """All contenders against one server, in interleaved rounds; each child's objects are
    deleted after it (obsflow would otherwise find its content-addressed objects and skip)."""
    import s3fs

    os.environ.update(s3servers.s3_env(server.endpoint_url, KEY, SECRET))
    s3servers.make_bucket(server.endpoint_url, KEY, SECRET, BUCKET)
    fs = s3fs.S3FileSystem(
        key=KEY, secret=SECRET, endpoint_url=server.endpoint_url, skip_instance_cache=True
    )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in contenders}
    for i in range(repeat):
        print(f"{label}: round {i + 1}/{repeat}: {', '.join(runs)} ...", flush=True)
        for j, (name, args) in enumerate(contenders):
            prefix = f"round{i}-contender{j}"
            cpu = server_cpu_s(server)
            result = run_child(script, [*args, "--prefix", prefix])
            result["server_cpu_s"] = server_cpu_s(server) - cpu
            runs[name].append(result)
            fs.rm(f"{BUCKET}/{prefix}", recursive=True)
    return {name: best(r) for name, r in runs.items()}


def print_table(label: str, results: dict[str, dict[str, Any]], baseline: str) -> None:
    ref = results[baseline]["raw_bytes"] / results[baseline]["seconds"]
    head = (
        f"{'contender':<26} {'seconds':>7} {'raw MB/s':>9} {'stored MB/s':>11} {'vs base':>7} "
        f"{'client CPU':>10} {'server CPU':>10} {'peak RSS':>9} {'over start':>10}"
    )
    print(f"\n{label}")
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        raw = r["raw_bytes"] / r["seconds"] / MB
        stored = r["stored_bytes"] / r["seconds"] / MB
        print(
            f"{name:<26} {r['seconds']:>7.2f} {raw:>9.1f} {stored:>11.1f} "
            f"{raw * MB / ref:>6.2f}x {r['client_cpu_s']:>8.2f} s {r['server_cpu_s']:>8.2f} s "
            f"{r['peak_rss_mb']:>5.0f} MiB {r['peak_rss_mb'] - r['rss_before_mb']:>6.0f} MiB"
        )
    print(
        "seconds: best of interleaved rounds; all rounds: "
        + "; ".join(
            f"{n} " + "/".join(f"{t:.2f}" for t in r["all_seconds"]) for n, r in results.items()
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=64, help="frames to offload (default 64)")
    p.add_argument(
        "--payload", default="frame:1024x2048:uint16", help="name:shape:dtype (default 4 MiB)"
    )
    p.add_argument("--max-in-flight", type=int, default=8, help="obsflow's default: 8")
    p.add_argument("--repeat", type=int, default=3, help="rounds; best time counts (default 3)")
    p.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--seaweed", action="store_true", help="also run against SeaweedFS")
    p.add_argument("--no-ingest", action="store_true", help="skip the end-to-end ingest run")
    p.add_argument("--child", choices=["s3fs", "obsflow", "ingest"], help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--min-saving", type=float, default=0.2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child == "s3fs":
        emit(child_s3fs(args.input, args.prefix, args.threads))
        return 0
    if args.child == "obsflow":
        emit(child_obsflow(args.input, args.prefix, args.threads, args.min_saving))
        return 0
    if args.child == "ingest":
        emit(child_ingest(args.input, args.prefix))
        return 0

    started = time.perf_counter()
    npy = write_frames(
        frames_path(args.frames, args.payload, args.seed), args.frames, args.payload, args.seed
    )
    n, frame_bytes = frames_info(npy)
    parquet = None if args.no_ingest else write_frames_parquet(npy, args.payload)
    print(
        f"frames: {npy.relative_to(ROOT)}: {n} x {args.payload} ({frame_bytes / 2**20:.1f} MiB "
        f"each, {n * frame_bytes / 2**20:.0f} MiB in all; ready in "
        f"{time.perf_counter() - started:.1f} s)"
    )
    print(
        f"concurrency: {args.max_in_flight} in flight; machine: {_cpus()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f} at start; Python {sys.version.split()[0]}; the server runs "
        "on the same machine"
    )
    script = str(Path(__file__).resolve())
    k = str(args.max_in_flight)
    contenders = [
        ("s3fs sequential", ["--child", "s3fs", "--input", str(npy), "--threads", "1"]),
        (f"s3fs {k} threads", ["--child", "s3fs", "--input", str(npy), "--threads", k]),
        ("obsflow offload_many", ["--child", "obsflow", "--input", str(npy), "--threads", k]),
        (
            "obsflow, zstd off (diag.)",
            ["--child", "obsflow", "--input", str(npy), "--threads", k, "--min-saving", "0.99"],
        ),
    ]
    if parquet is not None:
        contenders.append(("obsflow ingest (e2e)", ["--child", "ingest", "--input", str(parquet)]))
    baseline = f"s3fs {k} threads"

    servers: list[tuple[str, Callable[[Path], Any]]] = [
        ("moto server", lambda _: s3servers.MotoServer())
    ]
    if args.seaweed:
        servers.append(
            ("SeaweedFS (weed mini)", lambda data: s3servers.SeaweedServer(data, KEY, SECRET))
        )
    met_all = True
    sane = True
    for label, make in servers:
        # SeaweedFS keeps deleted objects' space in its volumes: its data goes with the run.
        with (
            tempfile.TemporaryDirectory(prefix="obsflow-bench-s3-") as data,
            make(Path(data)) as server,
        ):
            results = run_server(label, server, script, contenders, args.repeat)
        print_table(label, results, baseline)
        obs = results["obsflow offload_many"]
        rate = {name: r["raw_bytes"] / r["seconds"] for name, r in results.items()}
        grown = obs["peak_rss_mb"] - obs["rss_before_mb"]
        pool = results[baseline]
        print(
            f"obsflow codecs: {obs['codecs']}; stored {obs['stored_bytes'] / obs['raw_bytes']:.0%} "
            f"of the raw bytes. Memory while offloading {obs['raw_bytes'] / 2**20:.0f} MiB: peak "
            f"RSS {grown:.0f} MiB over its start = {grown * 2**20 / frame_bytes:.0f} frames' "
            f"worth with {args.max_in_flight} in flight (s3fs {args.max_in_flight} threads: "
            f"{pool['peak_rss_mb'] - pool['rss_before_mb']:.0f} MiB)"
        )
        for name, r in results.items():
            ok = r["found_objects"] == n and r.get("read_back_ok", True) and r.get("balanced", True)
            sane &= ok
            if not ok:
                print(f"  sanity FAIL: {name}: {r}")
        vs_pool = rate["obsflow offload_many"] / rate[baseline]
        vs_seq = rate["obsflow offload_many"] / rate["s3fs sequential"]
        met = vs_pool >= GOAL
        pool_grown = pool["peak_rss_mb"] - pool["rss_before_mb"]
        bounded = grown <= MEMORY_FACTOR * pool_grown
        met_all &= met and bounded
        print(
            f"goal: obsflow >= {GOAL}x plain s3fs with the same concurrency: {vs_pool:.2f}x "
            f"{'MET' if met else 'NOT MET'} (vs s3fs sequential: {vs_seq:.2f}x)"
        )
        print(
            f"memory: obsflow's peak RSS over start <= {MEMORY_FACTOR:g}x that of s3fs with the "
            f"same concurrency: {grown:.0f} vs {pool_grown:.0f} MiB "
            f"({grown / pool_grown:.1f}x) {'MET' if bounded else 'NOT MET'}"
        )
    print(f"\nsanity checks (objects written and read back): {'ok' if sane else 'FAIL'}")
    return 0 if sane and met_all else 1


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
