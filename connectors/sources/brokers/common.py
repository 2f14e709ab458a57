"""What the broker clients share: the retry budget and outage window, credentials from the
environment, and an event loop for clients whose library is asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from obsflow.connectors.sources.brokers import BrokerError

T = TypeVar("T")


def retry_seconds() -> float:
    """How long a broker may be away before the session stops (``OBSFLOW_BROKER_RETRY_SECONDS``)."""
    return float(os.environ.get("OBSFLOW_BROKER_RETRY_SECONDS", "60"))


def login(protocol: str) -> tuple[str, str | None] | None:
    """``OBSFLOW_<PROTOCOL>_USER`` and ``OBSFLOW_<PROTOCOL>_PASSWORD`` (``None`` when unset),
    or ``None`` without a user. The environment is the only place credentials come from; what
    this returns goes to the client library and nowhere else (no repr, message or log)."""
    user = os.environ.get(f"OBSFLOW_{protocol}_USER")
    return (user, os.environ.get(f"OBSFLOW_{protocol}_PASSWORD")) if user else None


class Outage:
    """The retry window: how long the broker has been away. Fine for ``retry_seconds()``, then
    a ``BrokerError`` that says ``what`` (e.g. ``"NATS at nats://h:4222 unavailable"``) and that
    the same command resumes. Safe to update from a library's network thread."""

    def __init__(self, what: str, *, away: bool = False) -> None:
        self.what = what
        self.since: float | None = time.monotonic() if away else None

    def over(self) -> None:
        """The broker answered."""
        self.since = None

    def begin(self) -> None:
        """The broker went away (the window opens now unless it is open)."""
        if self.since is None:
            self.since = time.monotonic()

    def check(self, detail: str = "") -> None:
        """Raise if the window has been open longer than the budget (``detail``: why, shown
        in parentheses)."""
        since = self.since
        if since is not None and time.monotonic() - since > retry_seconds():
            why = f" ({detail})" if detail else ""
            raise BrokerError(
                f"{self.what} for {retry_seconds():g} s{why}; run the same command again to resume"
            ) from None

    def failed(self, detail: str = "") -> None:
        """A request failed now: the first failure opens the window, a later one past the budget
        raises."""
        if self.since is None:
            self.since = time.monotonic()
        else:
            self.check(detail)


class Loop:
    """An asyncio event loop in a daemon thread, for clients whose library is asyncio."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def open(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a client's connecting ``coro`` within the retry budget; the loop stops if it
        fails."""
        try:
            self.run(coro, timeout=retry_seconds() + 10)
        except BaseException:
            self.stop()
            raise

    def close(self, coro: Coroutine[Any, Any, None], timeout: float) -> None:
        """Run a client's closing ``coro`` (its errors do not matter now), then stop."""
        try:
            with contextlib.suppress(Exception):
                self.run(coro, timeout=timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        """Cancel what is still pending, stop the loop, and close it."""

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all(), timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()
