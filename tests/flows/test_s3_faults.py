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
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.store import RETRY_SECONDS_ENV, RetryPolicy, Store
from tests import s3servers
from tests.conftest import CRASH_VIEWS, ROOT, TEST_KEY, TEST_SECRET, create_bucket, sorted_frame
from tests.faultproxy import FaultProxy

# 4 sources x 2 channels x 1000 Hz x 60 s: ~480,000 readings, 8 capture partitions.
SIM = "sim://?sources=4&channels=temperature,pressure&rate=1000&duration=60s&seed=11"
VIEWS = CRASH_VIEWS
VIEW_NAMES = ("s10", "sess")


# --- helpers ------------------------------------------------------------------------------------


def ingest_cmd(store: str, views: Path, summary: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "obsflow.flows.cli",
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
    """Capture and views in canonical order, without the run that wrote them."""
    out = {"capture": sorted_frame(store.read_parquet("captures/c").to_pandas())}
    for view in VIEW_NAMES:
        df = store.read_parquet(f"views/{view}").to_pandas().drop(columns=["run"])
        out[view] = df.sort_values(["source", "channel", "window_start"]).reset_index(drop=True)
    return out


def assert_same_outputs(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    assert set(got) == set(want)
    for name, frame in want.items():
        pd.testing.assert_frame_equal(got[name], frame, obj=name)


def check_summary(summary_path: Path, want: dict[str, pd.DataFrame]) -> None:
    import json

    s = json.loads(summary_path.read_text())
    assert s["balanced"] is True
    assert s["input"] == s["accepted"] + s["rejected"] + s["duplicates"]
    assert s["accepted"] == len(want["capture"])
    assert s["views"] == {v: {"rows": len(want[v])} for v in VIEW_NAMES}


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
    assert store.read_parquet("t").equals(table)
    dose()
    store.delete("a/two.bin")
    proxy.clear()

    after = proxy.stats()
    # The fault really happened, more than once.
    if fault.startswith("stall"):
        assert after.stalled - before.stalled == 7
    elif fault.startswith(("503", "500")):
        assert after.errors - before.errors >= 7
    elif fault == "reset_on_accept":  # only new connections meet it: some ops reuse one
        assert after.resets - before.resets >= 2
    elif fault != "reset_pooled_connections":  # that one only hits idle connections
        assert after.resets - before.resets >= 7
    # ... and nothing was written twice or left half-done.
    fresh = Store(f"s3://{bucket}/ops")
    assert list(fresh.walk_files()) == ["a/one.bin", "seed", "t/part.parquet"]


def test_a_stall_longer_than_the_read_timeout_is_retried(
    moto_proxy: tuple[FaultProxy, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, bucket = moto_proxy
    monkeypatch.setenv(RETRY_SECONDS_ENV, "6")  # read timeout 2 s
    store = Store(f"s3://{bucket}/stall")
    assert RetryPolicy.from_env().client_config()["read_timeout"] == 2.0
    proxy.stall(2.6)
    started = time.monotonic()
    store.write_bytes("k", b"v" * 1000)
    assert time.monotonic() - started >= 2.5
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
    proxy.down()
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        call(store)
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert re.fullmatch(
        rf"cannot {action} s3://{bucket}/down/x(/k\.bin)?: store unreachable after "
        r"(1 attempt|\d+ attempts) over [\d.]+ s: .+",
        message,
    ), message
    assert "\n" not in message
    assert secret not in message
    assert secret not in repr(info.value)
    # The budget (1 s), plus at most one attempt (two tries by s3fs): well under 8 s.
    assert 0.9 <= elapsed < 8, elapsed
    proxy.up()
    if action == "write":
        call(store)  # and once the store is back, the same store object works again


def test_once_a_store_was_given_up_on_operations_fail_fast_until_it_answers(
    moto_proxy: tuple[FaultProxy, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing run's way out (sinks flushing on close, other workers) must not wait out the
    whole retry budget once per operation."""
    proxy, bucket = moto_proxy
    monkeypatch.setenv(RETRY_SECONDS_ENV, "1")
    store, other = Store(f"s3://{bucket}/a"), Store(f"s3://{bucket}/b")  # same bucket

    def timed(call: Callable[[], object]) -> tuple[float, str]:
        started = time.monotonic()
        try:
            call()
        except StoreError as exc:
            return time.monotonic() - started, str(exc)
        return time.monotonic() - started, "ok"

    proxy.down()
    first, message = timed(lambda: store.write_bytes("k", b"v"))
    assert first >= 0.9, message
    assert "(and earlier operations)" not in message
    for call in (lambda: store.write_bytes("k", b"v"), lambda: other.listdir("")):
        fast, message = timed(call)
        assert fast < 0.9, message
        assert "store unreachable after 1 attempt over" in message
        assert "(and earlier operations)" in message
    proxy.up()
    assert timed(lambda: other.write_bytes("k", b"v"))[1] == "ok"  # its one attempt got through
    proxy.reset_next(2, when="request")  # it answered: transient faults are retried again
    assert timed(lambda: store.write_bytes("k", b"v"))[1] == "ok"
    proxy.down()
    again, message = timed(lambda: store.read_bytes("k"))
    assert again >= 0.9, message


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
        started = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
            )
        finally:
            chaos.stop()
        elapsed = time.monotonic() - started
        stats = proxy.stats()

    assert proc.returncode == 0, proc.stderr
    # Every fault fired while the run was going, and the run went on after the last one.
    assert all(s.fired_at is not None for s in steps), [(s.name, s.fired_at) for s in steps]
    assert stats.requests > max(s.fired_at or 0 for s in steps) + 5, stats
    assert stats.resets >= 12, stats
    assert stats.errors == 5, stats
    assert stats.stalled == 1, stats
    assert elapsed >= 3.0  # the stall held the run up
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "panicked" not in proc.stderr, proc.stderr

    got = outputs(Store(url))  # read back straight from moto, not through the proxy
    assert_same_outputs(got, reference)
    check_summary(tmp_path / "summary.json", reference)


# --- a store that stays down, then comes back ---------------------------------------------------

DOWN_AFTER_REQUESTS = 30
DOWN_AFTER_SECONDS = 1.2  # at least two 0.5 s snapshots before the outage
RETRY_SECONDS_WHEN_DOWN = 2


@dataclasses.dataclass
class Outage:
    secret: str
    access_key: str
    bucket: str
    failed: subprocess.CompletedProcess[str]
    failed_seconds: float
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

        started = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            while proc.poll() is None and (
                proxy.stats().requests < DOWN_AFTER_REQUESTS
                or time.monotonic() - started < DOWN_AFTER_SECONDS
            ):
                time.sleep(0.005)
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the run ended (exit {proc.returncode}) before the outage:\n{err}")
            proxy.down()
            weed.stop()
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        failed = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        failed_seconds = time.monotonic() - started
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
        yield Outage(secret, access_key, bucket, failed, failed_seconds, resumed, summary, got)


def test_a_store_down_for_good_stops_the_run(outage: Outage) -> None:
    assert outage.failed.returncode != 0
    # The retry budget is 3 s per operation: the run gives up soon, it does not hang.
    assert outage.failed_seconds < 45


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


# A sink partition holding rows when another step fails: Bytewax drops it while unwinding and its
# close() tries to write them to a store that is down. Deterministic, no S3 needed.
ABORT_REPRO = """
import sys
from datetime import timedelta
import pyarrow as pa
import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource
from obsflow.connectors.errors import StoreError
from obsflow.connectors.sinks import ChunkSink
from obsflow.connectors.store import Store
from obsflow.flows.runner import run_flow

DOWN = False

class FlakyStore(Store):
    def write_bytes(self, rel, data):
        if DOWN:
            raise StoreError(f"cannot write {self.uri(rel)}: store unreachable (simulated)")
        super().write_bytes(rel, data)

def step(item):
    global DOWN
    if item == "fail":  # the sink holds rows 1 and 2 (same epoch, not flushed yet)
        DOWN = True
        raise StoreError("cannot write s3://b/captures/c/x: store unreachable (simulated)")
    return ("0", pa.table({"x": [item]}))

flow = Dataflow("repro")
items = op.input("in", flow, TestingSource([1, 2, "fail"], batch_size=1))
sink = ChunkSink(FlakyStore("memory://abort-repro"), "deadletter", "r1")
op.output("out", op.map("step", items, step), sink)
try:
    run_flow(flow, 1)
except Exception as exc:
    cause = exc
    while cause is not None and not isinstance(cause, StoreError):
        cause = cause.__cause__
    print(f"obsflow: error: {cause}", file=sys.stderr)
    sys.exit(1)
"""


def test_a_sink_closed_after_another_steps_error_does_not_abort_the_process() -> None:
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


@pytest.mark.xfail(
    strict=True,
    reason="Bytewax reports a Python exception in a step as a Rust panic: its message (and, "
    "with RUST_BACKTRACE=1, a stack backtrace) goes to stderr before obsflow's own line",
)
def test_a_store_down_for_good_prints_no_rust_panic(outage: Outage) -> None:
    err = outage.failed.stderr
    assert "panicked at" not in err
    assert "stack backtrace" not in err
