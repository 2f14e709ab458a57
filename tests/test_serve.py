"""``obsflow serve`` (issue 14): a real server process on 127.0.0.1, read over HTTP.

The store: 20 ingest runs (commits) of 10 sources at 2 Hz, 50 s each, into a 1 s view: 10,000
view rows, with late readings and dead letters. The oracle for every response is the
Explorer's read of the same store; for events, the Explorer's view and the commit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from obsflow.connectors.datasets.channels import read_gaps, record_channels, record_gaps
from obsflow.connectors.storage import commits
from obsflow.connectors.storage.store import Store
from obsflow.flows.explore.explorer import Explorer, open_store
from obsflow.flows.serve import QUEUE_BYTES, QUEUE_EVENTS, Filters, Subscriber
from tests.s3servers import free_port

pytestmark = pytest.mark.integration  # servers, brokers, child processes (tests/conftest.py)

OBSFLOW = str(Path(sys.executable).parent / "obsflow")
RUNS, SOURCES, SECONDS_PER_RUN, HZ = 20, 10, 50, 2
T0 = pd.Timestamp("2026-06-01T00:00:00Z")
VIEWS = '[[view]]\nname = "v1s"\nsize = "1s"\naggregates = ["count", "mean", "max"]\n'
TOKEN = "s3cret-token-0123456789"


def run_file(folder: Path, r: int) -> Path:
    """Run ``r``'s readings: its 50 s of every source and, after the first run, a late
    reading and a reading without a source (a dead letter)."""
    n = SECONDS_PER_RUN * HZ
    times = T0 + pd.to_timedelta(r * SECONDS_PER_RUN + np.arange(n) / HZ, unit="s")
    frame = pd.concat(
        pd.DataFrame({"source": f"s{i:02d}", "time": times, "channel": "t", "value": r + i + 0.5})
        for i in range(SOURCES)
    )
    extra = []
    if r:  # a late reading (its window closed in run 0) and one without a source
        extra.append({"source": "s00", "time": T0 + pd.Timedelta(seconds=r + 0.25), "value": -1.0})
        extra.append({"source": "", "time": times[-1], "value": 1.0})
    extra = [{**e, "channel": "t"} for e in extra]
    frame = pd.concat([frame, pd.DataFrame(extra)], ignore_index=True)
    path = folder / f"run{r:02d}.csv"
    frame.assign(time=frame["time"].map(lambda t: t.isoformat())).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("serve")
    s = open_store(str(folder / "store"))
    for r in range(RUNS):
        s.ingest(str(run_file(folder, r)), capture="obs", views=VIEWS)
    return folder / "store"


@contextlib.contextmanager
def serving(
    store: Path | str,
    *extra: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
    kill: bool = False,
    stderr: Path | None = None,
) -> Iterator[str]:
    """``obsflow serve`` in its own process (its messages to the file ``stderr`` if given);
    yields its base URL once it answers; at the end it is stopped (SIGTERM), or killed
    (SIGKILL) with ``kill``."""
    port = port or free_port()
    proc = subprocess.Popen(
        [OBSFLOW, "serve", "--store", str(store), "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=stderr.open("w") if stderr else subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            assert proc.poll() is None, stderr.read_text() if stderr else proc.communicate()[1]
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"{base}/static/app.css", timeout=1)
                break
            assert time.monotonic() < deadline, "the server did not answer"
            time.sleep(0.1)
        yield base
    finally:
        if not kill:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        proc.kill()
        proc.wait(10)


def events(
    base: str,
    view: str,
    *,
    last_id: str | None = None,
    until_id: int | None,
    wait: float = 10,
    params: dict[str, Any] | None = None,
    out: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The events of one SSE connection (with filters ``params``), read until the event with
    id ``until_id`` (or for ``wait`` seconds when it is None); appended to ``out`` as they
    arrive, when given (another thread may watch it)."""
    headers = {"Last-Event-ID": last_id} if last_id is not None else {}
    out = [] if out is None else out
    deadline = time.monotonic() + wait
    with (
        contextlib.suppress(httpx.ReadTimeout),
        httpx.stream(
            "GET",
            f"{base}/api/views/{view}/events",
            headers=headers,
            params=params,
            timeout=wait,
        ) as response,
    ):
        assert response.status_code == 200, response.read()
        event: dict[str, Any] = {}
        for line in lines(response):
            if line.startswith(("id:", "event:", "data:")):
                field, _, value = line.partition(":")
                event[field] = value.strip()
            elif not line and "data" in event:
                event["data"] = json.loads(event["data"])
                event["at"] = time.monotonic()  # when it arrived
                out.append(event)
                if until_id is not None and event.get("id") == str(until_id):
                    break
                event = {}
            if time.monotonic() > deadline:
                break
    return out


