"""Running the app: ``create_app`` (or the install hint), the listening socket, uvicorn."""

from __future__ import annotations

import logging
import socket
from errno import EADDRINUSE
from typing import Any

from obsflow.connectors.errors import ConfigError
from obsflow.flows.serve.config import ServeConfig
from obsflow.flows.serve.feeds import LOG, SEND_TIMEOUT


def create_app(config: ServeConfig) -> Any:
    """The Starlette app for ``config`` (``obsflow serve`` runs it with uvicorn)."""
    try:
        import sse_starlette  # noqa: F401 - only whether the web packages are there
        import starlette  # noqa: F401
    except ImportError:
        raise ConfigError(
            "obsflow serve needs its web packages: pip install 'obsflow[serve]'"
        ) from None
    from obsflow.flows.serve.app import App

    return App(config).starlette()


STALLED_MESSAGE = (
    f"dropped an event stream whose client stopped reading (a send blocked {SEND_TIMEOUT} s)"
)


class StalledStreams(logging.Filter):
    """A stream dropped because its client stopped reading is routine: one line, not the
    traceback uvicorn logs for an app's exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        from sse_starlette.sse import SendTimeoutError

        if record.exc_info and isinstance(record.exc_info[1], SendTimeoutError):
            record.msg, record.args, record.exc_info = STALLED_MESSAGE, (), None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` — or a clear error, before anything says it serves."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart reuses its port
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = " (another obsflow serve?): choose another --port" if exc.errno == EADDRINUSE else ""
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    return sock


def serve(config: ServeConfig, sock: socket.socket) -> None:
    """Run the app on ``sock`` (bound) until interrupted."""
    import uvicorn

    LOG.addFilter(StalledStreams())
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
    )
    server.run(sockets=[sock])
