"""Hosts of their own for cluster tests: Linux network namespaces joined by a bridge.

``Hosts`` makes one namespace per node (``w0``, ``w1``, ``s3``), each with its own address on
10.77.0.0/24 behind a bridge in a fourth (``hub``) namespace, and removes them again (killing
whatever still runs inside). Needs root (CAP_NET_ADMIN) and iproute2's ``ip`` and ``ss``;
``make test`` installs iproute2. Names carry the creating process's pid, so namespaces a dead
test process left behind are swept (``sweep_stale``) and parallel test processes never clash.

Inside this sandbox the root namespace accepts any TCP connection (a proxy answers), so a
probe from it proves nothing: readiness is always checked from inside a node (``inside``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

PREFIX = "obsf"
NODES = {"w0": "10.77.0.1", "w1": "10.77.0.2", "s3": "10.77.0.3"}
_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def _remove(ns: str) -> None:
    """Kill what runs in ``ns``, then delete it."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def sweep_stale() -> None:
    """Delete namespaces of test processes that died without removing theirs."""
    for ns in namespaces():
        m = re.match(rf"{PREFIX}-(\d+)-", ns)
        if m and not os.path.exists(f"/proc/{m[1]}"):
            _remove(ns)


def check_can_run() -> None:
    """Fail (not skip) with what is missing: these tests are part of the suite."""
    missing = [tool for tool in ("ip", "ss") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"network-namespace tests need iproute2 ({', '.join(missing)})")
    if os.geteuid() != 0:
        raise RuntimeError("network-namespace tests need root (ip netns add): run as root")


class Hosts:
    """Three namespaces with addresses of their own (``NODES``) on one bridge."""

    def __init__(self) -> None:
        self.tag = f"{PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.ns = {node: f"{self.tag}-{node}" for node in [*NODES, "hub"]}

    def __enter__(self) -> Hosts:
        check_can_run()
        sweep_stale()
        hub = self.ns["hub"]
        try:
            _ip("netns", "add", hub)
            _ip("-n", hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", hub, "link", "set", "br0", "up")
            for node, address in NODES.items():
                ns, veth = self.ns[node], f"v{node}"
                _ip("netns", "add", ns)
                _ip(
                    "-n",
                    hub,
                    "link",
                    "add",
                    veth,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    ns,
                )
                _ip("-n", hub, "link", "set", veth, "master", "br0", "up")
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        present = set(namespaces())
        for ns in self.ns.values():
            if ns in present:
                _remove(ns)

    def argv(self, node: str, *command: str) -> list[str]:
        """``command`` run on ``node`` (``ip netns exec`` execs it: its pid is the command's)."""
        return ["ip", "netns", "exec", self.ns[node], *command]

    def run_inside(self, node: str, fn: Callable[[], T]) -> T:
        """``fn()`` on a thread that has joined ``node``'s namespace (plain sockets only:
        a library's own background threads would not follow it there)."""

        def enter() -> None:
            fd = os.open(f"/run/netns/{self.ns[node]}", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)

        with ThreadPoolExecutor(1, initializer=enter) as pool:
            return pool.submit(fn).result()

    def connected(self, node: str, port: int) -> bool:
        """Whether ``node`` has an established TCP connection from or to ``port``."""
        out = subprocess.run(
            self.argv(
                node,
                "ss",
                "-Htn",
                "state",
                "established",
                f"( sport = :{port} or dport = :{port} )",
            ),
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        return bool(out.strip())
