"""No credentials in logs, error messages, reprs or pickled flow objects.

Issue 6, must-show 5. Every test puts a distinctive secret key and access key id in the AWS
environment and looks for their bytes wherever obsflow could show or keep them: reprs of the
objects a run is made of, their pickles (what Bytewax ships and snapshots), the CLI's output on
success and on failure, the recovery snapshots, the store's own files, exception messages and
tracebacks, and DEBUG logging of a run that meets faults (so that obsflow's own retry messages
are among the logs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import secrets
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from obsflow.connectors.datasets.capture_source import CaptureSource, ReplaySpec
from obsflow.connectors.datasets.sinks import ChunkLog
from obsflow.connectors.errors import ConfigError, StoreError
from obsflow.connectors.formats.schema import REJECT_SCHEMA
from obsflow.connectors.sources.files import FileSource
from obsflow.connectors.sources.simulator import SimSource
from obsflow.connectors.storage import layout
from obsflow.connectors.storage.retry import RETRY_SECONDS_ENV, reason, redact
from obsflow.connectors.storage.store import Store
from obsflow.flows.cli.main import main
from obsflow.flows.kernels.viewdef import ViewDef
from obsflow.flows.pipeline import ingest, jobs, replay
from obsflow.flows.pipeline.finish import Finish
from obsflow.flows.steps.summary import FinishSink
from tests import s3servers
from tests.conftest import (
    ROOT,
    TEST_KEY,
    TEST_SECRET,
    create_bucket,
    on_retry_clock,
    point_aws_env,
)
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.integration  # servers, brokers, child processes (tests/conftest.py)

SECRET = "obsflow-TOPSECRET-" + secrets.token_hex(12)
ACCESS_KEY = "obsflow-ACCESSKEY-" + secrets.token_hex(6)
SIM = "sim://?sources=3&channels=temperature,pressure&rate=50&duration=3m&seed=5"
TINY = "sim://?sources=1&rate=5&duration=10s&seed=5"
VIEWS = (ViewDef("s10", "tumbling", size=10 * 10**9, aggregates=("count", "mean")),)


def leaks(blob: str | bytes, *words: str) -> list[str]:
    """Which of ``words`` occur in ``blob`` (as UTF-8 bytes for bytes)."""
    data = blob if isinstance(blob, bytes) else blob.encode()
    return [w for w in words if w.encode() in data]


def assert_clean(blob: str | bytes, what: str, *extra: str) -> None:
    found = leaks(blob, SECRET, ACCESS_KEY, *extra)
    assert not found, f"{what} shows {found}"


@pytest.fixture
def secret_env(moto_server: s3servers.MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on moto (which takes any credentials), with the distinctive credentials
    in the AWS environment; the bucket's name."""
    bucket = create_bucket(moto_server.endpoint_url, TEST_KEY, TEST_SECRET)
    point_aws_env(monkeypatch, moto_server.endpoint_url, ACCESS_KEY, SECRET)
    return bucket


@pytest.fixture
def faulty(
    moto_server: s3servers.MotoServer, secret_env: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultProxy]:
    """Route the AWS environment through a proxy that resets and throttles some requests."""
    with FaultProxy((s3servers.HOST, moto_server.port)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint_url)
        proxy.reset_next(3, when="request")
        proxy.reset_next(2, when="response")
        proxy.fail_next(3, status=503)
        yield proxy


def flow_parts(flow: Dataflow) -> list[Source[object] | Sink[object]]:
    """Every Source and Sink in a built dataflow, however deeply nested."""
    found: list[Source[object] | Sink[object]] = []
    todo = list(flow.substeps)
    while todo:
        step = todo.pop()
        todo += getattr(step, "substeps", [])
        for f in dataclasses.fields(step):
            value = getattr(step, f.name)
            if isinstance(value, Source | Sink):
                found.append(value)
    return found


# --- reprs and pickles ----------------------------------------------------------------------------


