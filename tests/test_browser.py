"""The view page in a real browser (issue 14): Playwright drives Debian's Chromium (``make
test`` installs it; never ``playwright install``) against ``obsflow serve`` in its own
process. Screenshots go to ``.build/screenshots/``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from playwright.sync_api import Page, sync_playwright
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


def chromium() -> str:
    found = shutil.which("chromium")
    if not found:
        raise RuntimeError("chromium not found: `make test` installs Debian's chromium package")
    return found


def page_rows(page: Page) -> pd.DataFrame:
    rows: list[dict[str, Any]] = page.evaluate("window.obsflowRows()")
    frame = pd.DataFrame(
        rows, columns=["source", "channel", "window_start", "run", "mean", "final"]
    )
    frame["window_start"] = pd.to_datetime(frame["window_start"], utc=True)
    keys = ["source", "channel", "window_start"]
    frame = frame.astype({"source": object, "channel": object, "run": object})
    return frame.sort_values(keys).reset_index(drop=True)


def view_rows(store: Path) -> pd.DataFrame:
    frame = open_store(str(store)).view("v1s")
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


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_page_follows_the_view_live_and_catches_up_after_the_server_is_killed(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    explorer = open_store(str(store))
    for r in range(2):
        explorer.ingest(str(run_file(tmp_path, r)), capture="obs", views=VIEWS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
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
        browser.close()

    pd.testing.assert_frame_equal(shown, view_rows(store))  # no row missing, none doubled
    # Every event came once, in position order; after the restart, only what was missed.
    ids = [int(i) for kind, i, _ in received if kind == "rows"]
    assert ids == sorted(set(ids))
    assert len(received) > len(before_kill)
    assert {kind for kind, _, _ in received[len(before_kill) :]} == {"rows"}
