"""Broker clients for live ingest: URLs, credentials, and one client per protocol.

``connect(url, topics, consumer)`` gives an object with ``fetch(max_messages, timeout)``,
``ack(messages)`` and ``close()`` (``flows.live.BrokerClient``). The session acknowledges a
message only after the capture commit holding it, so every client is at-least-once and the
capture's identity dedup makes it exactly-once.

- ``nats://host:port``: a JetStream durable pull consumer per topic (subject); the stream is
  found from the subject, or named with ``stream``. The message time is the stream's.

Credentials come from the environment only, never from the command line, and never appear
in errors or reprs: ``OBSFLOW_NATS_USER``/``OBSFLOW_NATS_PASSWORD``, ``OBSFLOW_NATS_TOKEN``
or ``OBSFLOW_NATS_CREDS`` (a file). A broker down for longer than
``OBSFLOW_BROKER_RETRY_SECONDS`` (default 60) stops the session with one line; the same
command resumes where the acknowledgements stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from obsflow.connectors.errors import ConfigError, ObsflowError
from obsflow.connectors.messages import Message

SCHEMES = ("nats", "mqtt", "mqtts", "kafka")
CONSUMER_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
T = TypeVar("T")


class BrokerError(ObsflowError, ConnectionError):
    """The broker cannot be reached, or refused what was asked."""


def retry_seconds() -> float:
    return float(os.environ.get("OBSFLOW_BROKER_RETRY_SECONDS", "60"))


def is_broker_url(url: str) -> bool:
    return url.partition("://")[0] in SCHEMES and "://" in url


@dataclass(frozen=True)
class BrokerURL:
    scheme: str
    hosts: tuple[tuple[str, int], ...]

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        """``scheme://host:port[,host:port]``: no credentials, path or query (credentials come
        from the environment)."""
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in SCHEMES:
            raise ConfigError(f"{url!r}: a broker URL is {', '.join(s + '://' for s in SCHEMES)}")
        hosts = []
        for part in rest.rstrip("/").split(","):
            split = urlsplit(f"//{part}")
            if split.username or split.password:
                raise ConfigError(
                    "credentials in a broker URL are refused (they would end up in logs and "
                    "shell history): set them in the environment"
                )
            if split.path or split.query or not split.hostname:
                raise ConfigError(f"{scheme}:// URL needs host:port, not {part!r}")
            default = {"nats": 4222, "mqtt": 1883, "mqtts": 8883, "kafka": 9092}[scheme]
            try:
                port = split.port or default
            except ValueError:
                raise ConfigError(f"{part!r}: the port is not a number") from None
            hosts.append((split.hostname, port))
        return cls(scheme, tuple(hosts))

    def __str__(self) -> str:
        return f"{self.scheme}://" + ",".join(f"{h}:{p}" for h, p in self.hosts)


def check_consumer(name: str) -> str:
    if not CONSUMER_RE.fullmatch(name or ""):
        raise ConfigError(f"--consumer {name!r}: use [A-Za-z0-9_-]{{1,64}}")
    return name


def connect(
    url: str,
    topics: Sequence[str],
    consumer: str,
    *,
    stream: str | None = None,
    max_in_flight: int = 100_000,
) -> Any:
    """A client for ``url`` (see the module docstring)."""
    broker = BrokerURL.parse(url)
    if not topics:
        raise ConfigError(f"{broker.scheme}:// needs --topic")
    check_consumer(consumer)
    if broker.scheme == "nats":
        return NatsClient(broker, list(topics), consumer, stream, max_in_flight)
    raise ConfigError(f"{broker.scheme}:// is not supported yet")


class _Loop:
    """An asyncio event loop in a daemon thread, for clients whose library is asyncio."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

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


def _import_nats() -> Any:
    try:
        import nats
    except ImportError:
        raise ConfigError(
            "nats:// needs the nats-py package: pip install 'obsflow[live]'"
        ) from None
    return nats


