"""``kafka://host:port[,host:port]``: every partition of the topics, offsets kept in a group.

Offsets are committed in the group ``consumer`` after the capture commit. The message time is
the record's timestamp. Credentials (SASL): ``OBSFLOW_KAFKA_USER``/``OBSFLOW_KAFKA_PASSWORD``,
over ``OBSFLOW_KAFKA_PROTOCOL`` (``SASL_SSL``) with ``OBSFLOW_KAFKA_MECHANISM``
(``SCRAM-SHA-512``).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from typing import TYPE_CHECKING, Any

from obsflow.connectors.formats.messages import Message, text_headers
from obsflow.connectors.sources.brokers import BrokerError, BrokerURL, Subscription, client_library
from obsflow.connectors.sources.brokers.common import Outage, login, retry_seconds
from obsflow.connectors.storage.retry import reason
from obsflow.connectors.waiting import poll

if TYPE_CHECKING:
    from obsflow.connectors.sources.brokers import ClientFactory, PublisherFactory

KAFKA_PREFETCH_KIB = 64 << 10  # librdkafka's local queue, stated rather than assumed
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
    if user := login("KAFKA"):
        env = os.environ
        settings |= {
            "security.protocol": env.get("OBSFLOW_KAFKA_PROTOCOL", "SASL_SSL"),
            "sasl.mechanisms": env.get("OBSFLOW_KAFKA_MECHANISM", "SCRAM-SHA-512"),
            "sasl.username": user[0],
            "sasl.password": user[1] or "",
        }
    return settings


class KafkaClient:
    """A Kafka consumer (confluent-kafka) that assigns itself every partition of its topics
    (names or ``^regex``). Each partition starts at the offset the capture's commits recorded
    (``kafka:<topic>:<partition>``), else at the one group ``consumer`` committed (a capture
    older than positions), else at the earliest; offsets are committed to the group too, only
    after the capture commit (auto-commit off), for the tools that watch a group's lag. The
    message time is the record's Kafka timestamp (create or log-append time), the same on every
    delivery.

    No group membership: one session holds a capture (``connectors.datasets.sessions``), so
    there is nobody to share partitions with, and a rerun after a kill starts at once instead
    of waiting for a join delay and for the killed member's session to expire. ``stream``
    means nothing to Kafka, and librdkafka's prefetch (``KAFKA_PREFETCH_KIB``) bounds what is
    in flight."""

    REFRESH_SECONDS = 2.0  # topics matching a pattern, and new partitions, found this soon
    _OUTAGE = frozenset((-195, -187, -169))  # _TRANSPORT, _ALL_BROKERS_DOWN, _AUTHENTICATION

    def __init__(self, sub: Subscription) -> None:
        kafka = client_library("kafka")
        self.sub = sub
        self.broker, self.topics, self.consumer = sub.broker, list(sub.topics), sub.consumer
        self._kafka = kafka
        self._c = kafka.Consumer(
            kafka_settings(sub.broker)
            | {
                "group.id": sub.consumer,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "queued.max.messages.kbytes": KAFKA_PREFETCH_KIB,
            }
        )
        self._patterns = [re.compile(t) for t in sub.topics if t.startswith("^")]
        self._assigned: set[tuple[str, int]] = set()
        self._refreshed = -math.inf
        self._outage = Outage(f"Kafka at {sub.broker} unavailable")
        self._refresh()

    def _refresh(self) -> None:
        """Assign the partitions of matching topics not assigned yet, each from the offset the
        capture recorded, else the group's (the earliest when none)."""
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
                starts = self._c.committed(new, timeout=10)
                for tp in starts:
                    if recorded := self.sub.positions(_key(tp.topic, tp.partition)):
                        tp.offset = recorded
                self._c.incremental_assign(starts)
                self._assigned |= {(tp.topic, tp.partition) for tp in new}
        except self._kafka.KafkaException as exc:
            self._away(exc.args[0] if exc.args else exc)  # fetch waits; this runs again
        else:
            self._outage.over()

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
        self._outage.failed(text)

    def __repr__(self) -> str:
        return self.sub.describe("KafkaClient")

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
                    out.append(_message(m))
                elif error.fatal():
                    raise BrokerError(f"Kafka at {self.broker}: {reason(Exception(error.str()))}")
                elif error.code() in self._OUTAGE:
                    self._away(error)
            if out:
                self._outage.over()
                break
        return out

    def ack(self, messages: list[Message]) -> None:
        """Commit, per partition, the offset after the last message of the cycle."""
        last: dict[tuple[str, int], int] = {}
        for m in messages:
            topic, partition, offset = m.token
            last[(topic, partition)] = max(offset, last.get((topic, partition), -1))
        offsets = [self._kafka.TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
        poll(
            lambda: self._c.commit(offsets=offsets, asynchronous=False),
            retry_on=self._kafka.KafkaException,
            seconds=retry_seconds(),
            every=0.5,
            gave_up=lambda exc: BrokerError(
                f"Kafka at {self.broker}: cannot commit offsets ({reason(exc)}); the "
                "messages come again to the next run and are dropped as duplicates"
            ),
        )

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


def _message(m: Any) -> Message:
    """A Kafka record: its time is the record's timestamp (ms, here ns); its token where it
    stands (topic, partition, offset)."""
    ts = m.timestamp()[1]
    token = (m.topic(), m.partition(), m.offset())
    headers = text_headers(m.headers())
    at = (_key(m.topic(), m.partition()), m.offset())
    return Message(m.value() or b"", m.topic(), ts * 1_000_000, token, headers, at)


def _key(topic: str, partition: int) -> str:
    return f"kafka:{topic}:{partition}"


class KafkaPublisher:
    """Produces message bodies to one Kafka topic (``obsflow simulate --to``)."""

    def __init__(self, broker: BrokerURL, topic: str) -> None:
        kafka = client_library("kafka")
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


if TYPE_CHECKING:  # the registry loads these by name: mypy checks that they fit its Protocols
    _client: ClientFactory = KafkaClient
    _publisher: PublisherFactory = KafkaPublisher
