"""Waiting for what another party does (a broker's commit, a cluster peer's document, a job
holding a capture): one poll loop with a deadline, so every wait gives up the same way."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(
    attempt: Callable[[], T],
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    seconds: float,
    every: float,
    gave_up: Callable[[BaseException], BaseException] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``attempt()``'s result; while it raises ``retry_on``, try again every ``every`` seconds
    for up to ``seconds``. Then raise ``gave_up(last error)`` (without the error chained: the
    message says it all), or the last error itself without ``gave_up``."""
    deadline = clock() + seconds
    while True:
        try:
            return attempt()
        except retry_on as exc:
            if clock() > deadline:
                if gave_up is None:
                    raise
                raise gave_up(exc) from None
            sleep(every)
