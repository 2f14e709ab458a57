"""``obsflow serve``'s settings: where it listens, the token it asks for, how often it looks."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from obsflow.connectors.errors import ConfigError

TOKEN_ENV = "OBSFLOW_SERVE_TOKEN"  # noqa: S105 - a variable name, not a secret
COOKIE_SAFE = re.compile(r"[!#-+\x2d-:<-\[\]-~]+")  # RFC 6265's cookie-octets


@dataclass(frozen=True)
class ServeConfig:
    store: str
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    poll: float = 0.5  # seconds between looks for a new commit
    cors_origins: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()  # --allow-host: more names the server answers to

    def __post_init__(self) -> None:
        if not self.token and not is_loopback(self.host):
            raise ConfigError(
                f"--host {self.host} is reachable from other machines: give a token "
                f"(--token-file FILE or {TOKEN_ENV}), or bind 127.0.0.1"
            )
        if not self.poll > 0:
            raise ConfigError("--poll must be a positive number of seconds")

    def host_names(self) -> tuple[str, ...]:
        """The names a request's ``Host`` may give besides an address and ``localhost``: the
        machine's own (``hostname``, ``hostname -f``) when it listens beyond loopback, and
        ``--allow-host``'s."""
        own = () if is_loopback(self.host) else (socket.gethostname(), socket.getfqdn())
        return tuple(n for n in (*own, *self.allow_hosts) if n)

    def __repr__(self) -> str:  # the token never shows
        return f"ServeConfig(store={self.store!r}, host={self.host!r}, port={self.port})"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str | None) -> str | None:
    """The token from ``--token-file`` (first line), else from ``OBSFLOW_SERVE_TOKEN``."""
    if path:
        try:
            token = Path(path).read_text().strip().splitlines()[0].strip()
        except (OSError, IndexError):
            raise ConfigError(f"--token-file {path}: cannot read a token from it") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if token and len(token) < 16:
        raise ConfigError("the serve token must have at least 16 characters")
    if token and not COOKIE_SAFE.fullmatch(token):  # (the cookie holds it as it is)
        raise ConfigError(
            "the serve token may hold only ASCII letters, digits and punctuation other than "
            "quotes, commas, semicolons and backslashes (no spaces)"
        )
    return token or None
