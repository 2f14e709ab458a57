"""One retry policy for every remote store operation: what is transient, how long to keep trying.

Transient failures (connection refused or reset, timeouts, 5xx, throttling) are retried with
jittered exponential backoff (0.2 s doubling up to 5 s) until the operation has spent
``OBSFLOW_S3_RETRY_SECONDS`` (default 30; connect and read timeouts scale with it) or made
``AWS_MAX_ATTEMPTS`` attempts, if that is set. Everything else fails at once. Messages never
show credentials (``redact``).
"""

from __future__ import annotations

import math
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from obsflow.connectors.errors import ConfigError, StoreError, StoreUnreachableError

RETRY_SECONDS_ENV = "OBSFLOW_S3_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 30.0

# S3 error codes that mean "try again later" (besides any HTTP 5xx status).
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "BandwidthLimitExceeded",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
    }
)
# Environment variables whose values must never show in a message.
SECRET_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
    "OBSFLOW_NATS_PASSWORD",
    "OBSFLOW_NATS_TOKEN",
    "OBSFLOW_MQTT_PASSWORD",
    "OBSFLOW_KAFKA_PASSWORD",
)


@dataclass(frozen=True)
class RetryPolicy:
    """How long an S3 operation keeps retrying transient failures, and how.

    ``seconds`` bounds the time an operation spends retrying: no attempt starts after it, the
    last one starts right at it (so an operation fails after at most ``seconds`` plus one
    attempt, which the connect and read timeouts bound). ``attempts``, when set, also caps the
    number of attempts. Waits double from ``first_delay`` up to ``max_delay``, each jittered
    down by up to half so that workers do not retry in step. ``seconds=0`` makes one attempt.
    ``clock`` and ``sleep`` measure the budget and wait out the backoff (tests pass fakes).
    """

    seconds: float = DEFAULT_RETRY_SECONDS
    attempts: int | None = None
    first_delay: float = 0.2
    max_delay: float = 5.0
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """``OBSFLOW_S3_RETRY_SECONDS`` (default 30) and, if set, the standard
        ``AWS_MAX_ATTEMPTS``, which obsflow applies per store operation."""
        seconds = DEFAULT_RETRY_SECONDS
        text = os.environ.get(RETRY_SECONDS_ENV, "").strip()
        if text:
            try:
                seconds = float(text)
            except ValueError:
                seconds = math.nan
            if not (math.isfinite(seconds) and seconds >= 0):
                raise ConfigError(
                    f"{RETRY_SECONDS_ENV}={text!r}: use a number of seconds >= 0 (default "
                    f"{DEFAULT_RETRY_SECONDS:g}; 0 turns obsflow's own S3 retries off)"
                )
        attempts = None
        text = os.environ.get("AWS_MAX_ATTEMPTS", "").strip()
        if text:
            if not text.isdigit() or int(text) < 1:
                raise ConfigError(f"AWS_MAX_ATTEMPTS={text!r}: use a whole number >= 1")
            attempts = int(text)
        return cls(seconds=seconds, attempts=attempts)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...)."""
        ceiling = min(self.max_delay, self.first_delay * 2.0 ** min(attempt - 1, 30))
        return ceiling * random.uniform(0.5, 1.0)

    def wait(self, attempt: int, elapsed: float) -> float | None:
        """Seconds to wait after failed attempt ``attempt``, ``elapsed`` seconds into the
        operation; None when no attempt is left. The last attempt starts at the deadline, not
        a backoff before it; a remainder under a millisecond counts as spent, so that a clock
        whose sum cannot grow by it (floats at a large offset) cannot retry forever."""
        left = self.seconds - elapsed
        if left < 1e-3 or attempt == self.attempts:
            return None
        return min(self.delay(attempt), left)

    def client_config(self) -> dict[str, Any]:
        """botocore ``Config`` arguments: timeouts scaled to the budget, and no retries of
        botocore's own, which would multiply the store's (explicit settings beat the
        ``AWS_MAX_ATTEMPTS`` and ``AWS_RETRY_MODE`` variables there)."""
        return {
            "connect_timeout": min(5.0, max(1.0, self.seconds / 6)),
            "read_timeout": min(15.0, max(2.0, self.seconds / 3)),
            "retries": {"mode": "standard", "total_max_attempts": 1},
        }


def http_error(exc: BaseException) -> tuple[int | None, str]:
    """HTTP status and error code of an S3 error anywhere in the exception's cause chain."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return status, str(response.get("Error", {}).get("Code", ""))
        seen = seen.__cause__ or seen.__context__
    return None, ""


