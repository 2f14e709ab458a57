"""A TCP proxy on 127.0.0.1 that injects network faults between a client and an S3 server.

Plain threads, no pytest: tests point ``AWS_ENDPOINT_URL`` at ``proxy.endpoint_url`` and switch
faults on and off while a run goes through it::

    with FaultProxy(("127.0.0.1", server_port)) as proxy:
        proxy.reset_next(3)            # the next 3 requests get a TCP RST
        proxy.reset_next(2, when="response")   # forwarded, but the answer is replaced by a RST
        proxy.reset_all()              # RST every open (e.g. pooled keep-alive) connection
        proxy.fail_next(4, status=503) # answer the next 4 requests with an S3 error (SlowDown)
        proxy.stall(3.0)               # hold all bytes, both ways, for 3 s
        proxy.end_stall()              # ... or until now
        proxy.cycle(4, ["reset", "503", "stall"])  # every 4th request from now on meets the
                                       # next of these faults in turn; proxy.cycle(0) stops
        proxy.down(); proxy.up()       # refuse connections (the port is closed, but kept), then
                                       # serve again on it
        proxy.stats()                  # counters: connections, requests, resets, ...

A *request* is approximated at the TCP level: client bytes that arrive on a new connection or
after the server has sent something (HTTP/1.1 without pipelining, as botocore speaks it).
Everything is bounded: open connections (more are reset at once), the time to connect upstream,
the per-connection buffers (bytes are held in the kernel while stalled, not in this process).
``stop()`` closes every socket and joins every thread. Only loopback addresses are accepted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import selectors
import socket
import struct
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Literal, Self

HOST = "127.0.0.1"
When = Literal["accept", "request", "response"]
CYCLE_FAULTS = ("reset", "reset_response", "500", "502", "503", "504", "stall")
"""What ``cycle`` can inject: a RST before forwarding, a RST in place of the server's answer,
an S3 error of that HTTP status, a stall of ``stall_seconds`` that holds the request."""

_CHUNK = 64 * 1024
_TICK = 0.05  # how often loops look at flags (stall, reset, stop)
_MAX_HEADER = 64 * 1024
_ERROR_CODES = {500: "InternalError", 502: "BadGateway", 503: "SlowDown", 504: "GatewayTimeout"}


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return all(info[4][0].startswith("127.") for info in infos)


def _rst(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0) rather than an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


@dataclasses.dataclass
class Stats:
    """What the proxy has seen and done; a copy, safe to keep."""

    connections: int = 0  # accepted client connections
    active: int = 0  # open right now
    requests: int = 0  # client exchanges seen (see the module docstring)
    resets: int = 0  # connections reset on purpose (reset_next, reset_all, down)
    errors: int = 0  # requests answered with an HTTP error (fail_next)
    refused: int = 0  # connections reset because the proxy was full
    stalled: int = 0  # stall() calls
    upstream_failures: int = 0  # client connections whose upstream connect failed
    bytes_up: int = 0  # client -> server
    bytes_down: int = 0  # server -> client

    @property
    def faults(self) -> int:
        return self.resets + self.errors + self.stalled


class _Conn:
    """One client connection and its upstream connection, pumped by one thread."""

    def __init__(self, proxy: FaultProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.kill = threading.Event()  # set by other threads: RST both sides soon
        self.thread = threading.Thread(target=self._run, name="faultproxy-conn", daemon=True)

    def _run(self) -> None:
        p = self.proxy
        try:
            if p._take_fault("accept"):
                self._reset()
                return
            try:
                self.upstream = socket.create_connection(p.target, timeout=p.connect_timeout)
            except OSError:
                with p._lock:
                    p._stats.upstream_failures += 1
                self._reset(count=False)
                return
            self._pump()
        except (OSError, ValueError):  # a peer gone, or a request we could not parse
            self._reset(count=False)
        finally:
            self._close()
            p._forget(self)

    def _pump(self) -> None:
        p = self.proxy
        assert self.upstream is not None
        client, upstream = self.client, self.upstream
        for s in (client, upstream):
            s.setblocking(True)
            s.settimeout(p.io_timeout)  # bounds a sendall to a peer that stopped reading
        sel = selectors.DefaultSelector()
        try:
            sel.register(client, selectors.EVENT_READ, "up")
            sel.register(upstream, selectors.EVENT_READ, "down")
            new_request = True  # the next client bytes start a request
            reset_on_response = False
            while True:
                if self.kill.is_set() or p._stopping.is_set():
                    self._reset()
                    return
                if p._stalled():  # hold the bytes: leave them in the kernel buffers
                    time.sleep(_TICK)
                    continue
                for key, _ in sel.select(timeout=_TICK):
                    data = key.fileobj.recv(_CHUNK)  # type: ignore[union-attr]
                    if not data:  # orderly close by either side: close both
                        return
                    if key.data == "up":
                        if new_request:
                            new_request = False
                            with p._lock:
                                p._stats.requests += 1
                                p._arm_cycle()
                            while p._stalled() and not p._stopping.is_set():
                                time.sleep(_TICK)  # a stall this request set off holds it too
                            if p._take_fault("request"):
                                self._reset()
                                return
                            status = p._take_error()
                            if status:
                                self._answer_error(data, status)
                                return
                            reset_on_response = p._take_fault("response")
                        upstream.sendall(data)
                        with p._lock:
                            p._stats.bytes_up += len(data)
                    else:
                        if reset_on_response:  # the server did the work; the client never hears
                            self._reset()
                            return
                        new_request = True
                        client.sendall(data)
                        with p._lock:
                            p._stats.bytes_down += len(data)
        finally:
            sel.close()

    def _answer_error(self, first: bytes, status: int) -> None:
        """Read the request (headers and body) and answer it with an S3-style error."""
        data = first
        while b"\r\n\r\n" not in data and len(data) < _MAX_HEADER:
            more = self.client.recv(_CHUNK)
            if not more:
                return
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"expect", b"").lower() != b"100-continue":
            # Drain the body so that closing does not turn into a reset before it is read.
            left = int(headers.get(b"content-length", b"0") or 0) - len(body)
            while left > 0:
                more = self.client.recv(min(_CHUNK, left))
                if not more:
                    return
                left -= len(more)
        code = _ERROR_CODES.get(status, "InternalError")
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>injected by FaultProxy</Message></Error>"
        ).encode()
        response = (
            f"HTTP/1.1 {status} {code}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(xml)}\r\nConnection: close\r\n\r\n"
        ).encode() + xml
        self.client.sendall(response)
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_WR)

    def _reset(self, *, count: bool = True) -> None:
        if count:
            with self.proxy._lock:
                self.proxy._stats.resets += 1
        _rst(self.client)
        if self.upstream is not None:
            _rst(self.upstream)

    def _close(self) -> None:
        for s in (self.client, self.upstream):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()


class FaultProxy:
    """Forward 127.0.0.1:<port> to ``target`` (a loopback host and port), with faults on demand."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        port: int = 0,
        max_connections: int = 128,
        connect_timeout: float = 5.0,
        io_timeout: float = 30.0,
        max_stall: float = 60.0,
    ) -> None:
        host, target_port = target
        if not _is_loopback(host):
            raise ValueError(f"FaultProxy only forwards to loopback addresses, not {host!r}")
        self.target = (host, int(target_port))
        self.port = port
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.max_stall = max_stall
        self._lock = threading.Lock()
        self._stats = Stats()
        self._faults: dict[str, int] = {"accept": 0, "request": 0, "response": 0}
        self._errors: list[int] = []  # HTTP statuses for the next requests
        self._stall_until = 0.0
        self._cycle: tuple[int, tuple[str, ...], float] = (0, (), 0.0)  # every, faults, stall
        self._cycle_seen = 0  # requests since cycle() was called
        self._cycle_next = 0  # index of the next fault in the cycle
        self._conns: set[_Conn] = set()
        self._listener: socket.socket | None = None
        self._placeholder: socket.socket | None = None  # holds the port while down
        self._acceptor: threading.Thread | None = None
        self._accepting = threading.Event()
        self._stopping = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if not self.port:
            raise RuntimeError("proxy not started yet")
        return f"http://{HOST}:{self.port}"

    def start(self) -> Self:
        """Listen (on ``port``, or a free one that is then kept for ``up()``) and serve."""
        self._stopping.clear()
        self._listen()
        return self

    def stop(self) -> None:
        """Close the listener and every connection; join all threads. Idempotent."""
        self._stopping.set()
        self._unlisten()
        self._release_placeholder()
        for conn in self._snapshot_conns():
            conn.kill.set()
        for conn in self._snapshot_conns():
            conn.thread.join(timeout=5.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults -------------------------------------------------------------------------------

    def reset_next(self, n: int = 1, *, when: When = "request") -> None:
        """Reset the next ``n`` new connections (``accept``) or requests (``request``: before
        forwarding; ``response``: after forwarding, in place of the server's answer)."""
        if when not in self._faults:
            raise ValueError(f"when must be one of {sorted(self._faults)}, not {when!r}")
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._lock:
            self._faults[when] += n

    def fail_next(self, n: int = 1, *, status: int = 503) -> None:
        """Answer the next ``n`` requests with an S3 error of HTTP ``status`` (5xx) instead of
        forwarding them: 503 SlowDown (throttling), 500 InternalError, ..."""
        if n < 0 or not 500 <= status <= 599:
            raise ValueError("n must be >= 0 and status a 5xx code")
        with self._lock:
            self._errors += [status] * n

    def cycle(self, every: int, faults: Sequence[str] = (), *, stall_seconds: float = 0.3) -> None:
        """Spread faults over whatever runs next, however many requests it makes: from now on
        the 1st, ``every+1``-th, ``2*every+1``-th, ... request meets the next fault of
        ``faults`` in turn (see ``CYCLE_FAULTS``), cycling. ``every`` 0 stops it."""
        bad = [f for f in faults if f not in CYCLE_FAULTS]
        if every < 0 or bad or (every and not faults):
            raise ValueError(f"every must be >= 0 and faults some of {CYCLE_FAULTS}, not {bad}")
        with self._lock:
            self._cycle = (every, tuple(faults), min(max(0.0, stall_seconds), self.max_stall))
            self._cycle_seen = self._cycle_next = 0

    def pending(self) -> int:
        """Faults asked for with ``reset_next``/``fail_next`` that have not happened yet."""
        with self._lock:
            return sum(self._faults.values()) + len(self._errors)

    def clear(self) -> None:
        """Cancel pending faults, any stall and any cycle."""
        with self._lock:
            self._cycle = (0, (), 0.0)
            self._faults = dict.fromkeys(self._faults, 0)
            self._errors.clear()
            self._stall_until = 0.0

    def reset_all(self) -> int:
        """RST every open connection now (pooled keep-alive ones too); returns how many."""
        conns = self._snapshot_conns()
        for conn in conns:
            conn.kill.set()
        return len(conns)

    def stall(self, seconds: float) -> None:
        """Forward nothing, either way, for ``seconds`` (at most ``max_stall``), then resume."""
        seconds = min(max(0.0, seconds), self.max_stall)
        with self._lock:
            self._stall_until = max(self._stall_until, time.monotonic() + seconds)
            self._stats.stalled += 1

    def end_stall(self) -> None:
        """End a stall now (a test holds bytes with ``stall(max_stall)`` until it says so)."""
        with self._lock:
            self._stall_until = 0.0

    def down(self) -> None:
        """The server is gone: close the port (connections are refused) and reset open ones."""
        self._unlisten()
        for conn in self._snapshot_conns():
            conn.kill.set()

    def up(self) -> None:
        """Serve again, on the same port."""
        if self._accepting.is_set():
            return
        self._listen()

    @property
    def is_up(self) -> bool:
        return self._accepting.is_set()

    def stats(self) -> Stats:
        with self._lock:
            s = dataclasses.replace(self._stats)
            s.active = len(self._conns)
            return s

    # -- internals ----------------------------------------------------------------------------

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5.0
        while True:
            try:
                sock.bind((HOST, self.port))
                break
            except OSError as exc:  # the old port can linger briefly after down()
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    sock.close()
                    raise
                time.sleep(0.05)
        sock.listen(64)
        sock.settimeout(_TICK)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._release_placeholder()
        self._accepting.set()
        self._acceptor = threading.Thread(
            target=self._accept_loop, args=(sock,), name="faultproxy-accept", daemon=True
        )
        self._acceptor.start()

    def _unlisten(self) -> None:
        self._accepting.clear()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5.0)
            self._acceptor = None
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None
            # While down, the port stays bound (not listening: connections are refused), so
            # that no other server (another test's, another checkout's) is given it meanwhile.
            placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                placeholder.bind((HOST, self.port))
            except OSError:
                placeholder.close()
            else:
                self._placeholder = placeholder

    def _release_placeholder(self) -> None:
        if self._placeholder is not None:
            with contextlib.suppress(OSError):
                self._placeholder.close()
            self._placeholder = None

    def _accept_loop(self, sock: socket.socket) -> None:
        while self._accepting.is_set() and not self._stopping.is_set():
            try:
                client, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._stats.connections += 1
                full = len(self._conns) >= self.max_connections
                if full:
                    self._stats.refused += 1
                else:
                    conn = _Conn(self, client)
                    self._conns.add(conn)
            if full:
                _rst(client)
            else:
                conn.thread.start()

    def _forget(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _snapshot_conns(self) -> list[_Conn]:
        with self._lock:
            return list(self._conns)

    def _arm_cycle(self) -> None:
        """Called with the lock held for each new request: arm the cycle's next fault for it
        (taken by this request, or by one racing it on another connection)."""
        every, faults, stall_seconds = self._cycle
        if not every:
            return
        self._cycle_seen += 1
        if (self._cycle_seen - 1) % every:
            return
        fault = faults[self._cycle_next % len(faults)]
        self._cycle_next += 1
        if fault == "reset":
            self._faults["request"] += 1
        elif fault == "reset_response":
            self._faults["response"] += 1
        elif fault == "stall":
            self._stall_until = max(self._stall_until, time.monotonic() + stall_seconds)
            self._stats.stalled += 1
        else:
            self._errors.append(int(fault))

    def _take_fault(self, when: str) -> bool:
        with self._lock:
            if self._faults[when] > 0:
                self._faults[when] -= 1
                return True
            return False

    def _take_error(self) -> int:
        with self._lock:
            if not self._errors:
                return 0
            self._stats.errors += 1  # counted when taken: a client that hangs up still met it
            return self._errors.pop(0)

    def _stalled(self) -> bool:
        return time.monotonic() < self._stall_until