class NatsClient:
    """JetStream durable pull consumers, one per topic (see the module docstring)."""

    def __init__(
        self,
        broker: BrokerURL,
        topics: list[str],
        consumer: str,
        stream: str | None,
        max_in_flight: int,
    ) -> None:
        self.broker, self.topics, self.consumer = broker, topics, consumer
        self._nats = _import_nats()
        self._loop = _Loop("obsflow-nats")
        self._down_since: float | None = None
        try:
            self._loop.run(self._connect(stream, max_in_flight), timeout=retry_seconds() + 10)
        except BaseException:
            self._loop.stop()
            raise

    def __repr__(self) -> str:
        return f"NatsClient({self.broker}, topics={self.topics!r}, consumer={self.consumer!r})"

    async def _connect(self, stream: str | None, max_in_flight: int) -> None:
        nats = self._nats
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        options: dict[str, Any] = {
            "servers": [f"nats://{h}:{p}" for h, p in self.broker.hosts],
            "max_reconnect_attempts": -1,  # the session's own budget decides when to give up
            "reconnect_time_wait": 0.5,
            "connect_timeout": 5,
            "allow_reconnect": True,
        }
        env = os.environ
        if env.get("OBSFLOW_NATS_USER"):
            options["user"] = env["OBSFLOW_NATS_USER"]
            options["password"] = env.get("OBSFLOW_NATS_PASSWORD", "")
        if env.get("OBSFLOW_NATS_TOKEN"):
            options["token"] = env["OBSFLOW_NATS_TOKEN"]
        if env.get("OBSFLOW_NATS_CREDS"):
            options["user_credentials"] = env["OBSFLOW_NATS_CREDS"]
        deadline = time.monotonic() + retry_seconds()
        while True:  # the first connection is retried here, within the same budget
            try:
                self.nc = await nats.connect(**options)
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"cannot reach NATS at {self.broker}: {type(exc).__name__} "
                        f"(gave up after {retry_seconds():g} s)"
                    ) from None
                await asyncio.sleep(0.5)
        self.js = self.nc.jetstream()
        self.subs = []
        for topic in self.topics:
            name = stream or await self._stream_of(topic)
            durable = self.consumer if len(self.topics) == 1 else _durable(self.consumer, topic)
            config = ConsumerConfig(
                durable_name=durable,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                # Messages a killed session took come again after this: short, so a rerun
                # catches up soon; every cycle acks well within it.
                ack_wait=float(os.environ.get("OBSFLOW_NATS_ACK_WAIT", "30")),
                max_ack_pending=max_in_flight,
            )
            self.subs.append(
                await self.js.pull_subscribe(topic, durable=durable, stream=name, config=config)
            )

    async def _stream_of(self, topic: str) -> str:
        try:
            name: str = await self.js.find_stream_name_by_subject(topic)
        except Exception as exc:
            raise BrokerError(
                f"no JetStream stream holds subject {topic!r} on {self.broker} "
                f"({type(exc).__name__}); create one, or name it with --stream"
            ) from None
        return name

    def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        out: list[Message] = self._loop.run(self._fetch(max_messages, timeout))
        return out

    async def _fetch(self, max_messages: int, timeout: float) -> list[Message]:
        errors = self._nats.errors
        deadline = time.monotonic() + timeout
        out: list[Message] = []
        while len(out) < max_messages:
            left = deadline - time.monotonic()
            if left <= 0.01:
                break
            got = 0
            for sub in self.subs:
                want = min(max_messages - len(out), 10_000)
                if want <= 0:
                    break
                try:
                    msgs = await sub.fetch(batch=want, timeout=max(left / len(self.subs), 0.01))
                except errors.TimeoutError:
                    msgs = []
                except Exception as exc:
                    await self._wait_out(exc)
                    msgs = []
                if msgs:
                    self._down_since = None
                got += len(msgs)
                out.extend(_message(m) for m in msgs)
            if not got and out:
                break  # something arrived, and nothing more is coming now
        return out

    async def _wait_out(self, exc: BaseException) -> None:
        """A transient failure (the connection down, JetStream unavailable while the server
        restarts) is waited out within the retry budget; anything else is raised."""
        if not isinstance(exc, (OSError, asyncio.TimeoutError, self._nats.errors.Error)):
            raise exc
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        elif now - self._down_since > retry_seconds():
            raise BrokerError(
                f"NATS at {self.broker} unavailable for {retry_seconds():g} s "
                f"({type(exc).__name__}); run the same command again to resume"
            ) from None
        await asyncio.sleep(0.2)

    def drained(self) -> bool:
        """Whether the broker holds nothing more for this consumer: no message undelivered,
        none delivered and unacknowledged (e.g. taken by a session that was killed, which
        comes again after the ack wait)."""
        return bool(self._loop.run(self._drained()))

    async def _drained(self) -> bool:
        try:
            infos = [await sub.consumer_info() for sub in self.subs]
        except Exception:  # unknown (the server restarting): not drained
            return False
        return all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos)

    def ack(self, messages: list[Message]) -> None:
        self._loop.run(self._ack(messages))

    async def _ack(self, messages: list[Message]) -> None:
        # A lost ack only brings a message again, which dedup drops: no need to wait for each.
        while True:
            try:
                for m in messages:
                    if not m.token.is_acked:
                        await m.token.ack()
                await self.nc.flush()
                return
            except Exception as exc:
                await self._wait_out(exc)

    def close(self) -> None:
        try:  # acks were flushed when they were sent: nothing is left to drain
            with contextlib.suppress(Exception):
                self._loop.run(self.nc.close(), timeout=10)
        finally:
            self._loop.stop()