def test_reprs_and_pickles_of_what_a_flow_is_made_of_hold_no_credentials(
    secret_env: str, tmp_path: Path
) -> None:
    url = f"s3://{secret_env}/obsflow"
    store = Store(url)
    store.write_bytes("probe", b"x")  # the filesystem now has a session with the credentials
    for obj in (store, store.fs, store.fs.storage_options, store.retry):
        assert_clean(repr(obj), f"repr of {type(obj).__name__}")
        assert_clean(str(obj), f"str of {type(obj).__name__}")
    assert_clean(pickle.dumps(store), "pickled Store")
    assert pickle.loads(pickle.dumps(store)) == store

    icfg = ingest.IngestConfig(inputs=(SIM,), store=url, capture="c", views=VIEWS)
    rcfg = replay.ReplayConfig(capture="c", views=VIEWS, store=url)
    for cfg in (icfg, rcfg, rcfg.spec):
        assert_clean(repr(cfg), f"repr of {type(cfg).__name__}")
        assert_clean(pickle.dumps(cfg), f"pickled {type(cfg).__name__}")

    # A bytewax 0.21 Dataflow cannot be pickled at all (the @operator decorator re-creates the
    # step classes, and steps hold lambdas), and Bytewax never pickles one: every process builds
    # its own. What it could ship are the sources and sinks, so each one is pickled here.
    # (Their snapshots are what Bytewax does pickle: see the recovery check below.)
    # A replay's flow is built for a capture that exists (it reads the capture's metadata).
    jobs.ingest(
        ingest.IngestConfig(inputs=(TINY,), store=url, capture="c", views=VIEWS, progress=False)
    )
    flows = [ingest.dataflow(icfg), replay.dataflow(rcfg)]
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(flows[0])
    parts: list[object] = [p for f in flows for p in flow_parts(f)]
    kinds = {type(p) for p in parts}
    assert {SimSource, FinishSink, CaptureSource} <= kinds, kinds
    # The record logs (late readings, dead letters) are written by ChunkLogs inside the steps;
    # what travels with the flow is the Finish that commits the run.
    log = ChunkLog(store, "deadletter", "r1", 0, layout.DEADLETTER_SCHEMA)
    finish = Finish(store=url, capture="c", run="r1", kind="ingest", base=None)
    parts += [
        FileSource([str(tmp_path / "in.parquet"), f"{url}/in.csv"]),
        SimSource(SIM),
        CaptureSource(store, ReplaySpec("c")),
        log,
        finish,
        FinishSink(finish),
    ]
    for part in parts:
        assert_clean(repr(part), f"repr of {type(part).__name__}")
        blob = pickle.dumps(part)
        assert_clean(blob, f"pickled {type(part).__name__}")
        pickle.loads(blob)  # and it comes back (rebuilt from the URL, credentials from the env)


# --- a whole run ----------------------------------------------------------------------------------


def test_a_successful_s3_ingest_shows_and_keeps_no_credentials(
    faulty: FaultProxy, secret_env: str, tmp_path: Path
) -> None:
    url = f"s3://{secret_env}/obsflow"
    recovery = tmp_path / "recovery"
    cmd = [
        sys.executable,
        "-m",
        "obsflow.flows.cli.main",
        "ingest",
        SIM,
        "--store",
        url,
        "--capture",
        "c",
    ]
    cmd += ["--summary", str(tmp_path / "summary.json"), "--recovery", str(recovery)]
    cmd += ["--snapshot-interval", "0.2"]  # progress and summary lines stay on: no -q
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert faulty.stats().faults >= 5  # the run met the faults: retry messages were printed
    assert "retrying" in proc.stderr
    assert_clean(proc.stdout, "ingest stdout")
    assert_clean(proc.stderr, "ingest stderr")
    assert_clean((tmp_path / "summary.json").read_bytes(), "the run summary")
    # Bytewax's recovery partitions hold pickled snapshots of every source, sink and state.
    files = [p for p in recovery.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite3" for p in files)
    for path in files:
        assert_clean(path.read_bytes(), f"recovery file {path.name}")
    # Everything the run put in the store.
    store = Store(url)
    rels = list(store.walk_files())
    assert any(r.startswith("captures/c/") for r in rels)
    for rel in rels:
        assert_clean(store.read_bytes(rel), f"store object {rel}")


def test_debug_logs_of_a_run_hold_no_secret(
    faulty: FaultProxy,
    secret_env: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"s3://{secret_env}/obsflow"
    noisy = ("botocore", "aiobotocore", "s3fs", "fsspec", "obsflow")
    before = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in noisy}
    with caplog.at_level(logging.DEBUG):
        code = main(["ingest", SIM, "--store", url, "--capture", "c", "-q"])
        assert main(["capture", "info", "c", "--store", url]) == 0
        assert main(["views", "list", "--store", url]) == 0
    assert code == 0
    assert faulty.stats().faults >= 5
    out, err = capsys.readouterr()
    assert_clean(out + err, "CLI output")

    records = caplog.records
    ours = [r for r in records if r.name.startswith("obsflow")]
    assert any("retrying" in r.getMessage() for r in ours), "obsflow logged no retry"
    assert any(r.name.startswith("s3fs") for r in records)
    assert any(r.name.startswith("botocore") for r in records)
    for r in records:
        text = r.getMessage() + (r.exc_text or "") + repr(r.args)
        # The secret key is never logged, by anyone (signing only uses it in an HMAC).
        assert_clean(text.replace(ACCESS_KEY, ""), f"log record of {r.name}")
        # botocore's own DEBUG output shows the access key id in the Authorization header it
        # sends; that is botocore's business, and obsflow never turns botocore DEBUG on.
        # obsflow's, s3fs's and fsspec's records must not show it.
        if not r.name.startswith(("botocore", "aiobotocore", "urllib3")):
            assert_clean(text, f"log record of {r.name}")
    after = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in noisy}
    assert after == before  # obsflow did not set levels or add handlers


