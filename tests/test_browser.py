"""The view page in a real browser (issues 14 and 33): Playwright drives Debian's Chromium
(``make test`` installs it; never ``playwright install``) against ``obsflow serve`` in its own
process, over stores that real ingests wrote. Screenshots go to ``.build/screenshots/``.

Every page of every test reports its console errors and uncaught exceptions (the ``pages``
fixture); a test with any fails at its teardown.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import pandas as pd
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from obsflow.flows.explore.explorer import open_store
from tests.s3servers import free_port
from tests.test_serve import OBSFLOW, VIEWS, run_file, serving

pytestmark = pytest.mark.integration  # servers, brokers, child processes (tests/conftest.py)

SHOTS = Path(__file__).resolve().parents[1] / ".build" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_ZONE = "America/Los_Angeles"  # the browser's own zone: 7-8 hours from UTC


def chromium() -> str:
    found = shutil.which("chromium")
    if not found:
        raise RuntimeError("chromium not found: `make test` installs Debian's chromium package")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Pages:
    """Browser contexts (each its own profile: its own SharedWorker) whose pages' console
    errors and uncaught exceptions are collected in ``errors``."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.errors: list[str] = []
        self.contexts: list[BrowserContext] = []

    def context(self, **options: Any) -> BrowserContext:
        options = {
            "viewport": {"width": 1100, "height": 1400},
            "timezone_id": LOCAL_ZONE,
            **options,
        }
        ctx = self.browser.new_context(**options)
        ctx.on("page", self._watch)
        self.contexts.append(ctx)
        return ctx

    def _watch(self, page: Page) -> None:
        page.on(
            "console",
            lambda m: (
                self.errors.append(f"{page.url}: console.error {m.text}")
                if m.type == "error"
                else None
            ),
        )
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: uncaught {e}"))


@pytest.fixture
def pages(browser: Browser) -> Iterator[Pages]:
    p = Pages(browser)
    yield p
    for ctx in p.contexts:
        ctx.close()
    assert p.errors == [], "the pages logged errors"


def page_rows(page: Page) -> pd.DataFrame:
    rows: list[dict[str, Any]] = page.evaluate("window.obsflowRows()")
    frame = pd.DataFrame(
        rows, columns=["source", "channel", "window_start", "run", "mean", "final"]
    )
    frame["window_start"] = pd.to_datetime(frame["window_start"], utc=True)
    keys = ["source", "channel", "window_start"]
    frame = frame.astype({"source": object, "channel": object, "run": object})
    return frame.sort_values(keys).reset_index(drop=True)


def view_rows(store: Path, view: str = "v1s") -> pd.DataFrame:
    frame = open_store(str(store)).view(view)
    frame = frame[["source", "channel", "window_start", "run", "mean", "final"]]
    return frame.astype({"source": object, "channel": object, "run": object}).reset_index(drop=True)


def wait_for_rows(page: Page, n: int, seconds: float) -> float:
    """Seconds until the page holds ``n`` rows (fails after ``seconds``)."""
    started = time.monotonic()
    try:
        page.wait_for_function(
            "n => window.obsflowRows && window.obsflowRows().length === n",
            arg=n,
            timeout=seconds * 1000,
        )
    except PlaywrightTimeout:
        shown = page.evaluate("window.obsflowRows ? window.obsflowRows().length : null")
        received = page.evaluate("window.obsflowReceived ? window.obsflowReceived() : null")
        raise AssertionError(
            f"{shown} rows on the page, not {n}, after {seconds} s: {received}"
        ) from None
    return time.monotonic() - started


