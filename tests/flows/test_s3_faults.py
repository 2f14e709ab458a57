"""S3 faults: transient failures are retried, a store that stays down stops the run cleanly,
and a resume after it returns completes with nothing lost or doubled.

Issue 6, must-show 4: "With a TCP proxy in front of the S3 server that resets connections or
stalls for a few seconds mid-run, the run completes with identical outputs; with the server down
for good, the run fails with a clear message and a resume after restart completes with identical
outputs (use SeaweedFS, which persists across restarts)."

Every S3 request goes through ``tests.faultproxy.FaultProxy``. Faults are injected by request
count (not by time), so they land mid-run however fast the machine is.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from obsflow.connectors.datasets import reads
from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.storage.retry import RETRY_SECONDS_ENV, RetryPolicy
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main
from obsflow.flows.explore.explorer import open_store
from tests import s3servers
from tests.conftest import (
    CRASH_VIEWS,
    ROOT,
    TEST_KEY,
    TEST_SECRET,
    admin_client,
    create_bucket,
    on_retry_clock,
    sorted_frame,
)
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.integration  # servers, brokers, child processes (tests/conftest.py)

# 4 sources x 2 channels x 1000 Hz x 60 s: ~480,000 readings, 8 capture partitions.
SIM = "sim://?sources=4&channels=temperature,pressure&rate=1000&duration=60s&seed=11"
VIEWS = CRASH_VIEWS
VIEW_NAMES = ("s10", "sess")
# Keys of a run summary that differ between two runs of the same work.
RUN_SPECIFIC = {"run", "commit", "finished", "seconds", "readings_per_s"}


# --- helpers ------------------------------------------------------------------------------------


def ingest_cmd(store: str, views: Path, summary: Path, *extra: str) -> list[str]:
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
        "--partitions",
        "8",
        "-q",
        "--summary",
        str(summary),
        *extra,
    ]


def child_env(endpoint: str, key: str, secret: str, retry_seconds: float) -> dict[str, str]:
    """The environment of an ``obsflow`` child talking to ``endpoint``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_MAX_ATTEMPTS")
    }
    env.update(s3servers.s3_env(endpoint, key, secret))
    env[RETRY_SECONDS_ENV] = str(retry_seconds)
    env["PYTHONPATH"] = str(ROOT)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1"
    return env


def outputs(store: Store) -> dict[str, pd.DataFrame]:
    """Capture and views (final and provisional rows) in canonical order, without the run
    that wrote them."""
    out = {"capture": sorted_frame(reads.read_capture(store, "c", payloads=True).to_pandas())}
    for view in VIEW_NAMES:
        df = reads.read_view(store, view).to_pandas().drop(columns=["run"])
        out[view] = df.sort_values(["source", "channel", "window_start"]).reset_index(drop=True)
    return out


def assert_same_outputs(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    assert set(got) == set(want)
    for name, frame in want.items():
        pd.testing.assert_frame_equal(got[name], frame, obj=name)


def check_summary(summary_path: Path, want: dict[str, pd.DataFrame]) -> None:
    s = json.loads(summary_path.read_text())
    assert s["balanced"] is True
    assert s["input"] == s["accepted"] + s["rejected"] + s["duplicates"]
    assert s["accepted"] == len(want["capture"])
    # "rows" counts final rows; the windows still open at the end are provisional rows.
    assert s["views"] == {
        v: {"rows": int(want[v]["final"].sum()), "provisional": int((~want[v]["final"]).sum())}
        for v in VIEW_NAMES
    }


@dataclasses.dataclass
class Step:
    at_request: int
    name: str
    action: Callable[[], object]
    fired_at: int | None = None  # proxy request count when it fired


class Chaos(threading.Thread):
    """Fires fault steps as the proxy's request count passes each step's threshold."""

    def __init__(self, proxy: FaultProxy, steps: list[Step]) -> None:
        super().__init__(name="chaos", daemon=True)
        self.proxy, self.steps = proxy, steps
        self.done = threading.Event()

    def run(self) -> None:
        pending = sorted(self.steps, key=lambda s: s.at_request)
        while pending and not self.done.wait(0.002):
            seen = self.proxy.stats().requests
            while pending and pending[0].at_request <= seen:
                step = pending.pop(0)
                step.action()
                step.fired_at = seen

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)


