"""Broker clients for live ingest: URLs, credentials, and one client per protocol.

``connect(url, topics, consumer)`` gives an object with ``fetch(max_messages, timeout)``,
``ack(messages)`` and ``close()`` (``flows.pipeline.live.BrokerClient``). The session acknowledges a
message only after the capture commit holding it, so every client is at-least-once and the
capture's identity dedup makes it exactly-once.

- ``nats://host:port``: a JetStream durable pull consumer per topic (subject); the stream is
  found from the subject, or named with ``stream``. The message time is the stream's.
- ``mqtt://host:port`` (``mqtts://`` for TLS): an MQTT v5 persistent session with manual acks
  (``MqttClient``). The message time is the time it was received.
- ``kafka://host:port[,host:port]``: every partition of the topics, offsets kept in the group
  ``consumer`` and committed after the capture commit (``KafkaClient``). The message time is
  the record's timestamp.

Back-pressure: ``max_in_flight`` bounds the messages delivered and not yet acknowledged (NATS
``max_ack_pending``, MQTT ``ReceiveMaximum``); a Kafka consumer prefetches at most
``KAFKA_PREFETCH_KIB``. The session fetches again only after its commit, so a slow store slows
consumption and a backlog stays on the broker.

Credentials come from the environment only, never from the command line, and never appear
in errors or reprs: ``OBSFLOW_NATS_USER``/``OBSFLOW_NATS_PASSWORD``, ``OBSFLOW_NATS_TOKEN``
or ``OBSFLOW_NATS_CREDS`` (a file); ``OBSFLOW_MQTT_USER``/``OBSFLOW_MQTT_PASSWORD`` and
``OBSFLOW_MQTT_CA_FILE``; ``OBSFLOW_KAFKA_USER``/``OBSFLOW_KAFKA_PASSWORD`` (SASL). A broker
down for longer than ``OBSFLOW_BROKER_RETRY_SECONDS`` (default 60) stops the session with one
line; the same command resumes where the acknowledgements stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from obsflow.connectors.errors import ConfigError, ObsflowError
from obsflow.connectors.formats.messages import Message, text_headers
from obsflow.connectors.storage.retry import reason

SCHEMES = ("nats", "mqtt", "mqtts", "kafka")
CONSUMER_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
FETCH_BYTES = 32 << 20  # one fetch request asks for about this much
CYCLE_BYTES = 256 << 20  # a cycle takes at most about this much: bounded memory
KAFKA_PREFETCH_KIB = 64 << 10  # librdkafka's local queue, stated rather than assumed
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
        if "@" in rest:  # checked first: no error message may echo what the URL holds
            raise ConfigError(
                "credentials in a broker URL are refused (they would end up in logs and "
                "shell history): set them in the environment"
            )
        if not sep or scheme not in SCHEMES:
            raise ConfigError(
                f"{scheme}:// is no broker URL: use {', '.join(s + '://' for s in SCHEMES)}"
            )
        hosts = []
        for part in rest.rstrip("/").split(","):
            split = urlsplit(f"//{part}")
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
    if broker.scheme in ("mqtt", "mqtts"):
        return MqttClient(broker, list(topics), consumer, min(max_in_flight, 65_535))
    return KafkaClient(broker, list(topics), consumer)


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


def _client_library(module: str, scheme: str, package: str) -> Any:
    """A broker client library, imported when its scheme is used (they are optional)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"{scheme}:// needs the {package} package: pip install 'obsflow[live]'"
        ) from None


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
        self._nats = _client_library("nats", "nats", "nats-py")
        self._loop = _Loop("obsflow-nats")
        self._down_since: float | None = None
        self._message_bytes = 64 * 1024  # a cautious guess until messages were seen
        self.last_error = ""
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

        async def quiet(exc: Exception) -> None:
            """Without an error callback nats-py prints a traceback per reconnect attempt;
            the session reports an outage itself (``_wait_out``)."""
            self.last_error = reason(exc)[:200]

        options: dict[str, Any] = {
            "error_cb": quiet,
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
            left = deadline - time.monotonic()
            try:
                # (a refused login makes connect() retry for ever: the budget bounds it)
                self.nc = await asyncio.wait_for(nats.connect(**options), max(left, 0.5))
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
        for topic in self.topics:
            name = await self._named(stream, topic) if stream else await self._stream_of(topic)
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
            try:
                sub = await self.js.pull_subscribe(
                    topic, durable=durable, stream=name, config=config
                )
            except self._nats.js.errors.APIError as exc:  # e.g. a subject outside the stream
                raise BrokerError(
                    f"JetStream on {self.broker} refused a consumer of {topic!r} on stream "
                    f"{name!r}: {exc.description}"
                ) from None
            info = await sub.consumer_info()
            subjects = [info.config.filter_subject, *(info.config.filter_subjects or [])]
            if topic not in subjects:  # an existing durable of that name reads something else
                raise ConfigError(
                    f"--consumer {self.consumer!r} on stream {name!r} already reads "
                    f"{', '.join(s for s in subjects if s)!r}, not {topic!r}: use another "
                    "--consumer name"
                )
            if (info.config.max_ack_pending, info.config.ack_wait) != (
                config.max_ack_pending,
                config.ack_wait,
            ):  # a durable keeps what it was created with: this session's bounds apply now
                config.name, config.filter_subject = durable, topic
                await self.js.add_consumer(name, config=config)
            self.subs.append(sub)

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
            for sub in self.subs:
                # Ask for what fits the client's buffer: more than its 256 MiB and the server's
                # extra messages are dropped, to come again only after the ack wait.
                fits = max(1, FETCH_BYTES // self._message_bytes)
                want = min(max_messages - len(out), 10_000, fits)
                if want <= 0:
                    break
                if self.nc.is_connected:
                    self._down_since = None
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
                out.extend(_message(m) for m in msgs)
                if msgs:
                    fetched = sum(len(m.data) for m in msgs)
                    size += fetched
                    self._message_bytes = max(64, fetched // len(msgs))
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
                self._loop.run(self.nc.close(), timeout=10 if self.nc.is_connected else 1)
        finally:
            self._loop.stop()


class MqttClient:
    """An MQTT v5 persistent session (client id = ``consumer``) subscribed at QoS 1, with
    manual acknowledgement: a PUBACK goes out only when the session acks, after the commit.

    The broker keeps the session (``SessionExpiryInterval``, a week) and what it queued for it
    while the session is away; messages delivered and not acknowledged come again when the
    session reconnects. ``ReceiveMaximum`` bounds the messages in flight, and the client itself
    holds no more (back-pressure, ``_on_message``); the broker's own limits (mosquitto's
    ``max_inflight_messages``, ``max_queued_messages``, whose default of 1000 silently drops
    messages) must allow as much. MQTT carries no broker time: a record without a time gets the
    time it was received.
    """

    SESSION_SECONDS = 7 * 24 * 3600

    def __init__(
        self, broker: BrokerURL, topics: list[str], consumer: str, max_in_flight: int
    ) -> None:
        mqtt = _client_library("paho.mqtt.client", "mqtt", "paho-mqtt")
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.broker, self.topics, self.consumer = broker, topics, consumer
        self._queue: list[Message] = []
        self._most = max(1, max_in_flight)  # messages held at most (see ``_on_message``)
        self._closing = False
        self._ready = threading.Condition()
        self._connected = threading.Event()
        self._answered = threading.Event()  # connected, or the login was refused
        self._refused: str | None = None
        self._down_since: float | None = time.monotonic()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=consumer,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        env = os.environ
        if env.get("OBSFLOW_MQTT_USER"):
            self.client.username_pw_set(env["OBSFLOW_MQTT_USER"], env.get("OBSFLOW_MQTT_PASSWORD"))
        if broker.scheme == "mqtts":
            self.client.tls_set(ca_certs=env.get("OBSFLOW_MQTT_CA_FILE"))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.SESSION_SECONDS
        props.ReceiveMaximum = self._most
        host, port = broker.hosts[0]
        # connect_async + loop_start: the first connection is retried like any reconnect.
        self.client.connect_async(host, port, keepalive=30, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._answered.wait(retry_seconds()) or self._refused is not None:
            self.client.loop_stop()
            if self._refused is not None:
                raise BrokerError(
                    f"MQTT broker at {broker} refused the login ({self._refused}): check "
                    "OBSFLOW_MQTT_USER and OBSFLOW_MQTT_PASSWORD"
                )
            raise BrokerError(
                f"cannot reach MQTT broker at {broker} (gave up after {retry_seconds():g} s)"
            )

    def __repr__(self) -> str:
        return f"MqttClient({self.broker}, topics={self.topics!r}, consumer={self.consumer!r})"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            # Bad user name or password (134), not authorized (135): retrying will not help.
            if reason.value in (134, 135) and not self._answered.is_set():
                self._refused = str(reason)
                self._answered.set()
            return
        for topic in self.topics:  # the session may have been lost: subscribe every time
            client.subscribe(topic, qos=1)
        self._down_since = None
        self._connected.set()
        self._answered.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._connected.clear()
        if self._down_since is None:
            self._down_since = time.monotonic()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        message = Message(
            msg.payload,
            msg.topic,
            time.time_ns(),
            (msg.mid, msg.qos),
            text_headers(getattr(msg.properties, "UserProperty", None)),  # (MQTT v5)
        )
        with self._ready:
            # Mosquitto 2.0.11 (Debian 12) stops honouring ReceiveMaximum after the first
            # PUBACK and sends its whole queue: a full queue holds paho's network thread here
            # until a fetch takes from it, and TCP pushes back on the broker.
            while len(self._queue) >= self._most and not self._closing:
                self._ready.wait(0.5)
            self._queue.append(message)
            self._ready.notify_all()

    def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        deadline = time.monotonic() + timeout
        with self._ready:
            while len(self._queue) < max_messages:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            out, self._queue = self._queue[:max_messages], self._queue[max_messages:]
            self._ready.notify_all()  # room in the queue
        down = self._down_since
        if not out and down is not None and time.monotonic() - down > retry_seconds():
            raise BrokerError(
                f"MQTT broker at {self.broker} unreachable for {retry_seconds():g} s; run "
                "the same command again to resume"
            )
        return out

    def ack(self, messages: list[Message]) -> None:
        # A PUBACK lost with the connection only brings the message again: dedup drops it.
        for m in messages:
            mid, qos = m.token
            if qos:
                self.client.ack(mid, qos)

    def drained(self) -> bool:
        """MQTT does not say what a broker still holds; a resumed session gets its queued
        messages as soon as it connects, so: connected, and nothing received is waiting."""
        with self._ready:
            return self._connected.is_set() and not self._queue

    def close(self) -> None:
        with self._ready:
            self._closing = True
            self._ready.notify_all()
        self.client.disconnect()
        self.client.loop_stop()


KAFKA_LOG = logging.getLogger("obsflow.kafka")
KAFKA_LOG.addHandler(logging.NullHandler())  # not Python's last-resort stderr handler


def kafka_settings(broker: BrokerURL) -> dict[str, Any]:
    """librdkafka settings for ``broker``, with SASL credentials from the environment
    (``OBSFLOW_KAFKA_USER``/``OBSFLOW_KAFKA_PASSWORD``, ``OBSFLOW_KAFKA_MECHANISM``)."""
    settings: dict[str, Any] = {
        "bootstrap.servers": ",".join(f"{h}:{p}" for h, p in broker.hosts),
        "log_level": 3,
        # librdkafka repeats a connection failure many times a second; obsflow says it once
        # (``KafkaClient._away``), and these lines stay for a logging set up to show them.
        "logger": KAFKA_LOG,
    }
    env = os.environ
    if env.get("OBSFLOW_KAFKA_USER"):
        settings |= {
            "security.protocol": env.get("OBSFLOW_KAFKA_PROTOCOL", "SASL_SSL"),
            "sasl.mechanisms": env.get("OBSFLOW_KAFKA_MECHANISM", "SCRAM-SHA-512"),
            "sasl.username": env["OBSFLOW_KAFKA_USER"],
            "sasl.password": env.get("OBSFLOW_KAFKA_PASSWORD", ""),
        }
    return settings


class KafkaClient:
    """A Kafka consumer (confluent-kafka) that assigns itself every partition of its topics
    (names or ``^regex``) and keeps its offsets in group ``consumer``, committed only after the
    capture commit (auto-commit off): a rerun starts from the last offsets committed. The message
    time is the record's Kafka timestamp (create or log-append time), the same on every delivery.

    No group membership: one session writes a capture, so there is nobody to share
    partitions with, and a rerun after a kill starts at once instead of waiting for a join
    delay and for the killed member's session to expire."""

    REFRESH_SECONDS = 2.0  # topics matching a pattern, and new partitions, found this soon
    _OUTAGE = frozenset((-195, -187, -169))  # _TRANSPORT, _ALL_BROKERS_DOWN, _AUTHENTICATION

    def __init__(self, broker: BrokerURL, topics: list[str], consumer: str) -> None:
        kafka = _client_library("confluent_kafka", "kafka", "confluent-kafka")
        self.broker, self.topics, self.consumer = broker, topics, consumer
        self._kafka = kafka
        self._c = kafka.Consumer(
            kafka_settings(broker)
            | {
                "group.id": consumer,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "queued.max.messages.kbytes": KAFKA_PREFETCH_KIB,
            }
        )
        self._patterns = [re.compile(t) for t in topics if t.startswith("^")]
        self._assigned: set[tuple[str, int]] = set()
        self._refreshed = -math.inf
        self._down_since: float | None = None
        self._refresh()

    def _refresh(self) -> None:
        """Assign the partitions of matching topics not assigned yet, each from the offset the
        group committed (the earliest when none)."""
        self._refreshed = time.monotonic()
        try:
            metadata = self._c.list_topics(timeout=2)  # retried at the next fetch
            new = [
                self._kafka.TopicPartition(name, p)
                for name, topic in metadata.topics.items()
                if topic.error is None
                and (name in self.topics or any(r.match(name) for r in self._patterns))
                for p in topic.partitions
                if (name, p) not in self._assigned
            ]
            if new:
                self._c.incremental_assign(self._c.committed(new, timeout=10))
                self._assigned |= {(tp.topic, tp.partition) for tp in new}
        except self._kafka.KafkaException as exc:
            self._away(exc.args[0] if exc.args else exc)  # fetch waits; this runs again
        else:
            self._down_since = None

    def _away(self, error: Any) -> None:
        """The cluster did not answer: fine for a while (``retry_seconds``), then a
        ``BrokerError``; a refused login at once."""
        kafka = self._kafka.KafkaError
        code = error.code() if isinstance(error, kafka) else None
        text = error.str() if isinstance(error, kafka) else type(error).__name__
        if code in (kafka._AUTHENTICATION, kafka.SASL_AUTHENTICATION_FAILED):
            raise BrokerError(
                f"Kafka at {self.broker} refused the login ({text}): check OBSFLOW_KAFKA_USER "
                "and OBSFLOW_KAFKA_PASSWORD"
            )
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        elif now - self._down_since > retry_seconds():
            raise BrokerError(
                f"Kafka at {self.broker} unavailable for {retry_seconds():g} s ({text}); run "
                "the same command again to resume"
            )

    def __repr__(self) -> str:
        return f"KafkaClient({self.broker}, topics={self.topics!r}, consumer={self.consumer!r})"

    def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        if time.monotonic() - self._refreshed > self.REFRESH_SECONDS:
            self._refresh()
        deadline = time.monotonic() + timeout
        out: list[Message] = []
        while len(out) < max_messages and (left := deadline - time.monotonic()) > 0:
            for m in self._c.consume(
                num_messages=min(max_messages - len(out), 10_000), timeout=left
            ):
                error = m.error()
                if error is None:
                    ts = m.timestamp()[1]
                    token = (m.topic(), m.partition(), m.offset())
                    out.append(
                        Message(
                            m.value() or b"",
                            m.topic(),
                            ts * 1_000_000,
                            token,
                            text_headers(m.headers()),
                        )
                    )
                elif error.fatal():
                    raise BrokerError(f"Kafka at {self.broker}: {reason(Exception(error.str()))}")
                elif error.code() in self._OUTAGE:
                    self._away(error)
            if out:
                self._down_since = None
                break
        return out

    def ack(self, messages: list[Message]) -> None:
        """Commit, per partition, the offset after the last message of the cycle."""
        last: dict[tuple[str, int], int] = {}
        for m in messages:
            topic, partition, offset = m.token
            last[(topic, partition)] = max(offset, last.get((topic, partition), -1))
        offsets = [self._kafka.TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
        deadline = time.monotonic() + retry_seconds()
        while True:
            try:
                self._c.commit(offsets=offsets, asynchronous=False)
                return
            except self._kafka.KafkaException as exc:
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"Kafka at {self.broker}: cannot commit offsets ({reason(exc)}); the "
                        "messages come again to the next run and are dropped as duplicates"
                    ) from None
                time.sleep(0.5)

    def drained(self) -> bool:
        """Partitions assigned, and each read up to its end (what was committed or consumed)."""
        assigned = self._c.assignment()
        if not assigned:
            return False
        for tp in self._c.position(assigned):
            low, high = self._c.get_watermark_offsets(tp, timeout=5, cached=False)
            if high <= low:
                continue  # an empty partition
            # No position yet (nothing read from it this session): where the group stands.
            done = tp.offset if tp.offset >= 0 else self._c.committed([tp], timeout=5)[0].offset
            if done < high:
                return False
        return True

    def close(self) -> None:
        self._c.close()


def _durable(consumer: str, topic: str) -> str:
    return f"{consumer}_{re.sub(r'[^A-Za-z0-9_-]', '_', topic)}"[:64]


def _message(m: Any) -> Message:
    """A JetStream message: its time is the stream's (ns, in the ack subject), so it is the
    same when the message is delivered again."""
    tokens = m.reply.split(".")
    ts = int(tokens[7] if len(tokens) == 9 else tokens[9])
    return Message(m.data, m.subject, ts, m, text_headers((m.headers or {}).items()))


class NatsPublisher:
    """Publishes message bodies to one JetStream subject (``obsflow simulate --to``); creates
    a stream for the subject's first token (``obs.sim`` -> ``obs.>``) when none holds it."""

    def __init__(self, broker: BrokerURL, subject: str) -> None:
        self.broker, self.subject = broker, subject
        self._nats = _client_library("nats", "nats", "nats-py")
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
        # publish_async keeps thousands of publishes in flight; each is still acknowledged.
        futures = [await self.js.publish_async(self.subject, b) for b in bodies]
        await self.js.publish_async_completed()
        for f in futures:
            f.result()  # raises if the server refused one

    def close(self) -> None:
        try:
            with contextlib.suppress(Exception):
                self._loop.run(self.nc.close(), timeout=10)
        finally:
            self._loop.stop()


class MqttPublisher:
    """Publishes message bodies to one MQTT topic at QoS 1 (``obsflow simulate --to``)."""

    def __init__(self, broker: BrokerURL, topic: str) -> None:
        mqtt = _client_library("paho.mqtt.client", "mqtt", "paho-mqtt")
        from paho.mqtt.enums import CallbackAPIVersion

        self.broker, self.topic = broker, topic
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5
        )
        env = os.environ
        if env.get("OBSFLOW_MQTT_USER"):
            self.client.username_pw_set(env["OBSFLOW_MQTT_USER"], env.get("OBSFLOW_MQTT_PASSWORD"))
        if broker.scheme == "mqtts":
            self.client.tls_set(ca_certs=env.get("OBSFLOW_MQTT_CA_FILE"))
        self.client.max_inflight_messages_set(0)  # paho's own window is slower than ours
        host, port = broker.hosts[0]
        try:
            self.client.connect(host, port)
        except OSError as exc:
            raise BrokerError(f"cannot reach MQTT broker at {broker}: {exc}") from None
        self.client.loop_start()

    def publish(self, bodies: list[bytes]) -> None:
        """Publish and wait for every PUBACK (2,000 in flight at most: paho's message ids are
        16-bit)."""
        for i in range(0, len(bodies), 2000):
            infos = [self.client.publish(self.topic, b, qos=1) for b in bodies[i : i + 2000]]
            for info in infos:
                info.wait_for_publish(retry_seconds())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class KafkaPublisher:
    """Produces message bodies to one Kafka topic (``obsflow simulate --to``)."""

    def __init__(self, broker: BrokerURL, topic: str) -> None:
        kafka = _client_library("confluent_kafka", "kafka", "confluent-kafka")
        self.broker, self.topic = broker, topic
        self._p = kafka.Producer(kafka_settings(broker) | {"enable.idempotence": True})

    def publish(self, bodies: list[bytes]) -> None:
        for body in bodies:
            while True:
                try:
                    self._p.produce(self.topic, body)
                    break
                except BufferError:  # the local queue is full: let it drain
                    self._p.poll(0.1)
        if self._p.flush(retry_seconds()):
            raise BrokerError(f"Kafka at {self.broker} did not take every message")

    def close(self) -> None:
        self._p.flush(retry_seconds())


def publisher(url: str, topic: str) -> NatsPublisher | MqttPublisher | KafkaPublisher:
    broker = BrokerURL.parse(url)
    if broker.scheme == "nats":
        return NatsPublisher(broker, topic)
    if broker.scheme in ("mqtt", "mqtts"):
        return MqttPublisher(broker, topic)
    return KafkaPublisher(broker, topic)
