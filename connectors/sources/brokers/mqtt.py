"""``mqtt://host:port`` (``mqtts://`` for TLS): an MQTT v5 persistent session with manual acks.

The message time is the time it was received (MQTT carries no broker time). Credentials:
``OBSFLOW_MQTT_USER``/``OBSFLOW_MQTT_PASSWORD``, and ``OBSFLOW_MQTT_CA_FILE`` for ``mqtts://``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from obsflow.connectors.formats.messages import Message, text_headers
from obsflow.connectors.sources.brokers import BrokerError, BrokerURL, Subscription, client_library
from obsflow.connectors.sources.brokers.common import Outage, login, retry_seconds

if TYPE_CHECKING:
    from obsflow.connectors.sources.brokers import ClientFactory, PublisherFactory

MAX_RECEIVE = 65_535  # the largest ReceiveMaximum MQTT v5 allows


def paho_client(broker: BrokerURL, **options: Any) -> Any:
    """A paho MQTT v5 client for ``broker`` (``options``: ``client_id``, ``manual_ack``), with
    the login and the TLS authority from the environment."""
    mqtt = client_library("mqtt")
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, **options
    )
    if user := login("MQTT"):
        client.username_pw_set(*user)
    if broker.scheme == "mqtts":
        client.tls_set(ca_certs=os.environ.get("OBSFLOW_MQTT_CA_FILE"))
    return client


class MqttClient:
    """An MQTT v5 persistent session (client id = ``consumer``) subscribed at QoS 1, with
    manual acknowledgement: a PUBACK goes out only when the session acks, after the commit.

    The broker keeps the session (``SessionExpiryInterval``, a week) and what it queued for it
    while the session is away; messages delivered and not acknowledged come again when the
    session reconnects, first and in their order (MQTT v5 4.4, 4.6): MQTT has no positions to
    record, so a resumed session's order rests on that. ``ReceiveMaximum`` bounds the messages
    in flight, and the client itself holds no more (back-pressure, ``_on_message``); the
    broker's own limits (mosquitto's ``max_inflight_messages``, ``max_queued_messages``, whose
    default of 1000 silently drops messages) must allow as much. MQTT carries no broker time: a
    record without a time gets the time it was received. ``stream`` means nothing to MQTT.
    """

    SESSION_SECONDS = 7 * 24 * 3600

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.broker, self.topics, self.consumer = sub.broker, list(sub.topics), sub.consumer
        self._queue: list[Message] = []
        # messages held at most (see ``_on_message``)
        self._most = max(1, min(sub.max_in_flight, MAX_RECEIVE))
        self._closing = False
        self._ready = threading.Condition()
        self._connected = threading.Event()
        self._answered = threading.Event()  # connected, or the login was refused
        self._refused: str | None = None
        self._outage = Outage(f"MQTT broker at {sub.broker} unreachable", away=True)
        self.client = paho_client(sub.broker, client_id=sub.consumer, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._start()

    def _start(self) -> None:
        """Connect in paho's network thread (``connect_async`` + ``loop_start``: the first
        connection is retried like any reconnect), and wait for the broker's answer."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.SESSION_SECONDS
        props.ReceiveMaximum = self._most
        host, port = self.broker.hosts[0]
        self.client.connect_async(host, port, keepalive=30, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._answered.wait(retry_seconds()) or self._refused is not None:
            self.client.loop_stop()
            if self._refused is not None:
                raise BrokerError(
                    f"MQTT broker at {self.broker} refused the login ({self._refused}): check "
                    "OBSFLOW_MQTT_USER and OBSFLOW_MQTT_PASSWORD"
                )
            raise BrokerError(
                f"cannot reach MQTT broker at {self.broker} (gave up after {retry_seconds():g} s)"
            )

    def __repr__(self) -> str:
        return self.sub.describe("MqttClient")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            # Bad user name or password (134), not authorized (135): retrying will not help.
            if reason.value in (134, 135) and not self._answered.is_set():
                self._refused = str(reason)
                self._answered.set()
            return
        for topic in self.topics:  # the session may have been lost: subscribe every time
            client.subscribe(topic, qos=1)
        self._outage.over()
        self._connected.set()
        self._answered.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._connected.clear()
        self._outage.begin()

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
        if not out:
            self._outage.check()
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


class MqttPublisher:
    """Publishes message bodies to one MQTT topic at QoS 1 (``obsflow simulate --to``)."""

    def __init__(self, broker: BrokerURL, topic: str) -> None:
        self.broker, self.topic = broker, topic
        self.client = paho_client(broker)
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


if TYPE_CHECKING:  # the registry loads these by name: mypy checks that they fit its Protocols
    _client: ClientFactory = MqttClient
    _publisher: PublisherFactory = MqttPublisher