@pytest.fixture(scope="module")
def views_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("views") / "views.toml"
    path.write_text(VIEWS)
    return path


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, views_file: Path
) -> dict[str, pd.DataFrame]:
    """The outputs of a clean run into a local store."""
    root = tmp_path_factory.mktemp("reference")
    cmd = ingest_cmd(str(root / "store"), views_file, root / "summary.json")
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=120)
    want = outputs(Store(str(root / "store")))
    check_summary(root / "summary.json", want)
    return want


@pytest.fixture
def moto_proxy(
    moto_server: s3servers.MotoServer, s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FaultProxy, str]]:
    """A proxy in front of moto; this process's AWS environment goes through it. (proxy, bucket)"""
    with FaultProxy((s3servers.HOST, moto_server.port)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint_url)
        monkeypatch.setenv(RETRY_SECONDS_ENV, "10")
        yield proxy, s3_env


# --- the retry policy, operation by operation -------------------------------------------------

FAULTS: dict[str, Callable[[FaultProxy], object]] = {
    "reset_on_accept": lambda p: p.reset_next(1, when="accept"),
    "reset_before_forwarding": lambda p: p.reset_next(2, when="request"),
    "reset_after_the_server_answered": lambda p: p.reset_next(2, when="response"),
    "reset_pooled_connections": lambda p: p.reset_all(),
    "503_slow_down": lambda p: p.fail_next(1, status=503),
    "500_internal_error": lambda p: p.fail_next(1, status=500),
    "stall_a_fifth_of_a_second": lambda p: p.stall(0.2),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_store_operation_survives_a_transient_fault(
    moto_proxy: tuple[FaultProxy, str], fault: str
) -> None:
    proxy, bucket = moto_proxy
    store = Store(f"s3://{bucket}/ops")
    table = pa.table({"x": pa.array(range(1000), pa.int64())})
    store.write_bytes("seed", b"seed")  # opens a pooled connection for reset_pooled_connections
    before = proxy.stats()

    # Each operation runs right after a fresh dose of the fault, so each one meets it.
    def dose() -> None:
        FAULTS[fault](proxy)

    dose()
    store.write_bytes("a/one.bin", b"1" * 100_000)
    dose()
    assert store.read_bytes("a/one.bin", max_bytes=200_000) == b"1" * 100_000
    dose()
    assert store.exists("a/one.bin")
    dose()
    store.copy("a/one.bin", "a/two.bin")
    dose()
    assert list(store.walk_files("a")) == ["a/one.bin", "a/two.bin"]
    store.write_parquet("t/part.parquet", table)
    dose()
    assert store.read_parquet("t/part.parquet").equals(table)
    dose()
    assert store.scan(["t/part.parquet"]).equals(table)  # pyarrow's own (ranged) reads
    dose()
    store.delete("a/two.bin")
    proxy.clear()

    after = proxy.stats()
    # The fault really happened, more than once.
    if fault.startswith("stall"):
        assert after.stalled - before.stalled == 8
    elif fault.startswith(("503", "500")):
        assert after.errors - before.errors >= 8
    elif fault == "reset_on_accept":  # only new connections meet it: some ops reuse one
        assert after.resets - before.resets >= 2
    elif fault != "reset_pooled_connections":  # that one only hits idle connections
        assert after.resets - before.resets >= 8
    # ... and nothing was written twice or left half-done.
    fresh = Store(f"s3://{bucket}/ops")
    assert list(fresh.walk_files()) == ["a/one.bin", "seed", "t/part.parquet"]


def test_a_write_held_past_the_read_timeout_completes_once_the_stall_ends(
    moto_proxy: tuple[FaultProxy, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy holds the write's bytes (both ways) until the test ends the stall, after
    more than the read timeout: the write is still going then, and completes right."""
    proxy, bucket = moto_proxy
    monkeypatch.setenv(RETRY_SECONDS_ENV, "6")  # read timeout 2 s
    store = Store(f"s3://{bucket}/stall")
    assert RetryPolicy.from_env().client_config()["read_timeout"] == 2.0
    store.exists("k")  # the client is built and connected before the stall
    before = proxy.stats()
    proxy.stall(proxy.max_stall)
    outcome: list[BaseException | None] = []

    def write() -> None:
        try:
            store.write_bytes("k", b"v" * 1000)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(2.5)  # the fault: everything held for longer than the read timeout
    assert writer.is_alive(), outcome  # held, not failed
    proxy.end_stall()
    writer.join(60)
    assert outcome == [None]
    assert proxy.stats().stalled - before.stalled == 1
    assert Store(f"s3://{bucket}/stall").read_bytes("k") == b"v" * 1000


@pytest.mark.parametrize(
    ("action", "call"),
    [
        ("write", lambda s: s.write_bytes("x/k.bin", b"data")),
        ("list", lambda s: s.listdir("x")),
        ("read", lambda s: s.read_parquet("x")),
    ],
    ids=["write_bytes", "listdir", "read_parquet"],
)
def test_a_store_that_stays_down_fails_within_the_budget_with_a_clear_message(
    moto_proxy: tuple[FaultProxy, str],
    monkeypatch: pytest.MonkeyPatch,
    action: str,
    call: Callable[[Store], object],
) -> None:
    proxy, bucket = moto_proxy
    secret = "obsflow-TOPSECRET-" + secrets.token_hex(8)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)  # moto takes any secret
    monkeypatch.setenv(RETRY_SECONDS_ENV, "1")
    store = Store(f"s3://{bucket}/down")
    fake = on_retry_clock(store)
    proxy.down()
    with pytest.raises(StoreError) as info:
        call(store)
    message = str(info.value)
    # Refused attempts, a backoff after each, until the 1 s budget is spent: the last wait
    # ends right at it, and the attempt made then is the last.
    assert len(fake.sleeps) >= 2, fake.sleeps
    assert sum(fake.sleeps) == pytest.approx(1.0), fake.sleeps
    assert re.fullmatch(
        rf"cannot {action} s3://{bucket}/down/x(/k\.bin)?: store unreachable after "
        rf"{len(fake.sleeps) + 1} attempts over 1\.0 s: .+",
        message,
    ), message
    assert "\n" not in message
    assert secret not in message
    assert secret not in repr(info.value)
    proxy.up()
    if action == "write":
        call(store)  # and once the store is back, the same store object works again


def test_once_a_store_was_given_up_on_operations_fail_fast_until_it_answers(
    moto_proxy: tuple[FaultProxy, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing run's way out (sinks flushing on close, other workers) must not wait out the
    whole retry budget once per operation."""
    proxy, bucket = moto_proxy
    budget = 4.0
    monkeypatch.setenv(RETRY_SECONDS_ENV, str(budget))
    store, other = Store(f"s3://{bucket}/a"), Store(f"s3://{bucket}/b")  # same bucket
    clocks = {id(store): on_retry_clock(store), id(other): on_retry_clock(other)}

    def waited(s: Store, call: Callable[[Store], object]) -> tuple[float, str]:
        """Seconds of backoff the call asked for, and how it ended."""
        sleeps = clocks[id(s)].sleeps
        asked = len(sleeps)
        try:
            call(s)
        except StoreError as exc:
            return sum(sleeps[asked:]), str(exc)
        return sum(sleeps[asked:]), "ok"

    proxy.down()
    first, message = waited(store, lambda s: s.write_bytes("k", b"v"))
    assert first == pytest.approx(budget), message  # the whole budget
    assert "store unreachable after" in message
    assert "(and earlier operations)" not in message
    for s, call in ((store, lambda s: s.write_bytes("k", b"v")), (other, lambda s: s.listdir(""))):
        fast, message = waited(s, call)
        assert "store unreachable after 1 attempt over 0.0 s" in message
        assert "(and earlier operations)" in message
        assert fast == 0, message  # one attempt, not the budget again
    proxy.up()
    assert waited(other, lambda s: s.write_bytes("k", b"v")) == (0, "ok")  # its one attempt
    proxy.reset_next(2, when="request")  # it answered: transient faults are retried again
    assert waited(store, lambda s: s.write_bytes("k", b"v"))[1] == "ok"
    proxy.down()
    again, message = waited(store, lambda s: s.read_bytes("k"))
    assert again == pytest.approx(budget), message
    assert "(and earlier operations)" not in message


def test_retry_budget_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RETRY_SECONDS_ENV, raising=False)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    default = RetryPolicy.from_env()
    assert (default.seconds, default.attempts) == (30, None)
    assert default.client_config() == {
        "connect_timeout": 5.0,
        "read_timeout": 10.0,
        "retries": {"mode": "standard", "total_max_attempts": 1},
    }
    monkeypatch.setenv(RETRY_SECONDS_ENV, "4.5")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    policy = RetryPolicy.from_env()
    assert (policy.seconds, policy.attempts) == (4.5, 3)
    assert policy.client_config()["retries"] == {"mode": "standard", "total_max_attempts": 1}
    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv(RETRY_SECONDS_ENV, bad)
        with pytest.raises(ConfigError, match=RETRY_SECONDS_ENV):
            RetryPolicy.from_env()
    monkeypatch.setenv(RETRY_SECONDS_ENV, "1")
    for bad in ("0", "two", "-3"):
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", bad)
        with pytest.raises(ConfigError, match="AWS_MAX_ATTEMPTS"):
            RetryPolicy.from_env()
    # Backoff doubles from 0.2 s, jittered down by at most half, capped at 5 s.
    policy = RetryPolicy()
    for attempt, ceiling in [(1, 0.2), (2, 0.4), (3, 0.8), (6, 5.0), (60, 5.0)]:
        assert ceiling / 2 <= policy.delay(attempt) <= ceiling


def test_aws_max_attempts_caps_the_attempts_of_an_operation(
    moto_proxy: tuple[FaultProxy, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, bucket = moto_proxy
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    store = Store(f"s3://{bucket}/capped")
    proxy.fail_next(10, status=500)  # s3fs does not retry a 500: one request per attempt
    with pytest.raises(StoreError, match="store unreachable after 3 attempts over"):
        store.write_bytes("k", b"v")
    assert proxy.stats().errors == 3
    proxy.clear()
    store.write_bytes("k", b"v")  # (the store answers again: full retries from here on)
    proxy.fail_next(2, status=500)
    store.write_bytes("k", b"v")  # the third attempt gets through
    assert proxy.stats().errors == 5


def test_local_stores_do_not_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(str(tmp_path / "store"))
    assert store.retry is None
    calls = []

    def broken(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise ConnectionResetError("not really")

    monkeypatch.setattr(store.fs, "pipe_file", broken)
    with pytest.raises(StoreError, match="not really"):
        store.write_bytes("k", b"v")
    assert calls == [1]


# --- whole runs ---------------------------------------------------------------------------------


def test_resets_errors_and_a_stall_mid_run_leave_the_outputs_identical(
    moto_server: s3servers.MotoServer,
    s3_env: str,
    views_file: Path,
    reference: dict[str, pd.DataFrame],
    tmp_path: Path,
) -> None:
    url = f"s3://{s3_env}/faults"
    with FaultProxy((s3servers.HOST, moto_server.port)) as proxy:
        steps = [
            Step(3, "reset 2 new connections", lambda: proxy.reset_next(2, when="accept")),
            Step(8, "reset 3 requests", lambda: proxy.reset_next(3, when="request")),
            Step(14, "reset 3 answers", lambda: proxy.reset_next(3, when="response")),
            Step(20, "503 x3", lambda: proxy.fail_next(3, status=503)),
            Step(26, "500 x2", lambda: proxy.fail_next(2, status=500)),
            Step(32, "reset all open connections", proxy.reset_all),
            Step(38, "stall 3 s", lambda: proxy.stall(3.0)),
            Step(45, "reset 2 requests", lambda: proxy.reset_next(2, when="request")),
            Step(52, "reset 2 answers", lambda: proxy.reset_next(2, when="response")),
        ]
        chaos = Chaos(proxy, steps)
        env = child_env(proxy.endpoint_url, TEST_KEY, TEST_SECRET, retry_seconds=15)
        cmd = ingest_cmd(url, views_file, tmp_path / "summary.json")
        chaos.start()
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
            )
        finally:
            chaos.stop()
        stats = proxy.stats()

    assert proc.returncode == 0, proc.stderr
    # Every fault fired while the run was going, and the run went on after the last one.
    assert all(s.fired_at is not None for s in steps), [(s.name, s.fired_at) for s in steps]
    assert stats.requests > max(s.fired_at or 0 for s in steps) + 5, stats
    assert stats.resets >= 12, stats
    assert stats.errors == 5, stats
    assert stats.stalled == 1, stats
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "panicked" not in proc.stderr, proc.stderr

    got = outputs(Store(url))  # read back straight from moto, not through the proxy
    assert_same_outputs(got, reference)
    check_summary(tmp_path / "summary.json", reference)


# --- every read path through faults -----------------------------------------------------------
#
# Issue must-show: "Replay, `views show`, `capture info`, `deadletters list`, Explorer reads and
# payload fetches against moto through the TCP fault proxy (connection resets, 5xx, a stall)
# give the same results as without faults — faults at the network, no monkeypatching."

READ_VIEWS = """
[[view]]
name = "t10"
kind = "tumbling"
size = "10s"
aggregates = ["count", "mean", "min", "max", "p50"]
[[view]]
name = "sess"
kind = "session"
gap = "3s"
aggregates = ["count", "sum"]
"""
T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
SECOND = 10**9
READ_FAULTS = ("reset", "503", "reset_response", "500", "stall")


def read_path_input(path: Path, start: int, stop: int, seed: int) -> dict[tuple[str, int], bytes]:
    """Seconds ``start..stop`` of three sources: a scalar channel every second, a 8 KiB frame
    (a payload object) every 20 s and a 200-byte waveform (inline) every 40 s, plus records
    that become dead letters. Returns each payload's bytes by (source, time)."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    payloads = {}
    for source in ("alpha", "beta", "gamma"):
        for sec in range(start, stop):
            t = T0 + sec * SECOND
            rows.append({"source": source, "time": t, "channel": "temp", "value": rng.normal()})
            for channel, every, dtype, shape in (
                ("frame", 20, "uint16", [64, 64]),
                ("wave", 40, "float32", [50]),
            ):
                if sec % every == 7:
                    array = (rng.random(shape) * 1000).astype(dtype)
                    payloads[(source, t + 1)] = array.tobytes()
                    rows.append(
                        {
                            "source": source,
                            "time": t + 1,  # a reading of its own, next to the scalar one
                            "channel": channel,
                            "payload": array.tobytes(),
                            "payload_dtype": dtype,
                            "payload_shape": shape,
                        }
                    )
    t = T0 + start * SECOND
    good = np.arange(6, dtype="<u2").tobytes()
    bad: list[dict[str, object]] = [
        {"source": "../escape", "time": t, "channel": "temp", "value": 1.0},  # bad_id
        {"source": "alpha", "time": t, "channel": "pre/ssure", "value": 1.0},  # bad_id
        {"source": "beta", "time": t + 3, "channel": "img", "payload": good[:5],
         "payload_dtype": "uint16", "payload_shape": [2, 3]},  # bad_payload: truncated
        {"source": "beta", "time": t + 4, "channel": "img", "payload": good,
         "payload_dtype": "object", "payload_shape": [2, 3]},  # bad_payload: dtype
    ]  # fmt: skip
    rows[5:5] = bad
    schema = pa.schema(
        [
            ("source", pa.string()),
            ("time", pa.int64()),
            ("channel", pa.string()),
            ("value", pa.float64()),
            ("payload", pa.large_binary()),
            ("payload_dtype", pa.string()),
            ("payload_shape", pa.list_(pa.int64())),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return {k: v for k, v in payloads.items() if len(v) > 1024}  # frames: stored objects


def same(name: str, clean: object, faulty: object) -> None:
    """``faulty`` is exactly ``clean`` (frames, arrays, and containers of them)."""
    if isinstance(clean, pd.DataFrame):
        assert isinstance(faulty, pd.DataFrame), name
        pd.testing.assert_frame_equal(faulty, clean, obj=name, check_exact=True)
    elif isinstance(clean, np.ndarray):
        assert isinstance(faulty, np.ndarray), name
        assert (faulty.dtype, faulty.shape) == (clean.dtype, clean.shape), name
        np.testing.assert_array_equal(faulty, clean, err_msg=name)
    elif isinstance(clean, dict):
        assert isinstance(faulty, dict), name
        assert faulty.keys() == clean.keys(), name
        for key, value in clean.items():
            same(f"{name}[{key!r}]", value, faulty[key])
    elif isinstance(clean, list | tuple):
        assert isinstance(faulty, list | tuple), name
        assert len(faulty) == len(clean), name
        for i, (a, b) in enumerate(zip(clean, faulty, strict=True)):
            same(f"{name}[{i}]", a, b)
    else:
        assert faulty == clean, name


def test_every_read_path_gives_the_same_results_through_network_faults(
    moto_proxy: tuple[FaultProxy, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    proxy, bucket = moto_proxy
    # Long enough for a few faults in a row (and a stall) on one operation, short enough that
    # a fault that were not retried would fail the test quickly.
    monkeypatch.setenv(RETRY_SECONDS_ENV, "5")
    url = f"s3://{bucket}/reads"
    views = tmp_path / "views.toml"
    views.write_text(READ_VIEWS)

    def cli(*argv: str) -> tuple[int, str, str]:
        """Exit status, stdout and stderr of an ``obsflow`` command (in this process)."""
        capsys.readouterr()
        code = main([*argv, "--store", url])
        out, err = capsys.readouterr()
        # A retry is logged as a warning: the one line allowed to differ.
        return code, out, "\n".join(x for x in err.splitlines() if "retrying for up to" not in x)

    # Two ingest runs through the proxy, no faults: payload objects, inline payloads, dead
    # letters in both runs, late readings in the second, provisional rows at the end.
    frames = read_path_input(tmp_path / "one.parquet", 0, 120, seed=1)
    frames |= read_path_input(tmp_path / "two.parquet", 120, 180, seed=2)
    late = pa.table(
        {"source": ["alpha", "beta"], "time": [T0 + 5_500_000_000, T0 + 15_500_000_000],
         "channel": ["temp", "temp"], "value": [7.0, 8.0]}
    )  # fmt: skip
    two = pa.concat_tables(
        [pq.read_table(tmp_path / "two.parquet"), late], promote_options="default"
    )
    pq.write_table(two, tmp_path / "two.parquet")
    for part in ("one", "two"):
        options = ["--capture", "c", "--views", str(views), "--inline-limit", "1024", "-q"]
        code = main(["ingest", str(tmp_path / f"{part}.parquet"), "--store", url, *options])
        assert code == 0
    explorer = open_store(url)
    capture = explorer.capture("c", payloads=True)
    with_payload = capture[capture["payload_sha256"].notna()]
    assert len(with_payload) == 3 * (9 + 5)  # frames every 20 s and waves every 40 s, 180 s
    assert (with_payload["payload_codec"] == "inline").sum() == 3 * 5
    sha = with_payload[with_payload["channel"] == "frame"]["payload_sha256"].iloc[0]
    before_replay = {v: explorer.view(v).drop(columns=["run"]) for v in ("t10", "sess")}

    def explored() -> dict[str, pd.DataFrame]:
        ex = open_store(url)  # a new one: it checks the store's layout again
        return {
            "views": ex.views(),
            "t10": ex.view("t10"),
            "sess final": ex.view("sess", final_only=True),
            "t10 of alpha": ex.view("t10", source="alpha", start="2026-01-01T00:01:00"),
            "capture": ex.capture("c", payloads=True),
            "captures": ex.captures(),
            "deadletters": ex.deadletters(),
            "late": ex.late("t10"),
            "runs": ex.runs(),
        }

    def fetched() -> list[object]:
        ex = open_store(url)
        rows = ex.capture("c", payloads=True)
        rows = rows[rows["payload_sha256"].notna()].reset_index(drop=True)
        return [rows, ex.payloads(rows), ex.payload(rows.iloc[0])]

    def payload_get() -> tuple[int, np.ndarray]:
        out = tmp_path / "payload.npy"
        out.unlink(missing_ok=True)
        code, _, _ = cli("payload", "get", sha, "--capture", "c", "-o", str(out))
        return code, np.load(out)

    def replayed() -> tuple[int, dict[str, object], dict[str, pd.DataFrame]]:
        summary = tmp_path / "replay.json"
        code = main(["replay", "--store", url, "--capture", "c", "-q", "--summary", str(summary)])
        doc = json.loads(summary.read_text())
        doc = {k: v for k, v in doc.items() if k not in RUN_SPECIFIC}
        fresh = Store(url)
        tables = {
            v: reads.read_view(fresh, v).to_pandas().drop(columns=["run"]) for v in ("t10", "sess")
        }
        return code, doc, tables

    paths: dict[str, Callable[[], object]] = {
        "views show": lambda: cli("views", "show", "t10", "--limit", "0"),
        "views show --final (filtered)": lambda: cli(
            "views", "show", "sess", "--final", "--source", "beta", "--limit", "0"
        ),
        "views list": lambda: cli("views", "list"),
        "capture info": lambda: cli("capture", "info", "c"),
        "capture info --json": lambda: cli("capture", "info", "c", "--json"),
        "capture verify": lambda: cli("capture", "verify", "c"),
        "deadletters list": lambda: cli("deadletters", "list"),
        "deadletters show": lambda: cli("deadletters", "show", "--limit", "0"),
        "late list": lambda: cli("late", "list"),
        "payload get": payload_get,
        "explorer reads": explored,
        "payload fetches": fetched,
        "replay": replayed,  # last: it rewrites the views (with the same rows)
    }
    results = {}
    for name, read in paths.items():
        start = proxy.stats()
        clean = read()
        middle = proxy.stats()
        # About 6 faults spread over the path (2 of each kind), however many requests it makes
        # (a dozen for `views list`, hundreds for a replay); the first request meets one.
        every = max(3, (middle.requests - start.requests) // 6)
        proxy.cycle(every, READ_FAULTS, stall_seconds=0.3)
        try:
            faulty = read()
        finally:
            proxy.cycle(0)
            proxy.clear()
        end = proxy.stats()
        # A connection the client gave up on (a stall outlasted its timeout) may still get
        # its armed fault when the answer comes: close every connection, pooled ones too, so
        # that the next path's reference run starts clean (its faults are counted from then).
        proxy.reset_all()
        deadline = time.monotonic() + 10
        while proxy.stats().active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert middle.faults == start.faults, name  # the reference really saw no fault
        results[name] = (clean, end.faults - middle.faults, end.requests - middle.requests)
        same(name, clean, faulty)

    # Every path met faults; all kinds were met.
    hit = {name: faults for name, (_, faults, _) in results.items()}
    assert all(n > 0 for n in hit.values()), hit
    stats = proxy.stats()
    assert stats.resets > 0, stats
    assert stats.errors > 0, stats
    assert stats.stalled > 0, stats
    # ... and the results compared are the real thing, not two empty answers.
    code, out, err = results["views show"][0]
    assert code == 0
    assert " final " in out
    assert " open " in out
    assert "rows are provisional" in err
    code, out, _ = results["deadletters list"][0]
    assert code == 0
    assert out.count("bad_id") == 2, out  # two runs
    assert out.count("bad_payload") == 2, out
    code, out, _ = results["capture info --json"][0]
    assert json.loads(out)["rows"] == len(capture)
    assert results["capture verify"][0][0] == 0
    assert "t10" in results["late list"][0][1]
    code, array = results["payload get"][0]
    assert code == 0
    fetched_rows, arrays, _ = results["payload fetches"][0]
    for row, array in zip(fetched_rows.itertuples(), arrays, strict=True):
        if (row.source, row.time.value) in frames:
            assert array.tobytes() == frames[(row.source, row.time.value)]
    code, summary, tables = results["replay"][0]
    assert code == 0
    assert summary["balanced"]
    assert summary["input"] == len(capture)
    same("replay rebuilds the rows ingest built", before_replay, tables)


# --- a store that stays down, then comes back ---------------------------------------------------

DOWN_AFTER_SECONDS = 1.2  # at least two 0.5 s snapshots before the outage
RETRY_SECONDS_WHEN_DOWN = 2


@dataclasses.dataclass
class Outage:
    secret: str
    access_key: str
    bucket: str
    failed: subprocess.CompletedProcess[str]
    resumed: subprocess.CompletedProcess[str]
    summary: Path
    outputs: dict[str, pd.DataFrame]


def s3_port(weed: s3servers.SeaweedServer) -> int:
    assert weed.ports is not None
    return weed.ports.s3


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory, views_file: Path) -> Iterator[Outage]:
    """An ingest into SeaweedFS (through the proxy) whose store goes down for good mid-run:
    the proxy closes its port and SeaweedFS stops. Then SeaweedFS restarts on the same data
    dir and ports, and the same command runs again to resume."""
    root = tmp_path_factory.mktemp("outage")
    access_key = "obsflow-ACCESSKEY-" + secrets.token_hex(6)
    secret = "obsflow-TOPSECRET-" + secrets.token_hex(12)
    with (
        s3servers.SeaweedServer(root / "weed", access_key, secret) as weed,
        FaultProxy((s3servers.HOST, s3_port(weed))) as proxy,
    ):
        bucket = create_bucket(weed.endpoint_url, access_key, secret)
        url = f"s3://{bucket}/obsflow"
        env = child_env(proxy.endpoint_url, access_key, secret, RETRY_SECONDS_WHEN_DOWN)
        summary = root / "summary.json"
        cmd = ingest_cmd(
            url,
            views_file,
            summary,
            "--recovery",
            str(root / "recovery"),
            "--snapshot-interval",
            "0.5",
        )

        started = time.monotonic()  # (the outage comes at least DOWN_AFTER_SECONDS in)
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Mid-run: its dataflow has written capture files (seen straight from SeaweedFS, not
        # through the proxy), and snapshots have been taken.
        client = admin_client(weed.endpoint_url, access_key, secret)

        def staged_capture() -> bool:
            listed = client.list_objects_v2(Bucket=bucket, Prefix="obsflow/captures/")
            return any(o["Key"].endswith(".parquet") for o in listed.get("Contents", []))

        try:
            while proc.poll() is None and (
                time.monotonic() - started < DOWN_AFTER_SECONDS or not staged_capture()
            ):
                time.sleep(0.02)
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the run ended (exit {proc.returncode}) before the outage:\n{err}")
            proxy.down()
            weed.stop()
            out, err = proc.communicate(timeout=120)  # it gives up; it does not hang
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        failed = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        assert not summary.exists()

        weed.start()  # same data dir, same ports
        proxy.up()
        env = {k: v for k, v in env.items() if k != RETRY_SECONDS_ENV}  # the default, 30 s
        resumed = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        # Read back with a fresh Store straight from SeaweedFS (not through the proxy).
        with pytest.MonkeyPatch.context() as mp:
            for name, value in s3servers.s3_env(weed.endpoint_url, access_key, secret).items():
                mp.setenv(name, value)
            got = outputs(Store(url)) if resumed.returncode == 0 else {}
        yield Outage(secret, access_key, bucket, failed, resumed, summary, got)


def test_a_store_down_for_good_stops_the_run(outage: Outage) -> None:
    # The retry budget is 2 s per operation, and once an operation gave up the others get one
    # attempt each (tested on a fake clock above): the run gives up within the fixture's
    # 120 s, it does not hang.
    assert outage.failed.returncode != 0


def test_resume_after_the_store_returns_gives_the_uninterrupted_outputs(
    outage: Outage, reference: dict[str, pd.DataFrame]
) -> None:
    assert outage.resumed.returncode == 0, outage.resumed.stderr
    assert_same_outputs(outage.outputs, reference)
    check_summary(outage.summary, reference)


def test_no_credentials_on_the_outage_runs_output(outage: Outage) -> None:
    for proc in (outage.failed, outage.resumed):
        for text in (proc.stdout, proc.stderr):
            assert outage.secret not in text
            assert outage.access_key not in text


def test_a_store_down_for_good_is_reported_in_one_clear_line(outage: Outage) -> None:
    err = outage.failed.stderr
    assert outage.failed.returncode == 1, err[-2000:]
    assert "Traceback" not in err
    assert "panic in a destructor" not in err
    errors = [line for line in err.splitlines() if line.startswith("obsflow: error: ")]
    assert len(errors) == 1, err[-2000:]
    assert re.fullmatch(
        rf"obsflow: error: cannot \w+ s3://{outage.bucket}/obsflow/\S+: store unreachable "
        r"after (1 attempt|\d+ attempts) over [\d.]+ s( \(and earlier operations\))?: .+",
        errors[0],
    ), errors[0]


# A run failing (its store down) while a log step (dead letters, late readings) still holds
# rows it has not written: nothing may try to write them while Bytewax unwinds (the old sinks
# flushed in close(), from a destructor, and aborted the process); the run ends with one line.
# Deterministic, no S3 needed.
ABORT_REPRO = """
import sys
import pyarrow as pa
import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource
from obsflow.connectors.errors import StoreError
from obsflow.connectors.storage.store import Store
from obsflow.flows.steps.logs import write_log
from obsflow.flows.pipeline.runner import run_flow

DOWN = False

class FlakyStore(Store):
    def write_bytes(self, rel, data):
        if DOWN:
            raise StoreError(f"cannot write {self.uri(rel)}: store unreachable (simulated)")
        super().write_bytes(rel, data)

def step(item):
    global DOWN
    if item == "fail":  # the log holds rows 1 and 2 (same epoch, not flushed yet)
        DOWN = True
        raise StoreError("cannot write s3://b/captures/c/x: store unreachable (simulated)")
    return ("0000", pa.table({"x": [item]}))

flow = Dataflow("repro")
items = op.input("in", flow, TestingSource([1, 2, "fail"], batch_size=1))
schema = pa.schema([("x", pa.int64()), ("run", pa.string())])
counts = write_log(
    "log",
    op.map("step", items, step), FlakyStore("memory://abort-repro"), "deadletter", "r1", schema
)
op.output("out", counts, TestingSink([]))
try:
    run_flow(flow, 1)
except Exception as exc:
    cause = exc
    while cause is not None and not isinstance(cause, StoreError):
        cause = cause.__cause__
    print(f"obsflow: error: {cause}", file=sys.stderr)
    sys.exit(1)
"""


def test_a_log_holding_rows_when_another_step_fails_does_not_abort_the_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", ABORT_REPRO],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "panic in a destructor" not in proc.stderr
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.rstrip().splitlines()[-1] == (
        "obsflow: error: cannot write s3://b/captures/c/x: store unreachable (simulated)"
    )


def test_a_store_down_for_good_prints_no_rust_panic(outage: Outage) -> None:
    err = outage.failed.stderr
    assert "panicked at" not in err
    assert "stack backtrace" not in err
