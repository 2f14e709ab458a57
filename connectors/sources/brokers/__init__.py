"""Broker clients for live ingest: URLs, the scheme registry, and one module per protocol.

``connect(url, topics, consumer, positions=...)`` gives a ``BrokerClient``:
``fetch(max_messages, timeout)``, ``ack(messages)``, ``drained()`` and ``close()``. Where the
broker numbers its messages, each message says where it stands (``Message.position``: a source
partition's key and its position) and the client starts every partition at the position the
capture recorded (``positions(key)``), reading in the broker's order; messages before it that
come again are dropped. The session acknowledges a message only after the capture commit
holding it, so every client is at-least-once and the capture's identity dedup makes it
exactly-once. ``publisher(url, topic)`` gives a ``BrokerPublisher`` (``obsflow simulate
--to``).

``SCHEMES`` maps a URL scheme to what serves it (``Scheme``): the client and publisher classes
(``module:Class``, imported when the scheme is first used), the default port, and the client
library with its package for the install hint. A new protocol is one module and one entry.

- ``nats://host:port``: JetStream durable pull consumers from a start sequence, keyed
  ``nats:<stream>:<subject>`` (``nats.NatsClient``).
- ``mqtt://host:port`` (``mqtts://`` for TLS): an MQTT v5 persistent session with manual acks;
  no positions (``mqtt.MqttClient``).
- ``kafka://host:port[,host:port]``: every partition of the topics, keyed
  ``kafka:<topic>:<partition>``, offsets also committed to the group ``consumer``
  (``kafka.KafkaClient``).
- ``ca://PV[,PV]`` and ``pva://PV[,PV]``: EPICS Channel Access and PV Access monitors of
  process variables; the URL names PVs (the IOCs come from the EPICS environment), more come
  as ``topics`` (``--pvs FILE``); no positions, no consumer (``epics``, ``ca.CaClient``,
  ``pva.PvaClient``).

Back-pressure: ``max_in_flight`` bounds the messages delivered and not yet acknowledged (NATS
``max_ack_pending``, MQTT ``ReceiveMaximum``); a Kafka consumer prefetches at most
``kafka.KAFKA_PREFETCH_KIB``. The session fetches again only after its commit, so a slow store
slows consumption and a backlog stays on the broker.

Credentials come from the environment only, never from the command line, and never appear
in errors or reprs: ``OBSFLOW_NATS_USER``/``OBSFLOW_NATS_PASSWORD``, ``OBSFLOW_NATS_TOKEN``
or ``OBSFLOW_NATS_CREDS`` (a file); ``OBSFLOW_MQTT_USER``/``OBSFLOW_MQTT_PASSWORD`` and
``OBSFLOW_MQTT_CA_FILE``; ``OBSFLOW_KAFKA_USER``/``OBSFLOW_KAFKA_PASSWORD`` (SASL). A broker
down for longer than ``OBSFLOW_BROKER_RETRY_SECONDS`` (default 60) stops the session with one
line; the same command resumes where the acknowledgements stopped.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from obsflow.connectors.errors import ConfigError, ObsflowError
from obsflow.connectors.formats.messages import Message
from obsflow.connectors.ids import check_id

CONSUMER_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class BrokerError(ObsflowError, ConnectionError):
    """The broker cannot be reached, or refused what was asked."""


class BrokerClient(Protocol):
    """What a live session needs from a broker (``flows.pipeline.live.run_live`` uses it)."""

    def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        """Messages that arrive within ``timeout`` seconds (up to ``max_messages``)."""
        ...

    def ack(self, messages: list[Message]) -> None:
        """Acknowledge messages: the broker will not deliver them again."""
        ...

    def drained(self) -> bool:
        """Whether the broker holds no message for this consumer (delivered or not)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Monitoring(Protocol):
    """What a client without a broker queue (EPICS) tells besides messages: gaps in what it
    saw, the channels' metadata, and what it refuses to capture."""

    def gaps(self) -> list[dict[str, Any]]:
        """Gaps closed since the last call (``since``/``until``: ns since the epoch)."""
        ...

    def open_gaps(self) -> list[dict[str, Any]]: ...

    def channels(self) -> dict[str, dict[str, Any]]: ...

    def refusals(self) -> dict[str, str]: ...