def transient(exc: BaseException) -> bool:
    """Whether a failure (or anything in its cause chain) is worth retrying."""
    import aiohttp
    import botocore.exceptions as bx  # type: ignore[import-untyped]
    from botocore.parsers import ResponseParserError  # type: ignore[import-untyped]

    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen or len(seen) > 20:
            continue
        seen.add(id(e))
        if isinstance(
            e,
            ConnectionError  # refused, reset, aborted, broken pipe
            | TimeoutError  # socket, asyncio and fsspec timeouts
            | aiohttp.ClientConnectionError
            | aiohttp.ClientPayloadError
            | bx.HTTPClientError  # botocore's connection, connect- and read-timeout errors
            | bx.IncompleteReadError
            | bx.ResponseStreamingError
            | ResponseParserError,  # what some throttling answers (invalid XML) give
        ):
            return True
        if isinstance(e, bx.ClientError):
            status, code = http_error(e)
            return (status or 0) >= 500 or status in (408, 429) or code in TRANSIENT_CODES
        if isinstance(e, PermissionError | FileNotFoundError | FileExistsError):
            return False
        todo += [e.__context__, e.__cause__]  # (its cause first: the context may be unrelated)
    return False


def redact(text: str) -> str:
    """``text`` with the values of the credential variables (AWS, brokers) replaced by
    ``***``."""
    for name in SECRET_VARS:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


def reason(exc: BaseException) -> str:
    """A one-line description of a backend failure, with credentials masked."""
    return redact(" ".join(str(exc).split()) or type(exc).__name__)


class GaveUp:
    """Endpoints (endpoint, bucket) that an operation of this process gave up on.

    Until one of their operations succeeds again, each operation gets a single attempt: once a
    run is failing because the store is down, what it does on the way out (writers flushing on
    close, other workers) must not each wait out the whole retry budget.
    """

    _endpoints: ClassVar[set[tuple[str, str]]] = set()
    _lock = threading.Lock()

    @classmethod
    def has(cls, endpoint: tuple[str, str]) -> bool:
        return endpoint in cls._endpoints

    @classmethod
    def add(cls, endpoint: tuple[str, str]) -> None:
        with cls._lock:
            cls._endpoints.add(endpoint)

    @classmethod
    def discard(cls, endpoint: tuple[str, str]) -> None:
        if endpoint in cls._endpoints:
            with cls._lock:
                cls._endpoints.discard(endpoint)


# delta-rs reports failures as text: these tell an unreachable store from a broken table.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
DELTA_UNREACHABLE = re.compile(
    r"(connection refused|tcp connect error|error sending request|operation timed out|"
    r"timed out|connection reset|dns error|broken pipe)[^↳]*",
    re.IGNORECASE,
)
DELTA_RETRIES = re.compile(r"after (\d+) retries")


def plain(text: str) -> str:
    """An error text of delta-rs as one plain line (no colours, no tree of causes)."""
    return " ".join(_ANSI.sub("", text).replace("↳", ":").split())


@dataclass(frozen=True)
class Failure:
    """What one failed attempt of a store operation tells the loop that retries it."""

    detail: str  # what a message shows of it: one line, credentials masked
    transient: bool  # worth another attempt
    error: type[StoreError] = StoreError  # what giving up on it raises
    inner: int = 0  # attempts the backend made itself within this one (delta-rs's retries)


def store_failure(exc: BaseException, *, retries: bool) -> Failure:
    """A failure of an fsspec (s3fs, botocore) operation; transient only on a store that
    ``retries`` (a remote one: a local disk error does not go away by waiting)."""
    return Failure(reason(exc), retries and transient(exc))


def delta_failure(exc: BaseException) -> Failure:
    """A failure of a delta-rs operation, told from its text: transient if the store did not
    answer (shown as just that part of the text), else the whole text as one line."""
    text = plain(reason(exc))
    down = DELTA_UNREACHABLE.search(text)
    if down is None:
        return Failure(text, transient=False)
    inner = DELTA_RETRIES.search(text)
    return Failure(down[0], True, StoreUnreachableError, int(inner[1]) if inner else 0)
