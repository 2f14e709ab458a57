"""Shared fixtures: paths to sample data, small helpers for reading stores, S3 servers."""

from __future__ import annotations

import dataclasses
import functools
import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pytest

from obsflow.connectors.storage.store import Store
from tests import s3servers

ROOT = Path(__file__).resolve().parent.parent
BUOY = ROOT / "data" / "buoy_sst.parquet"
BUOY_MAP = "source=source_id,time=event_time"


@pytest.fixture
def buoy() -> Path:
    return BUOY


CRASH_VIEWS = """
[[view]]
name = "s10"
size = "10s"
aggregates = ["count", "mean", "min", "max", "std", "first", "last", "p50"]
[[view]]
name = "sess"
kind = "session"
gap = "50ms"
aggregates = ["count", "sum"]
"""
"""Views the crash and fault tests rebuild and compare: a tumbling and a session view."""


def sorted_frame(df: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
    """A frame in a canonical row order, for comparing outputs regardless of arrival order."""
    keys = keys or ["source", "channel", "time", "seq"]
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


class RetryClock:
    """A store's retry clock and sleep: time moves only by the backoff the store asks for."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def on_retry_clock(store: Store) -> RetryClock:
    """Give ``store``'s retry policy a ``RetryClock``: its budget is spent by backoff alone."""
    assert store.retry is not None
    fake = RetryClock()
    store.retry = dataclasses.replace(store.retry, clock=fake.clock, sleep=fake.sleep)
    return fake


# --- tiers ----------------------------------------------------------------------------------------
#
# A test is `integration` (run by `make test`, not by `make check`) when it starts a server, a
# broker, a browser, a notebook kernel or a child process, or runs a long flow. Marked:
# - per module (``pytestmark = pytest.mark.integration``) where that is what the module tests;
# - per test (``@pytest.mark.integration``) in modules of unit tests;
# - here, by the fixtures it uses: an S3 server fixture, or a backend parameter that gets one.
# Everything else is a unit test: in-process, local or memory stores, seconds at most.

SERVER_FIXTURES = frozenset({"moto_server", "seaweed", "s3_env", "seaweed_env"})
SERVER_BACKENDS = frozenset({"s3", "moto", "seaweed"})  # backend parameters that start a server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())) or any(
            isinstance(v, str) and v in SERVER_BACKENDS for v in params.values()
        ):
            item.add_marker(pytest.mark.integration)


# --- S3 servers and stores ----------------------------------------------------------------------
#
# Servers start once per session (on first use) and stop at its end. Each test that uses S3 gets
# a fresh bucket and the standard AWS variables pointing at the server; ``Store("s3://...")``
# builds its filesystem with ``skip_instance_cache=True`` and so reads them on every
# construction.

TEST_KEY = "testing-key"
TEST_SECRET = "testing-secret"
SEAWEED_KEY = "obsflow-test"


def unique_name(prefix: str = "obsflow") -> str:
    """A name no other test uses: valid as a bucket, a memory:// root and a capture name."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@functools.cache
def admin_client(endpoint_url: str, key: str, secret: str) -> Any:
    """One botocore S3 client per server for the whole session: building one costs ~0.2 s."""
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    )


def create_bucket(endpoint_url: str, key: str, secret: str) -> str:
    """Create a fresh, uniquely named bucket on a server; returns its name."""
    bucket = unique_name()
    admin_client(endpoint_url, key, secret).create_bucket(Bucket=bucket)
    return bucket


def point_aws_env(
    monkeypatch: pytest.MonkeyPatch, endpoint_url: str, key: str, secret: str
) -> None:
    """Set the standard AWS variables for a server, and clear those that would override them."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3servers.s3_env(endpoint_url, key, secret).items():
        monkeypatch.setenv(name, value)
    # The servers listen on loopback: never route them through an environment proxy.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1"])))


@pytest.fixture(scope="session")
def moto_server() -> Iterator[s3servers.MotoServer]:
    """A moto S3 server on 127.0.0.1 for the whole session (accepts any credentials)."""
    with s3servers.MotoServer() as server:
        yield server


@pytest.fixture
def s3_env(moto_server: s3servers.MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the moto server, with the AWS environment pointing at it; its name."""
    bucket = create_bucket(moto_server.endpoint_url, TEST_KEY, TEST_SECRET)
    point_aws_env(monkeypatch, moto_server.endpoint_url, TEST_KEY, TEST_SECRET)
    return bucket


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3servers.SeaweedServer]:
    """SeaweedFS (``weed mini``) on 127.0.0.1 for the whole session; it checks signatures.

    Credentials: ``seaweed.access_key`` / ``seaweed.secret_key`` (a fresh secret per session).
    """
    data_dir = tmp_path_factory.mktemp("seaweed")
    secret = f"obsflow-test-secret-{secrets.token_hex(8)}"
    with s3servers.SeaweedServer(data_dir, SEAWEED_KEY, secret) as server:
        yield server


@pytest.fixture
def seaweed_env(seaweed: s3servers.SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on SeaweedFS, with the AWS environment (right credentials) pointing at it."""
    bucket = create_bucket(seaweed.endpoint_url, seaweed.access_key, seaweed.secret_key)
    point_aws_env(monkeypatch, seaweed.endpoint_url, seaweed.access_key, seaweed.secret_key)
    return bucket


@pytest.fixture(params=["local", "memory", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store URL on each backend: the store conformance suite's parameter.

    Every root sits one level below a folder of its own (``tmp_path/store``,
    ``memory://<unique>/store``, ``s3://<fresh bucket>/store``), so tests can check that nothing
    was written next to the store.
    """
    if request.param == "local":
        yield str(tmp_path / "store")
    elif request.param == "memory":
        name = unique_name()
        yield f"memory://{name}/store"
        fs = fsspec.filesystem("memory")
        if fs.exists(f"/{name}"):
            fs.rm(f"/{name}", recursive=True)
    else:
        bucket = request.getfixturevalue("s3_env")
        yield f"s3://{bucket}/store"
