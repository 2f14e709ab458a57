"""What an error becomes in a response: ``ERRORS`` maps an error type to its HTTP status
(the app's one exception-handler map), and names are checked here before they become paths."""

from __future__ import annotations

from obsflow.connectors.datasets.views import read_view_doc
from obsflow.connectors.errors import ConfigError, ObsflowError
from obsflow.connectors.ids import check_name
from obsflow.connectors.storage.store import Store


class NotFoundError(ObsflowError):
    """A name that is not valid, or names nothing in the store."""


# error type -> (HTTP status, the response's text; None: the error's own message). Looked up
# along the raised error's MRO, so subclasses map as their parents do.
ERRORS: dict[type[Exception], tuple[int, str | None]] = {
    NotFoundError: (404, None),  # its message names what is missing
    FileNotFoundError: (404, "not found"),  # its message would name a path in the store
    ConfigError: (400, None),  # a bad query: its message says what to give instead
}


def checked(name: str, kind: str) -> str:
    try:
        return check_name(name, kind=kind)
    except ObsflowError:
        raise NotFoundError(f"no {kind} {name!r}") from None


def view_capture(store: Store, view: str) -> str:
    checked(view, "view name")
    try:
        return str(read_view_doc(store, view)["capture"])
    except (FileNotFoundError, ObsflowError):
        raise NotFoundError(f"no view {view!r}") from None