def _durable(consumer: str, topic: str) -> str:
    return f"{consumer}_{re.sub(r'[^A-Za-z0-9_-]', '_', topic)}"[:64]


def _message(m: Any) -> Message:
    """A JetStream message: its time is the stream's (ns, in the ack subject), so it is the
    same when the message is delivered again."""
    tokens = m.reply.split(".")
    ts = int(tokens[7] if len(tokens) == 9 else tokens[9])
    return Message(m.data, m.subject, ts, m)


class NatsPublisher:
    """Publishes message bodies to one JetStream subject (``obsflow simulate --to``); creates
    a stream for the subject's first token (``obs.sim`` -> ``obs.>``) when none holds it."""

    def __init__(self, broker: BrokerURL, subject: str) -> None:
        self.broker, self.subject = broker, subject
        self._nats = _import_nats()
        self._loop = _Loop("obsflow-nats-publish")
        try:
            self._loop.run(self._connect(), timeout=retry_seconds() + 10)
        except BaseException:
            self._loop.stop()
            raise

    async def _connect(self) -> None:
        try:
            self.nc = await self._nats.connect(
                servers=[f"nats://{h}:{p}" for h, p in self.broker.hosts], connect_timeout=5
            )
        except Exception as exc:
            raise BrokerError(f"cannot reach NATS at {self.broker}: {type(exc).__name__}") from None
        self.js = self.nc.jetstream()
        try:
            await self.js.find_stream_name_by_subject(self.subject)
        except self._nats.js.errors.NotFoundError:
            root = re.sub(r"[^A-Za-z0-9_-]", "_", self.subject.split(".")[0])
            await self.js.add_stream(name=f"obsflow_{root}", subjects=[f"{root}.>"])

    def publish(self, bodies: list[bytes]) -> None:
        """Publish, each message acknowledged by the server (in groups, concurrently)."""
        self._loop.run(self._publish(bodies))

    async def _publish(self, bodies: list[bytes]) -> None:
        for i in range(0, len(bodies), 500):
            await asyncio.gather(*(self.js.publish(self.subject, b) for b in bodies[i : i + 500]))

    def close(self) -> None:
        try:
            with contextlib.suppress(Exception):
                self._loop.run(self.nc.close(), timeout=10)
        finally:
            self._loop.stop()


def publisher(url: str, topic: str) -> NatsPublisher:
    broker = BrokerURL.parse(url)
    if broker.scheme == "nats":
        return NatsPublisher(broker, topic)
    raise ConfigError(f"publishing to {broker.scheme}:// is not supported yet")