def test_obsflow_never_turns_botocore_debug_logging_on(secret_env: str) -> None:
    store = Store(f"s3://{secret_env}/obsflow")
    store.write_bytes("k", b"v")
    for name in ("botocore", "aiobotocore", "s3fs", "obsflow", "obsflow.store"):
        logger = logging.getLogger(name)
        assert logger.level == logging.NOTSET, (name, logger.level)
        assert logger.getEffectiveLevel() > logging.DEBUG, name
        added = [h for h in logger.handlers if not isinstance(h, logging.NullHandler)]
        assert not added, (name, added)


# --- failures -------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrong", ["secret", "access_key"])
def test_wrong_credentials_on_seaweedfs_fail_cleanly_without_showing_them(
    seaweed: s3servers.SeaweedServer,
    seaweed_env: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    wrong: str,
) -> None:
    url = f"s3://{seaweed_env}/obsflow"
    if wrong == "secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    real = (seaweed.secret_key, seaweed.access_key)

    # In this process: the error, its repr and its whole traceback (botocore's error included).
    store = Store(url)
    backoff = on_retry_clock(store)
    with pytest.raises(StoreError) as info:
        store.write_bytes("k", b"v")
    assert backoff.sleeps == []  # refused credentials are not retried (for 30 s)
    assert "store unreachable" not in str(info.value)
    full = "".join(traceback.format_exception(info.value))
    for text, what in ((str(info.value), "message"), (repr(info.value), "repr"), (full, "tb")):
        assert_clean(text, f"the StoreError's {what}", *real)

    # Through the CLI: a clean one-line error, no credentials.
    proc = subprocess.run(
        [sys.executable, "-m", "obsflow.flows.cli.main", "ingest", SIM, "--store", url, "-q"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("obsflow: error: cannot "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert_clean(proc.stdout + proc.stderr, "CLI output", *real)


def test_an_unreachable_endpoint_fails_cleanly_without_showing_credentials(
    secret_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = s3servers.free_port()  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{s3servers.HOST}:{port}")
    monkeypatch.setenv(RETRY_SECONDS_ENV, "1")
    url = f"s3://{secret_env}/obsflow"
    with pytest.raises(StoreError, match="store unreachable after") as info:
        Store(url).read_bytes("k")
    assert_clean("".join(traceback.format_exception(info.value)), "the traceback")
    proc = subprocess.run(
        [sys.executable, "-m", "obsflow.flows.cli.main", "ingest", SIM, "--store", url, "-q"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "store unreachable after" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert_clean(proc.stdout + proc.stderr, "CLI output")


@pytest.mark.parametrize("transient", [False, True])
def test_a_backend_message_that_echoes_a_credential_is_masked(
    secret_env: str, monkeypatch: pytest.MonkeyPatch, transient: bool
) -> None:
    monkeypatch.setenv(RETRY_SECONDS_ENV, "0.3")
    store = Store(f"s3://{secret_env}/obsflow")
    kind = ConnectionResetError if transient else OSError

    def echo(*args: object, **kwargs: object) -> None:
        raise kind(f"denied for key {ACCESS_KEY} with secret {SECRET}")

    monkeypatch.setattr(store.fs, "pipe_file", echo)
    with pytest.raises(StoreError) as info:
        store.write_bytes("k", b"v")
    message = str(info.value)
    assert "denied for key *** with secret ***" in message
    assert_clean(message, "the StoreError")
    assert ("store unreachable" in message) is transient
    assert json.dumps(message)  # one line of plain text
    assert "\n" not in message


def test_a_record_log_whose_backend_echoes_a_credential_fails_masked(
    secret_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RETRY_SECONDS_ENV, "0.3")
    store = Store(f"s3://{secret_env}/obsflow")
    log = ChunkLog(store, "deadletter", "r1", 0, layout.DEADLETTER_SCHEMA)
    rejected = pa.table(
        {
            "origin": ["in.csv"],
            "row": [1],
            "reason": ["bad_time"],
            "message": ["time 'yesterday' is not a time"],
            "raw": ['{"time": "yesterday"}'],
        },
        schema=REJECT_SCHEMA,
    )
    log.append(rejected)
    log.flush()  # a chunk that reaches the store holds the records, nothing of the session
    (rel,) = [r for r in store.walk_files() if r.endswith(".parquet")]
    assert_clean(store.read_bytes(rel), f"log chunk {rel}")

    def echo(*args: object, **kwargs: object) -> None:
        raise ConnectionResetError(f"reset for key {ACCESS_KEY} with secret {SECRET}")

    monkeypatch.setattr(store.fs, "pipe_file", echo)
    log.append(rejected)
    with pytest.raises(StoreError) as info:
        log.flush()
    message = str(info.value)
    assert "store unreachable" in message
    assert "reset for key *** with secret ***" in message
    assert "part-0000-000001.parquet" in message  # it names the object it could not write
    assert_clean(message, "the StoreError")
    assert_clean(repr(info.value), "the StoreError's repr")


def test_redact_masks_every_credential_variable_and_reason_is_one_line(
    secret_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "obsflow-SESSIONTOKEN-" + secrets.token_hex(8)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    text = f"key={ACCESS_KEY}; secret={SECRET}; token={token}"
    assert redact(text) == "key=***; secret=***; token=***"
    assert redact("nothing secret here") == "nothing secret here"
    failure = PermissionError(f"Access Denied\n  signed with {ACCESS_KEY}:{SECRET}\n")
    assert reason(failure) == "Access Denied signed with ***:***"
    assert reason(ConnectionResetError()) == "ConnectionResetError"


# --- broker credentials ---------------------------------------------------------------------------


def test_broker_credentials_from_the_environment_are_never_shown_or_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NATS server that needs a user and password: a live ingest with them in the environment
    works and shows or keeps them nowhere; with a wrong password it fails in one line without
    them; a URL that carries credentials is refused without echoing them."""
    from obsflow.connectors.sources.brokers import BrokerURL, connect
    from obsflow.flows.pipeline.live import LiveConfig
    from tests.brokers import NatsServer, publish

    server = NatsServer(tmp_path / "js", user="obsflow", password=SECRET).start()
    try:
        url = server.url.replace("nats://", f"nats://obsflow:{SECRET}@")
        publish(url, "OBS", ["obs.>"], [("obs.a", b'{"source": "a", "time": 1, "value": 2}')])
        env = {**os.environ, "OBSFLOW_NATS_USER": "obsflow", "OBSFLOW_NATS_PASSWORD": SECRET}
        store = tmp_path / "store"
        cmd = [
            sys.executable,
            "-m",
            "obsflow.flows.cli.main",
            "ingest",
            server.url,
            "--topic",
            "obs.>",
        ]
        cmd += ["--consumer", "c", "--store", str(store), "--stop-when-idle", "1s"]
        cmd += ["--summary", str(tmp_path / "summary.json")]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads((tmp_path / "summary.json").read_text())["accepted"] == 1
        assert_clean(done.stdout + done.stderr, "live ingest output")
        for path in [p for p in tmp_path.rglob("*") if p.is_file() and "js" not in p.parts]:
            assert_clean(path.read_bytes(), f"file {path.name}")

        # In this process: the client and what a session is made of.
        monkeypatch.setenv("OBSFLOW_NATS_USER", "obsflow")
        monkeypatch.setenv("OBSFLOW_NATS_PASSWORD", SECRET)
        client = connect(server.url, ["obs.>"], "c")
        try:
            assert_clean(repr(client), "repr of the client")
        finally:
            client.close()
        config = LiveConfig(ingest=ingest.IngestConfig(inputs=(server.url,), store=str(store)))
        assert_clean(pickle.dumps(config), "a pickled live config")
        assert_clean(repr(config), "repr of a live config")

        # A wrong password: one line, no secret, no traceback.
        bad = {**env, "OBSFLOW_NATS_PASSWORD": SECRET + "x", "OBSFLOW_BROKER_RETRY_SECONDS": "2"}
        done = subprocess.run(cmd, env=bad, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0
        assert "cannot reach NATS" in done.stderr
        assert "Traceback" not in done.stderr
        assert_clean(done.stdout + done.stderr, "a failed login")
    finally:
        server.stop()
    with pytest.raises(ConfigError) as refused:
        BrokerURL.parse(f"nats://obsflow:{SECRET}@127.0.0.1:4222")
    assert "credentials in a broker URL are refused" in str(refused.value)
    assert_clean(str(refused.value), "the refusal")
    with pytest.raises(ConfigError) as refused:
        BrokerURL.parse(f"natz://obsflow:{SECRET}@127.0.0.1:4222")
    assert_clean(str(refused.value), "a bad scheme's error")


def live_ingest_cmd(url: str, topic: str, store: Path, summary: Path) -> list[str]:
    cmd = [sys.executable, "-m", "obsflow.flows.cli.main", "ingest", url, "--topic", topic]
    cmd += ["--consumer", "c", "--store", str(store), "--stop-when-idle", "1s"]
    return [*cmd, "--summary", str(summary)]


def test_mqtt_credentials_from_the_environment_are_never_shown_or_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Mosquitto that takes one user with a password (``password_file``, no anonymous
    clients): a live ingest with them in the environment works and shows or keeps them nowhere;
    a wrong password is refused at once in one line without them."""
    from obsflow.connectors.sources.brokers import connect
    from tests.brokers import MosquittoServer, mqtt_publish

    server = MosquittoServer(tmp_path / "mq", user="obsflow", password=SECRET).start()
    try:
        env = {**os.environ, "OBSFLOW_MQTT_USER": "obsflow", "OBSFLOW_MQTT_PASSWORD": SECRET}
        store, summary = tmp_path / "store", tmp_path / "summary.json"
        cmd = live_ingest_cmd(server.url, "obs/#", store, summary)
        # A first session makes the persistent session that queues what is published next.
        assert subprocess.run(cmd, env=env, capture_output=True, timeout=120).returncode == 0
        body = b'{"source": "a", "time": 1, "value": 2}'
        assert mqtt_publish(server.url, [("obs/a", body)], login=("obsflow", SECRET)) == 1
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(summary.read_text())["accepted"] == 1
        assert_clean(done.stdout + done.stderr, "live ingest output")
        for path in [p for p in tmp_path.rglob("*") if p.is_file() and "mq" not in p.parts]:
            assert_clean(path.read_bytes(), f"file {path.name}")

        monkeypatch.setenv("OBSFLOW_MQTT_USER", "obsflow")
        monkeypatch.setenv("OBSFLOW_MQTT_PASSWORD", SECRET)
        client = connect(server.url, ["obs/#"], "c")
        try:
            assert_clean(repr(client), "repr of the client")
        finally:
            client.close()

        bad = {**env, "OBSFLOW_MQTT_PASSWORD": SECRET + "x", "OBSFLOW_BROKER_RETRY_SECONDS": "30"}
        connected = server.connections()
        done = subprocess.run(cmd, env=bad, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0
        assert server.connections() == connected + 1  # refused once, not retried for 30 s
        assert "refused the login" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert_clean(done.stdout + done.stderr, "a refused login")
    finally:
        server.stop()


def test_kafka_credentials_from_the_environment_are_never_shown_or_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SASL credentials for Kafka from the environment. librdkafka's mock cluster (the only
    Kafka here) has no SASL, so the login cannot succeed: the session stops after the broker
    budget in one line that holds no secret, and neither the client's repr nor its output
    shows it."""
    from obsflow.connectors.sources.brokers import connect
    from tests.brokers import KafkaMock

    mock = KafkaMock()
    try:
        mock.publish([("obs.a", b'{"source": "a", "time": 1, "value": 2}')])
        sasl = {
            "OBSFLOW_KAFKA_USER": "obsflow",
            "OBSFLOW_KAFKA_PASSWORD": SECRET,
            "OBSFLOW_KAFKA_PROTOCOL": "SASL_PLAINTEXT",
            "OBSFLOW_KAFKA_MECHANISM": "PLAIN",
            "OBSFLOW_BROKER_RETRY_SECONDS": "3",
        }
        cmd = live_ingest_cmd(mock.url, "obs.a", tmp_path / "store", tmp_path / "summary.json")
        done = subprocess.run(
            cmd, env={**os.environ, **sasl}, capture_output=True, text=True, timeout=120
        )
        assert done.returncode != 0
        assert "unavailable for 3 s" in done.stderr, done.stderr
        # One line says it (after the progress line): not librdkafka's many retry lines.
        assert len(done.stderr.strip().splitlines()) <= 2, done.stderr
        assert "Traceback" not in done.stderr
        assert_clean(done.stdout + done.stderr, "a Kafka session that cannot log in")
        for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
            assert_clean(path.read_bytes(), f"file {path.name}")

        for name, value in sasl.items():
            monkeypatch.setenv(name, value)
        client = connect(mock.url, ["obs.a"], "c")
        try:
            assert_clean(repr(client), "repr of the client")
        finally:
            client.close()
    finally:
        mock.stop()