class BrokerPublisher(Protocol):
    """What ``obsflow simulate --to`` needs from a broker."""

    def publish(self, bodies: list[bytes]) -> None:
        """Publish message bodies, each taken by the broker when this returns."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BrokerURL:
    scheme: str
    hosts: tuple[tuple[str, int], ...]
    names: tuple[str, ...] = ()  # what the URL names instead of hosts (EPICS: PVs)

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        """``scheme://host:port[,host:port]``: no credentials, path or query (credentials come
        from the environment); ``ca://PV[,PV]``, ``pva://PV[,PV]``: PV names (may be none,
        with ``--pvs``)."""
        scheme, sep, rest = url.partition("://")
        if sep and scheme in SCHEMES and SCHEMES[scheme].names:
            # (PV names hold ':' and '@' may be in one: they are names, never credentials)
            return cls(scheme, (), tuple(n for n in rest.split(",") if n))
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
            try:
                port = split.port or SCHEMES[scheme].port
            except ValueError:
                raise ConfigError(f"{part!r}: the port is not a number") from None
            hosts.append((split.hostname, port))
        return cls(scheme, tuple(hosts))

    def __str__(self) -> str:
        if SCHEMES[self.scheme].names:
            return f"{self.scheme}://" + ",".join(self.names)
        return f"{self.scheme}://" + ",".join(f"{h}:{p}" for h, p in self.hosts)


@dataclass(frozen=True)
class Subscription:
    """What a client reads: ``topics`` at ``broker`` as consumer ``consumer``, with at most
    ``max_in_flight`` messages delivered and not acknowledged (``stream``: JetStream's, where
    the scheme has streams)."""

    broker: BrokerURL
    topics: tuple[str, ...]
    consumer: str
    stream: str | None = None
    max_in_flight: int = 100_000
    # Where the capture stands on a source partition: key -> the next position (0: none).
    positions: Callable[[str], int] = field(default=lambda _key: 0, compare=False)
    source: str | None = None  # the source id of every reading (EPICS; None: the IOC)

    def describe(self, kind: str) -> str:
        """A client's repr: where and what it reads (never a credential)."""
        return f"{kind}({self.broker}, topics={list(self.topics)!r}, consumer={self.consumer!r})"


# A scheme's client class (it connects in its constructor), and its publisher class.
ClientFactory = Callable[[Subscription], BrokerClient]
PublisherFactory = Callable[[BrokerURL, str], BrokerPublisher]


@dataclass(frozen=True)
class Scheme:
    """What serves a URL scheme. ``client`` and ``publisher`` are classes, or ``module:Class``
    names (a leading ``.`` is this package) imported when the scheme is first used; ``library``
    is the client library's import name and ``package`` what pip installs it as."""

    client: str | ClientFactory
    publisher: str | PublisherFactory | None
    port: int  # the default port
    library: str | None = None
    package: str | None = None
    extra: str = "live"  # the obsflow extra that installs ``package``
    names: bool = False  # the URL names what to read (PVs), not hosts; no consumer


SCHEMES: dict[str, Scheme] = {
    "nats": Scheme(".nats:NatsClient", ".nats:NatsPublisher", 4222, "nats", "nats-py"),
    "mqtt": Scheme(
        ".mqtt:MqttClient", ".mqtt:MqttPublisher", 1883, "paho.mqtt.client", "paho-mqtt"
    ),
    "mqtts": Scheme(
        ".mqtt:MqttClient", ".mqtt:MqttPublisher", 8883, "paho.mqtt.client", "paho-mqtt"
    ),
    "kafka": Scheme(
        ".kafka:KafkaClient", ".kafka:KafkaPublisher", 9092, "confluent_kafka", "confluent-kafka"
    ),
    "ca": Scheme(".ca:CaClient", None, 5064, "caproto", "caproto", "epics", names=True),
    "pva": Scheme(".pva:PvaClient", None, 5075, "p4p", "p4p", "epics", names=True),
}


def is_broker_url(url: str) -> bool:
    return url.partition("://")[0] in SCHEMES and "://" in url


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
    positions: Callable[[str], int] = lambda _key: 0,
    source: str | None = None,
) -> BrokerClient:
    """A client for ``url`` (see the module docstring)."""
    broker = BrokerURL.parse(url)
    if SCHEMES[broker.scheme].names:  # the URL's names, then the others (--pvs)
        topics = [*broker.names, *topics]
        if not topics:
            raise ConfigError(
                f"{broker.scheme}:// needs PV names: {broker.scheme}://PV,PV or --pvs"
            )
    else:
        if not topics:
            raise ConfigError(f"{broker.scheme}:// needs --topic")
        check_consumer(consumer)
    if source is not None:
        check_id(source, kind="--source")
    factory: ClientFactory = _load(SCHEMES[broker.scheme].client)
    sub = Subscription(broker, tuple(topics), consumer, stream, max_in_flight, positions, source)
    return factory(sub)


def publisher(url: str, topic: str) -> BrokerPublisher:
    """A publisher of message bodies to ``topic`` at ``url``."""
    broker = BrokerURL.parse(url)
    name = SCHEMES[broker.scheme].publisher
    if name is None:
        raise ConfigError(f"{broker.scheme}:// takes no publishing: simulate to a file instead")
    factory: PublisherFactory = _load(name)
    return factory(broker, topic)


def _load(target: Any) -> Any:
    """``target`` itself, or the class a ``module:Class`` name names."""
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module, __name__), attr)


def client_library(scheme: str) -> Any:
    """The client library of ``scheme`` (``SCHEMES``), imported when the scheme is used (they
    are optional): a missing one is a ``ConfigError`` that says what to install."""
    entry = SCHEMES[scheme]
    assert entry.library is not None, f"{scheme}:// names no client library"
    try:
        return importlib.import_module(entry.library)
    except ImportError:
        raise ConfigError(
            f"{scheme}:// needs the {entry.package} package: pip install 'obsflow[{entry.extra}]'"
        ) from None