def ingest(store: Path, folder: Path, r: int) -> None:
    done = subprocess.run(
        [OBSFLOW, "ingest", str(run_file(folder, r)), "--store", str(store), "--capture=obs", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def subscribers(base: str, view: str) -> int:
    """The event streams the server holds for ``view`` (``GET /api/status``)."""
    feeds = httpx.get(f"{base}/api/status", timeout=10).json()["feeds"]
    return int(feeds[view]["subscribers"]) if view in feeds else 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_page_follows_the_view_live_and_catches_up_after_the_server_is_killed(
    tmp_path: Path, pages: Pages
) -> None:
    store = tmp_path / "store"
    explorer = open_store(str(store))
    for r in range(2):
        explorer.ingest(str(run_file(tmp_path, r)), capture="obs", views=VIEWS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    page = pages.context().new_page()
    with serving(store, port=port, kill=True) as base:
        page.goto(f"{base}/views/v1s")
        wait_for_rows(page, len(view_rows(store)), 20)
        page.get_by_text("live", exact=True).wait_for(timeout=10_000)
        page.screenshot(path=str(SHOTS / "view-1-loaded.png"), full_page=True)

        ingest(store, tmp_path, 2)  # another process commits a run
        # Without a reload: the page follows the view (30 s only guards against a hang).
        took = wait_for_rows(page, len(view_rows(store)), 30)
        print(f"a new run's rows were on the page {took:.2f} s after its commit")
        page.screenshot(path=str(SHOTS / "view-2-new-run.png"), full_page=True)
        before_kill = page.evaluate("window.obsflowReceived()")
    # The server was SIGKILLed; a run lands while it is down; it comes back on its port.
    ingest(store, tmp_path, 3)
    with serving(store, port=port):
        wait_for_rows(page, len(view_rows(store)), 30)
        page.get_by_text("live", exact=True).wait_for(timeout=10_000)
        page.screenshot(path=str(SHOTS / "view-3-after-restart.png"), full_page=True)
        received = page.evaluate("window.obsflowReceived()")
        shown = page_rows(page)

    pd.testing.assert_frame_equal(shown, view_rows(store))  # no row missing, none doubled
    # Every event came once, in position order; after the restart, only what was missed.
    ids = [int(i) for kind, i, _ in received if kind == "rows"]
    assert ids == sorted(set(ids))
    assert len(received) > len(before_kill)
    assert {kind for kind, _, _ in received[len(before_kill) :]} == {"rows"}


def wait_for_run(tabs: list[Page], run: str, rows: int, seconds: float) -> None:
    """Polls every tab until each holds the ``rows`` rows of ``run``; fails after ``seconds``
    naming the tabs still waiting (a deadline, not a measurement)."""
    deadline = time.monotonic() + seconds
    held = "n => window.obsflowRows ? window.obsflowRows().filter(r => r.run === n).length : -1"
    waiting = dict(enumerate(tabs))
    while True:
        waiting = {i: t for i, t in waiting.items() if t.evaluate(held, run) != rows}
        if not waiting:
            return
        if time.monotonic() > deadline:
            counts = {i: t.evaluate(held, run) for i, t in waiting.items()}
            raise AssertionError(f"after {seconds} s, tabs {counts} (tab: rows) lack run {run}")
        time.sleep(0.2)


def test_ten_tabs_share_one_event_stream_and_each_shows_a_later_commit(
    tmp_path: Path, pages: Pages
) -> None:
    store = tmp_path / "store"
    explorer = open_store(str(store))
    for r in range(2):
        explorer.ingest(str(run_file(tmp_path, r)), capture="obs", views=VIEWS)
    before = view_rows(store)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with serving(store) as base:
        ctx = pages.context(viewport={"width": 900, "height": 700})
        tabs = [ctx.new_page() for _ in range(10)]
        for tab in tabs:
            tab.goto(f"{base}/views/v1s")
        # (Over HTTP/1.1 Chromium opens 6 connections per host: a 7th stream would never start.)
        for tab in tabs:
            wait_for_rows(tab, len(before), 30)
        assert [t.evaluate("window.obsflowTransport") for t in tabs] == ["shared-worker"] * 10
        assert subscribers(base, "v1s") == 1  # one stream for the ten tabs

        explorer.ingest(str(run_file(tmp_path, 2)), capture="obs", views=VIEWS)
        after = view_rows(store)
        (run,) = set(after["run"]) - set(before["run"])
        wait_for_run(tabs, run, int((after["run"] == run).sum()), 10)
        assert subscribers(base, "v1s") == 1
        for tab in tabs:
            pd.testing.assert_frame_equal(page_rows(tab), after)
        tabs[-1].screenshot(path=str(SHOTS / "view-tab-10-of-10.png"), full_page=True)


def test_without_shared_worker_each_tab_follows_the_view_on_its_own(
    tmp_path: Path, pages: Pages
) -> None:
    store = tmp_path / "store"
    explorer = open_store(str(store))
    explorer.ingest(str(run_file(tmp_path, 0)), capture="obs", views=VIEWS)
    with serving(store) as base:
        ctx = pages.context()
        ctx.add_init_script("delete window.SharedWorker")  # as on Chrome for Android
        tabs = [ctx.new_page() for _ in range(2)]
        before = view_rows(store)
        for tab in tabs:
            tab.goto(f"{base}/views/v1s")
            wait_for_rows(tab, len(before), 20)
        assert [t.evaluate("window.obsflowTransport") for t in tabs] == ["per-tab"] * 2
        assert subscribers(base, "v1s") == 2
        explorer.ingest(str(run_file(tmp_path, 1)), capture="obs", views=VIEWS)
        after = view_rows(store)
        (run,) = set(after["run"]) - set(before["run"])
        wait_for_run(tabs, run, int((after["run"] == run).sum()), 10)
        ctx.close()  # (before the server stops: a request still in flight would log an error)


T0 = pd.Timestamp("2026-06-01T00:00:00Z")
BAND_VIEW = (
    '[[view]]\nname = "v1s"\nsize = "1s"\naggregates = ["count", "mean", "min", "max", "std"]\n'
)


def two_channel_run(folder: Path, r: int, sources: int = 10) -> Path:
    """Run ``r``: 30 s of ``sources`` sources at 4 Hz, channels ``t`` and ``p`` (a noisy sine,
    so that a window's min < mean < max): 20 series with 10 sources."""
    rng = np.random.default_rng(r)
    n = 30 * 4
    times = T0 + pd.to_timedelta(r * 30 + np.arange(n) / 4, unit="s")
    frames = [
        pd.DataFrame(
            {
                "source": f"s{i:02d}",
                "time": times.map(lambda t: t.isoformat()),
                "channel": channel,
                "value": scale * (i + np.sin(np.arange(n) / 8 + i) + rng.normal(0, 0.2, n)),
            }
        )
        for i in range(sources)
        for channel, scale in (("t", 1.0), ("p", 100.0))
    ]
    path = folder / f"two{r:02d}.csv"
    pd.concat(frames).to_csv(path, index=False)
    return path


TICK_SHAPES = {  # a tick's first line -> how it reads a time
    r"\d\d:\d\d:\d\d\.\d{3}": "%H:%M:%S.%f",
    r"\d\d:\d\d:\d\d": "%H:%M:%S",
    r"\d\d:\d\d": "%H:%M",
    r"\d{4}-\d\d-\d\d": "%Y-%m-%d",
}


def expected_tick(epoch: float, text: str, zone: ZoneInfo | timezone, first: bool) -> str:
    """The text a tick at ``epoch`` (s) must read in ``zone``, in the shape the page chose
    for ``text`` (hours, seconds or milliseconds; the date under the first tick and under the
    first of each new day)."""
    t = datetime.fromtimestamp(round(epoch, 3), zone)
    line, _, _ = text.partition("\n")
    shape = next((f for p, f in TICK_SHAPES.items() if re.fullmatch(p, line)), None)
    assert shape is not None, f"tick {text!r} is no time of day or date"
    out = t.strftime(shape)[: -3 if shape.endswith("%f") else None]
    date = t.strftime("%Y-%m-%d")
    if shape != "%Y-%m-%d" and (first or "\n" in text):
        out += "\n" + date
    return out


CHARTS = """() => [...document.querySelectorAll("#charts figure")].map(f => ({
  series: f.dataset.series, drawn: JSON.parse(f.dataset.drawn || "null"),
  bands: JSON.parse(f.dataset.bands || "[]"), y: f.dataset.yLabel, x: f.dataset.xLabel,
  ticks: JSON.parse(f.dataset.xTicks || "[]")}))"""
DRAWN = """() => document.querySelector("#charts figure") &&
  !document.querySelector("#charts figure:not([data-x-ticks])")"""  # every chart drawn


def all_charts(page: Page) -> list[list[dict[str, Any]]]:
    """Each page of charts: what each chart draws, as the page reports it from uPlot."""
    page.wait_for_function(DRAWN, timeout=10_000)
    first = page.locator("#pager button", has_text="previous")
    while first.is_enabled():
        first.click()
    out = [page.evaluate(CHARTS)]
    nxt = page.locator("#pager button", has_text="next")
    while nxt.is_enabled():
        nxt.click()
        page.wait_for_function(
            "() => !document.querySelector('#charts figure:not([data-x-ticks])')"
        )
        out.append(page.evaluate(CHARTS))
    return out


def check_ticks(charts: list[dict[str, Any]], zone: ZoneInfo | timezone) -> None:
    for c in charts:
        assert len(c["ticks"]) >= 2, c
        for i, (epoch, text) in enumerate(c["ticks"]):
            assert text == expected_tick(epoch, text, zone, i == 0), (c["series"], epoch, text)


def test_the_page_draws_every_series_with_labelled_axes_in_utc(
    tmp_path: Path, pages: Pages
) -> None:
    store = tmp_path / "store"
    explorer = open_store(str(store))
    for r in range(2):
        explorer.ingest(str(two_channel_run(tmp_path, r)), capture="obs", views=BAND_VIEW)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with serving(store) as base:
        rows = httpx.get(f"{base}/api/views/v1s", params={"format": "json"}, timeout=30).json()
        series = sorted({f"{r['source']} / {r['channel']}" for r in rows})
        (listing,) = httpx.get(f"{base}/api/views", timeout=10).json()
        aggregates = listing["definition"]["aggregates"]
        assert len(series) == 20

        page = pages.context().new_page()
        page.goto(f"{base}/views/v1s")
        wait_for_rows(page, len(rows), 20)
        shown = all_charts(page)
        charts = [c for p in shown for c in p]
        assert len(shown) > 1, "20 series: more than one page of charts"
        assert [c["series"] for c in charts] == series  # every series, once, in order
        for c in charts:
            channel = c["series"].split(" / ")[1]
            assert c["y"] == f"mean · {channel}"  # no unit: the capture records none
            assert c["x"] == "time (UTC)"
            assert c["drawn"] == ["mean (final)", "mean (open window)", "min", "max"]
            assert c["bands"] == [["max", "min"]]  # the min–max band around the mean
        check_ticks(charts, UTC)
        page.locator("#pager button", has_text="previous").click()
        page.screenshot(path=str(SHOTS / "view-grid-utc.png"), full_page=True)

        # The table: compact times, no row wrapped, the full time a hover away.
        times = page.locator("#latest td time")
        assert times.count() > 0
        for i in range(min(times.count(), 5)):
            text = times.nth(i).text_content() or ""
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text), text
            assert (times.nth(i).get_attribute("datetime") or "").endswith(".000000000Z")
        heights = page.evaluate(
            "[...document.querySelectorAll('#latest tbody tr')].map(r => r.offsetHeight)"
        )
        assert max(heights) < 1.5 * min(heights), heights

        # Many series: a filter by name narrows them to one page.
        page.fill("#filter", "/ p")
        (only_p,) = all_charts(page)
        assert [c["series"] for c in only_p] == [s for s in series if s.endswith(" / p")]
        page.fill("#filter", "")

        # Another aggregate: the view's own list; no band around a max.
        options = page.locator("#aggregate option").all_text_contents()
        assert options == aggregates
        page.select_option("#aggregate", "max")
        for c in [c for p in all_charts(page) for c in p]:
            channel = c["series"].split(" / ")[1]
            assert (c["y"], c["drawn"], c["bands"]) == (
                f"max · {channel}",
                ["max (final)", "max (open window)"],
                [],
            )
        # The browser's own time zone, when asked for.
        page.get_by_label("local", exact=True).check()
        local = [c for p in all_charts(page) for c in p]
        assert {c["x"] for c in local} == {f"time ({LOCAL_ZONE})"}
        check_ticks(local, ZoneInfo(LOCAL_ZONE))
        page.locator("#pager button", has_text="previous").click()
        page.screenshot(path=str(SHOTS / "view-grid-local-max.png"), full_page=True)

        # A favicon, served.
        icon = page.locator("link[rel=icon]").get_attribute("href")
        assert httpx.get(f"{base}{icon}", timeout=10).status_code == 200
        assert httpx.get(f"{base}/favicon.ico", timeout=10).status_code == 200

        # A unit, when the view listing ever gives one (as EPICS channel metadata will).
        def with_units(route: Any) -> None:
            views = route.fetch().json()
            for v in views:
                v["units"] = {"t": "K"}
            route.fulfill(json=views)

        page.route("**/api/views", with_units)
        page.reload()
        page.get_by_label("UTC", exact=True).check()
        labels = {c["series"]: c["y"] for p in all_charts(page) for c in p}
        assert labels["s00 / t"] == "mean · t (K)"
        assert labels["s00 / p"] == "mean · p"  # none given: none invented


GAP_VIEW = '[[view]]\nname = "pv_1s"\nsize = "1s"\naggregates = ["count", "mean", "min", "max"]\n'
GAPS = """() => [...document.querySelectorAll("#charts figure")].map(f => ({
  series: f.dataset.series, y: f.dataset.yLabel, gaps: JSON.parse(f.dataset.gaps || "null"),
  yRange: JSON.parse(f.dataset.yRange || "null")}))"""


def epoch_ms(iso: str) -> float:
    """An ISO time as the page reads it: epoch seconds, to the millisecond."""
    return pd.Timestamp(iso).value // 1_000_000 / 1000


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_page_shades_the_gaps_an_epics_session_recorded_and_shows_units(
    tmp_path: Path, pages: Pages
) -> None:
    """A CA IOC restarted under a live session (a disconnect of each PV), then a second
    session (the time between: no session): the page shades each disconnect on its
    channel's charts and the time with no session on every chart, lists them in UTC, and
    labels the y-axis with the PV's unit (its display limits within the y range)."""
    from obsflow.connectors.datasets.channels import read_gaps
    from obsflow.connectors.datasets.reads import read_capture
    from obsflow.connectors.storage.store import Store
    from tests.epics_iocs import Ioc
    from tests.flows.test_epics_live import obsflow, wait_for

    store, views = tmp_path / "store", tmp_path / "views.toml"
    views.write_text(GAP_VIEW)
    s = Store(str(store))
    ioc = Ioc("ca", tmp_path / "ioc.log", scalars=1, rate=20, waveform_size=10, duration=3)
    args = ["ingest", "ca://P:s0,P:mode", "--store", str(store), "--capture", "pvs", "-q"]
    args += ["--views", str(views)]

    def rows() -> int:
        return (
            read_capture(s, "pvs", columns=["time"]).num_rows
            if (store / "captures").exists()
            else 0
        )

    def reconnected() -> bool:
        done = [g for g in read_gaps(s, "pvs") if g["kind"] == "disconnected" and g["until"]]
        return {g["channel"] for g in done} == {"P:s0", "P:mode"}

    with ioc:
        first = obsflow(ioc, *args)
        try:
            wait_for(lambda: rows() >= 2, 60, "no first values")
            ioc.begin()
            wait_for(lambda: rows() > 20, 60, "no updates")
            ioc.stop()
            ioc.start()  # (it posts again at once, for 3 s)
            wait_for(reconnected, 90, "no reconnect")
            first.terminate()  # (SIGTERM: the session ends after its cycle)
            _, err = first.communicate(timeout=60)
            assert first.returncode == 0, err
            second = obsflow(ioc, *args, "--stop-when-idle", "1s")
            _, err = second.communicate(timeout=120)
            assert second.returncode == 0, err
        finally:
            for proc in (first, locals().get("second")):
                if proc is not None and proc.poll() is None:
                    proc.kill()
    gaps = read_gaps(s, "pvs")
    assert {g["kind"] for g in gaps} == {"disconnected", "no session"}, gaps

    def expected(channel: str) -> list[list[Any]]:
        return [
            [g["kind"], epoch_ms(g.get("last_update") or g["since"]), epoch_ms(g["until"])]
            for g in gaps
            if g.get("channel") in (None, channel)
        ]

    with serving(store) as base:
        page = pages.context().new_page()
        page.goto(f"{base}/views/pv_1s")
        page.wait_for_function(
            "() => document.querySelectorAll('#charts figure[data-gaps]').length === 2"
            " && document.querySelectorAll('#gaps li').length > 0",
            timeout=20_000,
        )
        charts = {c["series"].split(" / ")[1]: c for c in page.evaluate(GAPS)}
        assert set(charts) == {"P:s0", "P:mode"}
        for channel, c in charts.items():
            drawn = sorted(c["gaps"])
            want = sorted(expected(channel))
            assert [d[0] for d in drawn] == [w[0] for w in want], (channel, drawn, want)
            for d, w in zip(drawn, want, strict=True):
                assert d[1:] == pytest.approx(w[1:], abs=2e-3), (channel, d, w)
        assert charts["P:s0"]["y"] == "mean · P:s0 (mm)"
        assert charts["P:mode"]["y"] == "mean · P:mode"  # an enum: no unit
        low, high = charts["P:s0"]["yRange"]
        assert low <= -10  # the IOC's display limits (-10..10) are within the y range
        assert high >= 10
        items = page.locator("#gaps li")
        assert items.count() == len(gaps)
        texts = items.all_text_contents()
        assert sum("no session" in t for t in texts) == 1
        assert all("UTC" in t for t in texts), texts
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "view-gaps.png"), full_page=True)
