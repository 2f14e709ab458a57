"""The obsflow error hierarchy.

One root, ``ObsflowError``; each subclass also inherits the built-in exception it resembles,
so ``except ValueError`` keeps working for callers that do not know obsflow.
"""

from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound=BaseException)


class ObsflowError(Exception):
    """Root of every error obsflow raises on purpose."""


class SchemaError(ObsflowError, ValueError):
    """Input does not fit the reading schema (a column, a type, an id)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConfigError(ObsflowError, ValueError):
    """A command-line option, URL or definition file is invalid."""


class StoreError(ObsflowError, OSError):
    """The store cannot be read or written as asked."""


class StoreUnreachableError(StoreError):
    """The store did not answer, however long it was retried."""


class CaptureExistsError(StoreError, FileExistsError):
    """A capture exists with settings that differ from the ones asked for."""


def cause_of(exc: BaseException, kind: type[E] | tuple[type[E], ...]) -> E | None:
    """``exc`` or the first of its causes that is a ``kind`` (None: none is): Bytewax wraps
    what a step raises in errors of its own."""
    found: BaseException | None = exc
    while found is not None and not isinstance(found, kind):
        found = found.__cause__
    return found