def lines(response: httpx.Response) -> Iterator[str]:
    """The lines of a streamed body as they arrive (httpx's ``iter_lines`` is quadratic on
    the megabyte lines of big events)."""
    buffer = bytearray()
    for chunk in response.iter_bytes():
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            yield buffer[start:end].rstrip(b"\r").decode()
            start = end + 1
        del buffer[:start]


def rows_of(evts: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [r for e in evts for r in e["data"]["rows"]]
    frame = pd.DataFrame(rows, columns=["source", "channel", "window_start", "run", "mean"])
    return frame.assign(window_start=pd.to_datetime(frame["window_start"], utc=True))


def view_frame(explorer: Explorer) -> pd.DataFrame:
    return explorer.view("v1s")[["source", "channel", "window_start", "run", "mean"]]


def key_sorted(frame: pd.DataFrame) -> pd.DataFrame:
    keys = ["source", "channel", "window_start"]
    return frame.sort_values(keys).reset_index(drop=True)


def test_a_reconnect_with_each_possible_last_event_id_gets_exactly_the_rows_it_missed(
    store: Path,
) -> None:
    explorer = open_store(str(store))
    view = view_frame(explorer)
    assert len(view) >= 10_000
    log = commits.read_log(Store(str(store)), "obs")
    commit_of = {e.run: e.n for e in log}
    head = log[-1].n
    with serving(store) as base:
        first = events(base, "v1s", until_id=head)
        assert first[-1]["id"] == str(head)
        assert {e["event"] for e in first} == {"snapshot"}
        pd.testing.assert_frame_equal(key_sorted(rows_of(first)), key_sorted(view))
        for k in range(head + 1):
            got = rows_of(
                events(
                    base,
                    "v1s",
                    last_id=str(k),
                    until_id=head if k < head else None,
                    wait=10 if k < head else 1.5,
                )
            )
            assert not got.duplicated(["source", "channel", "window_start"]).any(), k
            want = view[view["run"].map(commit_of) > k]
            assert len(got) == len(want), k
            if len(want):  # (at the head nothing comes: empty frames have other dtypes)
                pd.testing.assert_frame_equal(key_sorted(got), key_sorted(want), obj=f"after {k}")
        # The same with a filter, the one stream of a page showing two series.
        two = {"source": ["s01", "s07"]}
        for k in (0, head // 2, head - 1):
            got = rows_of(events(base, "v1s", last_id=str(k), until_id=head, params=two))
            want = view[(view["run"].map(commit_of) > k) & view["source"].isin(two["source"])]
            pd.testing.assert_frame_equal(key_sorted(got), key_sorted(want), obj=f"two, {k}")


FILTERS: list[dict[str, Any]] = [
    {},
    {"source": "s03"},
    {"source": ["s01", "s07"], "channel": "t"},
    {"from": "2026-06-01T00:05:00Z", "until": "2026-06-01T00:06:40Z"},
    {"source": "s09", "from": "2026-06-01T00:12:00Z"},
    {"channel": "t", "until": "2026-06-01T00:00:30Z", "limit": 17},
]


def explorer_args(f: dict[str, Any]) -> dict[str, Any]:
    names = {"source": "source", "channel": "channel", "from": "start", "until": "until"}
    return {names[k]: v for k, v in f.items() if k in names}


def by_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` sorted as the reads sort: by series, then window or time and seq."""
    keys = [k for k in ("source", "channel", "window_start", "time", "seq") if k in frame]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def pages_of(url: str, params: dict[str, Any], **kw: Any) -> list[httpx.Response]:
    """The responses of a paged read: the first, then each ``rel="next"`` link's."""
    out = [httpx.get(url, params=params, timeout=30, **kw)]
    while True:
        assert out[-1].status_code == 200, out[-1].text
        nxt = out[-1].links.get("next")
        if nxt is None:
            return out
        out.append(httpx.get(httpx.URL(url).join(nxt["url"]), timeout=30, **kw))


def decoded(response: httpx.Response, fmt: str, like: pa.Table) -> pd.DataFrame:
    """A response body as a frame with the Explorer's column types."""
    if fmt == "arrow":
        return pa.ipc.open_stream(response.content).read_all().to_pandas()
    if fmt == "csv":
        # A null is an empty field, an empty string a quoted one (as Arrow writes them).
        options = pacsv.ConvertOptions(
            column_types=like.schema, strings_can_be_null=True, quoted_strings_can_be_null=False
        )
        return pacsv.read_csv(io.BytesIO(response.content), convert_options=options).to_pandas()
    frame = pd.DataFrame(response.json(), columns=like.column_names)
    for field in like.schema:
        if pa.types.is_timestamp(field.type):
            frame[field.name] = pd.to_datetime(frame[field.name], utc=True)
    return frame.astype(like.to_pandas().dtypes.to_dict())


@pytest.mark.parametrize("fmt", ["json", "csv", "arrow"])
def test_api_responses_equal_the_explorers_reads(store: Path, fmt: str) -> None:
    explorer = open_store(str(store))
    with serving(store) as base:
        for f in FILTERS:
            params = {**f, "format": fmt}
            for what, read in (
                ("views/v1s", explorer.view_table),
                ("captures/obs", explorer.capture_table),
            ):
                want = read("v1s" if what.startswith("views") else "obs", **explorer_args(f))
                assert want.num_rows > 0, f
                pages = [decoded(r, fmt, want) for r in pages_of(f"{base}/api/{what}", params)]
                for page in pages:  # (each page sorted, at most its limit of rows)
                    assert len(page) <= f.get("limit", 10_000), f
                    pd.testing.assert_frame_equal(page, by_keys(page), obj=f"{what} {f}")
                # Every row exactly once, in all the pages.
                got = by_keys(pd.concat(pages, ignore_index=True))
                pd.testing.assert_frame_equal(got, want.to_pandas(), obj=f"{what} {f}")
        late = httpx.get(f"{base}/api/views/v1s/late", params={"format": fmt}, timeout=30)
        want_late = pa.Table.from_pandas(explorer.late("v1s"), preserve_index=False)
        assert want_late.num_rows == RUNS - 1
        pd.testing.assert_frame_equal(decoded(late, fmt, want_late), want_late.to_pandas())
        dead = httpx.get(f"{base}/api/deadletters", params={"format": fmt}, timeout=30)
        want_dead = pa.Table.from_pandas(explorer.deadletters(), preserve_index=False)
        assert want_dead.num_rows == RUNS - 1
        pd.testing.assert_frame_equal(decoded(dead, fmt, want_dead), want_dead.to_pandas())


def test_new_rows_reach_a_connected_client_within_two_seconds(tmp_path: Path) -> None:
    assert_a_new_run_arrives_within_two_seconds(str(tmp_path / "store"), tmp_path)


def test_new_rows_reach_a_connected_client_on_s3_too(s3_env: str, tmp_path: Path) -> None:
    assert_a_new_run_arrives_within_two_seconds(f"s3://{s3_env}/store", tmp_path)


def assert_a_new_run_arrives_within_two_seconds(url: str, folder: Path) -> None:
    """A run committed by another process appears on open event streams — one of the whole
    view, one of two series — as an event whose id is the new commit, holding that run's
    rows (those of the two series on the second)."""
    explorer = open_store(url)
    for r in range(2):
        explorer.ingest(str(run_file(folder, r)), capture="obs", views=VIEWS)
    st = Store(url)
    head = commits.head(st, "obs")
    got: list[dict[str, Any]] = []
    two: list[dict[str, Any]] = []
    with serving(url) as base:

        def follow(out: list[dict[str, Any]], params: dict[str, Any]) -> threading.Thread:
            return threading.Thread(
                target=lambda: out.extend(
                    events(base, "v1s", last_id=str(head), until_id=head + 1, wait=60, **params)
                )
            )

        readers = [follow(got, {}), follow(two, {"params": {"source": ["s01", "s03"]}})]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/api/status").json()["feeds"].get("v1s", {}).get(
            "subscribers", 0
        ) < len(readers):
            assert time.monotonic() < deadline, "the readers never subscribed"
            time.sleep(0.1)
        done = subprocess.run(
            [OBSFLOW, "ingest", str(run_file(folder, 2)), "--store", url, "--capture=obs", "-q"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        committed = time.monotonic()
        assert done.returncode == 0, done.stderr
        for reader in readers:
            reader.join(60)
    assert got, "no event"
    assert two, "no event of the two series"
    assert got[-1]["id"] == two[-1]["id"] == str(head + 1)
    delay = max(got[-1]["at"], two[-1]["at"]) - committed
    print(f"the new run's rows arrived {delay:.2f} s after its commit ({url.split(':')[0]})")
    assert delay < 2.0
    runs = {r["run"] for r in got[-1]["data"]["rows"]}
    assert runs == {commits.read_log(st, "obs", since=head)[0].run}
    everything = rows_of(got[-1:])
    pd.testing.assert_frame_equal(
        key_sorted(rows_of(two[-1:])),
        key_sorted(everything[everything["source"].isin(["s01", "s03"])]),
    )


ROUTES = [
    "/",
    "/views/v1s",
    "/static/app.js",
    "/api/views",
    "/api/captures",
    "/api/views/v1s",
    "/api/captures/obs",
    "/api/captures/obs/gaps",
    "/api/views/v1s/late",
    "/api/views/v1s/events",
    "/api/deadletters",
    "/api/runs",
    "/api/status",
]


def test_a_token_guards_every_route_and_names_cannot_leave_the_store(store: Path) -> None:
    refused = subprocess.run(
        [OBSFLOW, "serve", "--store", str(store), "--host", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "OBSFLOW_SERVE_TOKEN"},
    )
    assert refused.returncode == 2
    assert "give a token" in refused.stderr
    with serving(store, env={"OBSFLOW_SERVE_TOKEN": TOKEN}) as base:
        taken = subprocess.run(  # a second server on the same port: a clear refusal
            [OBSFLOW, "serve", "--store", str(store), "--port", base.rsplit(":", 1)[1]],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert taken.returncode == 2
        assert "in use (another obsflow serve?)" in taken.stderr
        assert "Ctrl-C stops" not in taken.stderr  # it never said it serves
        for route in ROUTES:
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
                r = httpx.get(base + route, headers=headers, timeout=10)
                assert r.status_code == 401, (route, headers)
                assert TOKEN not in r.text
        good = {"Authorization": f"Bearer {TOKEN}"}
        for route in ROUTES:
            if route.endswith("/events"):
                with httpx.stream("GET", base + route, headers=good, timeout=10) as r:
                    assert r.status_code == 200
                continue
            r = httpx.get(base + route, headers=good, timeout=30)
            assert r.status_code == 200, route
            assert TOKEN not in r.text
        for bad in (
            "/api/views/..%2F..%2Fetc",
            "/api/views/%2e%2e",
            "/api/captures/..%2Fviews",
            "/api/views/nope/events",
            "/api/captures/bad%20name!",
            "/api/captures/bad%20name!/gaps",
            "/api/captures/nope/gaps",
            "/api/captures/..%2F_obsflow/gaps",
            "/api/views/bad%20name!/late",
            "/api/deadletters?run=..%2F..",
            "/static/..%2Fserve.py",
            "/static/",
            "/views/..%2Fcaptures",
        ):
            r = httpx.get(base + bad, headers=good, timeout=10)
            assert r.status_code == 404, bad


def test_no_response_and_no_log_line_holds_a_credential(seaweed_env: str, tmp_path: Path) -> None:
    """A server on an S3 store (SeaweedFS, which checks signatures: the credentials are real
    and used) with a token: no response of any route — pages, rows in each format, events,
    status, errors — and nothing it logs holds the S3 key id, the secret or the token."""
    url = f"s3://{seaweed_env}/store"
    open_store(url).ingest(str(run_file(tmp_path, 0)), capture="obs", views=VIEWS)
    secrets = [os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], TOKEN]
    log = tmp_path / "serve.log"
    good = {"Authorization": f"Bearer {TOKEN}"}
    seen = 0
    with serving(url, env={"OBSFLOW_SERVE_TOKEN": TOKEN}, stderr=log) as base:
        routes = [
            *ROUTES,
            *(f"/api/views/v1s?format={f}" for f in ("csv", "arrow")),
            "/api/views/v1s?limit=x",  # 400
            "/api/views/nope",  # 404
            "/api/captures/obs?from=yesterday",  # 400
        ]
        for route in routes:
            for headers in (good, {}):
                if route.endswith("/events") and headers:
                    with httpx.stream("GET", base + route, headers=headers, timeout=10) as r:
                        body = next(r.iter_bytes())  # the snapshot
                else:
                    r = httpx.get(base + route, headers=headers, timeout=30)
                    body = r.content
                text = body.decode("latin-1") + str(r.headers)
                assert not [s for s in secrets if s in text], route
                seen += len(body)
        bad_id = {**good, "Last-Event-ID": "999"}
        r = httpx.get(f"{base}/api/views/v1s/events", headers=bad_id, timeout=10)
        assert r.status_code == 400
        assert not [s for s in secrets if s in r.text]
    assert seen > 100_000  # (rows were read from S3 and sent: the routes did their work)
    assert not [s for s in secrets if s in log.read_text()]


def big_run(folder: Path, r: int, sources: int = 50, seconds: int = 100) -> Path:
    """A run of ``sources`` series over ``seconds`` at 2 Hz: 5,000 new view rows (~1 MB of
    events), to fill a stalled client's socket buffers quickly."""
    times = T0 + pd.to_timedelta(r * seconds + np.arange(seconds * HZ) / HZ, unit="s")
    frame = pd.concat(
        pd.DataFrame({"source": f"b{i:02d}", "time": times, "channel": "t", "value": float(i)})
        for i in range(sources)
    )
    path = folder / f"big{r:02d}.csv"
    frame.assign(time=frame["time"].map(lambda t: t.isoformat())).to_csv(path, index=False)
    return path


def test_a_stalled_client_slows_nobody_and_is_dropped(tmp_path: Path) -> None:
    """A client that never reads while 6 big commits land: a reading client gets the first
    commit's event while the stalled stream is still attached (the fan-out waits for nobody),
    then every other one, and the server closes the stalled connection (its send timeout), with
    one line on its log."""
    store = tmp_path / "store"
    open_store(str(store)).ingest(str(big_run(tmp_path, 0)), capture="big", views=VIEWS)
    st = Store(str(store))
    head = commits.head(st, "big")
    got: list[dict[str, Any]] = []
    log = tmp_path / "serve.log"
    with serving(store, "--poll", "0.2", stderr=log) as base:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", int(base.rsplit(":", 1)[1])))
        stalled.sendall(
            b"GET /api/views/v1s/events HTTP/1.1\r\nHost: 127.0.0.1\r\nLast-Event-ID: 1\r\n\r\n"
        )

        def read() -> None:
            events(base, "v1s", last_id=str(head), until_id=head + 6, wait=120, out=got)

        def subscribers() -> int:
            feeds = httpx.get(f"{base}/api/status").json()["feeds"]  # (none before a stream)
            return int(feeds.get("v1s", {}).get("subscribers", 0))

        reader = threading.Thread(target=read)
        reader.start()
        deadline = time.monotonic() + 60
        while subscribers() < 2:  # both streams follow the view
            assert time.monotonic() < deadline, "the streams never subscribed"
            time.sleep(0.05)
        committed = []
        for r in range(1, 7):
            path = big_run(tmp_path, r)
            done = subprocess.run(
                [OBSFLOW, "ingest", str(path), "--store", str(store), "--capture=big", "-q"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            committed.append(str(head + r))
            if r == 1:
                # The stalled client cannot take a megabyte event; the reader has it while
                # the stalled stream is still attached, not once the server gave up on it.
                deadline = time.monotonic() + 60
                while str(head + 1) not in [e["id"] for e in got]:
                    assert time.monotonic() < deadline, "the reader never got the first commit"
                    time.sleep(0.02)
                assert subscribers() == 2
        reader.join(120)
        assert [e["id"] for e in got] == committed
        # The server drops the stalled stream (a send blocked for 10 s)...
        deadline = time.monotonic() + 60
        while subscribers():
            assert time.monotonic() < deadline, "the stalled stream was never dropped"
            time.sleep(0.5)
        # ... and closes its connection: drained now, it ends.
        stalled.settimeout(5)
        total, ends = 0, time.monotonic() + 30
        while chunk := stalled.recv(1 << 20):
            total += len(chunk)
            assert time.monotonic() < ends, "the stalled connection stays open"
        stalled.close()
    assert total > 1 << 20  # it was sent a lot before the server gave up on it
    messages = log.read_text()
    assert "dropped an event stream whose client stopped reading" in messages
    assert "Traceback" not in messages


def test_a_subscriber_too_far_behind_is_dropped_and_its_stream_ends() -> None:
    """A client that reads, but slower than commits land, falls behind by events or by bytes:
    past either bound its queue is emptied and its stream ends (it reconnects and catches up
    from its last id), and the events it read before are the first ones, in order."""

    async def fill(sub: Subscriber, data: bytes) -> tuple[int, list[Any]]:
        offered = 0
        while sub.offer(offered + 1, data):
            offered += 1
        return offered, [await sub.next()]

    by_events = Subscriber(Filters())
    offered, got = asyncio.run(fill(by_events, b"x"))
    assert offered == QUEUE_EVENTS
    assert got == [None]

    big = b"x" * (QUEUE_BYTES // 10 + 1)
    by_bytes = Subscriber(Filters())

    async def read_two_then_fill() -> tuple[list[Any], int, list[Any]]:
        by_bytes.offer(1, big)
        by_bytes.offer(2, big)
        first = [await by_bytes.next(), await by_bytes.next()]
        offered, rest = await fill(by_bytes, big)
        return first, offered, rest

    first, offered, rest = asyncio.run(read_two_then_fill())
    assert first == [(1, big), (2, big)]
    assert offered == 9  # nine fit in the byte budget, the tenth does not
    assert rest == [None]
    assert by_bytes.queued_bytes == 0

    async def waiting_reader_then_huge_event() -> Any:
        sub = Subscriber(Filters())
        reader = asyncio.create_task(sub.next())  # waits on an empty queue
        await asyncio.sleep(0)
        assert not sub.offer(1, b"x" * (QUEUE_BYTES + 1))  # one event over the budget
        return await asyncio.wait_for(reader, 5)

    assert asyncio.run(waiting_reader_then_huge_event()) is None


def test_the_view_listing_gives_units_and_limits_and_a_capture_serves_its_gaps(
    store: Path, tmp_path: Path
) -> None:
    """What a live EPICS session records beside the readings (``channels.json`` and
    ``gaps/<session>.json``, written here by the functions the session uses), served: the
    channels' units and display limits in ``/api/views``, the gaps at
    ``/api/captures/NAME/gaps`` (the newest ``limit``, by start)."""
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    s = Store(str(copy))
    record_channels(
        s,
        "obs",
        {
            "t": {"pv": "T", "units": "degC", "display_low": -5.0, "display_high": 50.0},
            "p": {"pv": "P", "units": "", "display_low": 0.0, "display_high": 0.0},
        },
    )
    record_gaps(
        s,
        "obs",
        "20260601T000000Z-aaaaaa",
        [{"kind": "no session", "since": "2026-06-01T00:01:00Z", "until": "2026-06-01T00:02:00Z"}],
    )
    disconnect = {"kind": "disconnected", "pv": "T", "channel": "t", "last_update": None}
    record_gaps(
        s,
        "obs",
        "20260601T000500Z-bbbbbb",
        [
            {**disconnect, "since": "2026-06-01T00:05:00Z", "until": "2026-06-01T00:05:09Z"},
            {**disconnect, "since": "2026-06-01T00:07:00Z", "until": None},
        ],
    )
    with serving(copy) as base:
        (listing,) = httpx.get(f"{base}/api/views", timeout=10).json()
        assert listing["units"] == {"t": "degC"}  # none given for p: none invented
        assert listing["limits"] == {"t": [-5.0, 50.0]}  # 0..0: EPICS's "not set"

        gaps = httpx.get(f"{base}/api/captures/obs/gaps", timeout=10)
        assert gaps.status_code == 200
        assert gaps.json() == read_gaps(s, "obs")
        assert [g["since"][14:16] for g in gaps.json()] == ["01", "05", "07"]
        newest = httpx.get(f"{base}/api/captures/obs/gaps", params={"limit": 2}, timeout=10)
        assert newest.json() == gaps.json()[1:]
        for bad in ("0", "x", "100001"):
            r = httpx.get(f"{base}/api/captures/obs/gaps", params={"limit": bad}, timeout=10)
            assert r.status_code == 400, bad
            assert "limit" in r.text
    with serving(store) as base:  # a capture no live session wrote: no units, no gaps
        (listing,) = httpx.get(f"{base}/api/views", timeout=10).json()
        assert set(listing) == {"name", "capture", "definition"}
        assert httpx.get(f"{base}/api/captures/obs/gaps", timeout=10).json() == []
