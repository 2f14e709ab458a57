"""``nats://host:port``: JetStream durable pull consumers, one per topic (subject), each
starting at the stream sequence the capture recorded (``nats:<stream>:<subject>``).

The stream is found from the subject, or named with ``stream``. The message time is the
stream's. Credentials: ``OBSFLOW_NATS_USER``/``OBSFLOW_NATS_PASSWORD``, ``OBSFLOW_NATS_TOKEN``
or ``OBSFLOW_NATS_CREDS`` (a file); ``OBSFLOW_NATS_ACK_WAIT`` (30 s) is how soon JetStream
sends again a message the session has not acknowledged (a killed session's are read again at
once: the next session starts at the capture's position).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import TYPE_CHECKING, Any

from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.messages import Message, text_headers
from obsflow.connectors.sources.brokers import (
    CONSUMER_RE,
    BrokerError,
    BrokerURL,
    Subscription,
    client_library,
)
from obsflow.connectors.sources.brokers.common import Loop, Outage, login, retry_seconds
from obsflow.connectors.storage.retry import reason

if TYPE_CHECKING:
    from obsflow.connectors.sources.brokers import ClientFactory, PublisherFactory

FETCH_BYTES = 32 << 20  # one fetch request asks for about this much
CYCLE_BYTES = 256 << 20  # a cycle takes at most about this much: bounded memory


def subjects_overlap(a: str, b: str) -> bool:
    """Whether NATS subjects ``a`` and ``b`` (wildcards ``*`` and ``>`` allowed) can match
    one same subject."""
    x, y = a.split("."), b.split(".")
    for p, q in zip(x, y, strict=False):
        if ">" in (p, q):
            return True
        if p != q and "*" not in (p, q):
            return False
    return len(x) == len(y)


def connect_options(broker: BrokerURL) -> dict[str, Any]:
    """``nats.connect`` options for ``broker``, with credentials from the environment."""
    options: dict[str, Any] = {
        "servers": [f"nats://{h}:{p}" for h, p in broker.hosts],
        "max_reconnect_attempts": -1,  # the session's own budget decides when to give up
        "reconnect_time_wait": 0.5,
        "connect_timeout": 5,
        "allow_reconnect": True,
    }
    if user := login("NATS"):
        options["user"], options["password"] = user[0], user[1] or ""
    env = os.environ
    if env.get("OBSFLOW_NATS_TOKEN"):
        options["token"] = env["OBSFLOW_NATS_TOKEN"]
    if env.get("OBSFLOW_NATS_CREDS"):
        options["user_credentials"] = env["OBSFLOW_NATS_CREDS"]
    return options


class NatsClient:
    """JetStream durable pull consumers, one per topic (see the module docstring)."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.broker, self.topics, self.consumer = sub.broker, list(sub.topics), sub.consumer
        self._nats = client_library("nats")
        self._loop = Loop("obsflow-nats")
        self._outage = Outage(f"NATS at {sub.broker} unavailable")
        self._message_bytes = 64 * 1024  # a cautious guess until messages were seen
        self._next: dict[str, int] = {}  # key -> the next stream sequence to take
        self.last_error = ""
        self._loop.open(self._connect())

    def __repr__(self) -> str:
        return self.sub.describe("NatsClient")

    async def _connect(self) -> None:
        async def quiet(exc: Exception) -> None:
            """Without an error callback nats-py prints a traceback per reconnect attempt;
            the session reports an outage itself (``_wait_out``)."""
            self.last_error = reason(exc)[:200]

        options = connect_options(self.broker) | {"error_cb": quiet}
        deadline = time.monotonic() + retry_seconds()
        while True:  # the first connection is retried here, within the same budget
            left = deadline - time.monotonic()
            try:
                # (a refused login makes connect() retry for ever: the budget bounds it)
                self.nc = await asyncio.wait_for(self._nats.connect(**options), max(left, 0.5))
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    why = self.last_error or type(exc).__name__
                    raise BrokerError(
                        f"cannot reach NATS at {self.broker}: {why} "
                        f"(gave up after {retry_seconds():g} s)"
                    ) from None
                await asyncio.sleep(0.5)
        self.js = self.nc.jetstream()
        self.subs = []
        stream = self.sub.stream
        for topic in self.topics:
            name = await self._named(stream, topic) if stream else await self._stream_of(topic)
            self.subs.append(await self._subscribe(topic, name))

    async def _subscribe(self, topic: str, name: str) -> tuple[str, Any]:
        """A durable pull consumer of ``topic`` on stream ``name`` that starts where the
        capture stands, with this session's bounds, and its key. It is made anew at every
        start (a consumer's start cannot be changed): what a killed session had taken comes
        first, in the stream's order, not after the ack wait behind newer messages."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        durable = self.consumer if len(self.topics) == 1 else _durable(self.consumer, topic)
        key = f"nats:{name}:{topic}"
        start = self.sub.positions(key)
        errors = self._nats.js.errors
        try:
            info = await self.js.consumer_info(name, durable)
        except errors.NotFoundError:
            info = None
        if info is not None:
            subjects = [info.config.filter_subject, *(info.config.filter_subjects or [])]
            if topic not in subjects:  # an existing durable of that name reads something else
                raise ConfigError(
                    f"--consumer {self.consumer!r} on stream {name!r} already reads "
                    f"{', '.join(s for s in subjects if s)!r}, not {topic!r}: use another "
                    "--consumer name"
                )
            if not start:  # no position recorded (a capture older than positions): its acks
                start = info.ack_floor.stream_seq + 1
            await self.js.delete_consumer(name, durable)
        last = (await self.js.stream_info(name)).state.last_seq
        if start > last + 1:
            raise BrokerError(
                f"stream {name!r} on {self.broker} ends at sequence {last}, but the capture "
                f"recorded reading {topic!r} up to {start - 1}: the stream was made anew (or "
                "is another one); capture it under another --capture name"
            )
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=topic,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
            opt_start_seq=start if start > 1 else None,
            # A message not acknowledged within this comes again (only a cycle slower than it
            # sees one: dropped, as behind the position); every cycle acks well within it.
            ack_wait=float(os.environ.get("OBSFLOW_NATS_ACK_WAIT", "30")),
            max_ack_pending=self.sub.max_in_flight,
        )
        try:
            await self.js.add_consumer(name, config=config)
            sub = await self.js.pull_subscribe_bind(durable=durable, stream=name)
        except errors.APIError as exc:  # e.g. a subject outside the stream
            raise BrokerError(
                f"JetStream on {self.broker} refused a consumer of {topic!r} on stream "
                f"{name!r}: {exc.description}"
            ) from None
        self._next[key] = max(start, 1)
        return key, sub

    async def _named(self, stream: str, topic: str) -> str:
        """``--stream``: a valid name of a stream that exists and can hold ``topic`` (the
        server accepts a consumer of any subject, which would wait for ever)."""
        if not CONSUMER_RE.fullmatch(stream):
            raise ConfigError(f"--stream {stream!r}: use [A-Za-z0-9_-]{{1,64}}")
        try:
            info = await self.js.stream_info(stream)
        except self._nats.js.errors.NotFoundError:
            raise BrokerError(
                f"no JetStream stream {stream!r} on {self.broker}: create it, or leave out "
                "--stream to find it from the subject"
            ) from None
        subjects = info.config.subjects or []
        if not any(subjects_overlap(topic, s) for s in subjects):
            raise ConfigError(
                f"stream {stream!r} holds {', '.join(subjects)!r}: no message on {topic!r}"
            )
        return stream

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
        size = 0
        while len(out) < max_messages and size < CYCLE_BYTES:
            left = deadline - time.monotonic()
            if left <= 0.01:
                break
            got = 0
            for key, sub in self.subs:
                # Ask for what fits the client's buffer: more than its 256 MiB and the server's
                # extra messages are dropped, to come again only after the ack wait.
                fits = max(1, FETCH_BYTES // self._message_bytes)
                want = min(max_messages - len(out), 10_000, fits)
                if want <= 0:
                    break
                if self.nc.is_connected:
                    self._outage.over()
                try:
                    msgs = await sub.fetch(batch=want, timeout=max(left / len(self.subs), 0.01))
                except errors.TimeoutError as exc:  # nothing came, or the server is away
                    if not self.nc.is_connected:
                        await self._wait_out(exc)
                    msgs = []
                except Exception as exc:
                    await self._wait_out(exc)
                    msgs = []
                got += len(msgs)
                out.extend(await self._in_order(key, msgs))
                if msgs:
                    fetched = sum(len(m.data) for m in msgs)
                    size += fetched
                    self._message_bytes = max(64, fetched // len(msgs))
            if not got and out:
                break  # something arrived, and nothing more is coming now
        return out

    async def _in_order(self, key: str, msgs: list[Any]) -> list[Message]:
        """The messages past the position, each with its own; one that comes again (a cycle
        slower than the ack wait) was committed already: acknowledged, dropped."""
        out = []
        for m in msgs:
            seq, ts = _stream_seq_and_time(m.reply)
            if seq < self._next[key]:
                await m.ack()
                continue
            self._next[key] = seq + 1
            headers = text_headers((m.headers or {}).items())
            out.append(Message(m.data, m.subject, ts, m, headers, (key, seq)))
        return out

    async def _wait_out(self, exc: BaseException) -> None:
        """A transient failure (the connection down, JetStream unavailable while the server
        restarts) is waited out within the retry budget; anything else is raised."""
        if not isinstance(exc, (OSError, asyncio.TimeoutError, self._nats.errors.Error)):
            raise exc
        self._outage.failed(type(exc).__name__)
        await asyncio.sleep(0.2)

    def drained(self) -> bool:
        """Whether the broker holds nothing more for this consumer: no message undelivered,
        none delivered and unacknowledged (e.g. taken by a session that was killed, which
        comes again after the ack wait)."""
        return bool(self._loop.run(self._drained()))

    async def _drained(self) -> bool:
        try:
            infos = [await sub.consumer_info() for _key, sub in self.subs]
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
        # Acks were flushed when they were sent: nothing is left to drain.
        self._loop.close(self.nc.close(), timeout=10 if self.nc.is_connected else 1)


def _durable(consumer: str, topic: str) -> str:
    return f"{consumer}_{re.sub(r'[^A-Za-z0-9_-]', '_', topic)}"[:64]


def _stream_seq_and_time(reply: str) -> tuple[int, int]:
    """A JetStream message's stream sequence (its position) and the stream's time of it (ns:
    the same when the message is delivered again), from its ack subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<cseq>.<ns>.<pending>``, or with domain
    and account hash after ``ACK``: 12 tokens) — read directly, not through nats-py's metadata
    objects, for every message."""
    tokens = reply.split(".")
    at = 5 if len(tokens) == 9 else 7
    return int(tokens[at]), int(tokens[at + 2])


class NatsPublisher:
    """Publishes message bodies to one JetStream subject (``obsflow simulate --to``); creates
    a stream for the subject's first token (``obs.sim`` -> ``obs.>``) when none holds it."""

    def __init__(self, broker: BrokerURL, topic: str) -> None:
        self.broker, self.subject = broker, topic
        self._nats = client_library("nats")
        self._loop = Loop("obsflow-nats-publish")
        self._loop.open(self._connect())

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
        # publish_async keeps thousands of publishes in flight; each is still acknowledged.
        futures = [await self.js.publish_async(self.subject, b) for b in bodies]
        await self.js.publish_async_completed()
        for f in futures:
            f.result()  # raises if the server refused one

    def close(self) -> None:
        self._loop.close(self.nc.close(), timeout=10)


if TYPE_CHECKING:  # the registry loads these by name: mypy checks that they fit its Protocols
    _client: ClientFactory = NatsClient
    _publisher: PublisherFactory = NatsPublisher
