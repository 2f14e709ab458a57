"""``obsflow serve``: a read-only web app over a store — pages, an HTTP API, live view rows.

Routes (every one read-only; names are checked before they become paths):

- ``/`` lists captures and views; ``/views/{name}`` charts a view's series live.
- ``/api/captures``, ``/api/views``: what the store holds (JSON).
- ``/api/captures/{name}``, ``/api/views/{name}``, ``/api/views/{name}/late``,
  ``/api/deadletters``, ``/api/runs``: rows, read as the Explorer reads them (filters pushed
  down: ``source``, ``channel`` (repeatable), ``from``, ``until``, ``limit``; ``trace_id``
  (repeatable) on a capture, late readings and dead letters), as ``format=json`` (records,
  times ISO-8601 UTC), ``csv`` or ``arrow`` (an IPC stream).
- ``/api/status``: the live feeds (position and streams per watched view).
- ``/api/views/{name}/events``: Server-Sent Events of the view's rows (``source``/``channel``
  filters, repeatable: one stream carries every series a page shows).

**Event ids are positions in the view, not counters of this process.** A view's table changes
only by commits numbered in its capture's order; a row carries the run that last wrote it. The
event with id ``n`` holds the rows that commit ``n`` wrote and no later commit rewrote, so the
events after ``n`` hold exactly the rows that changed after ``n``, each once, in its latest
version. A client that reconnects with ``Last-Event-ID: n`` — to a restarted server too —
gets those events: no gap, no duplicate. A first connection gets a snapshot (the rows of
commits up to the feed's position, id = that position), then the events.

One poller per view (``Feed``) looks for the view table's next log entry (one request per
tick, no listing) and fans each commit's rows out to the subscribers' bounded queues; a
subscriber whose queue is full (it stopped reading) is dropped, and slows nobody.

The modules: ``config`` (``ServeConfig``, the token), ``filters`` (a request's filters),
``errors`` (``ERRORS``: error type -> HTTP status, and the name checks), ``encoding`` (rows as
JSON, CSV or Arrow responses), ``feeds`` (the pollers, subscribers and events behind the SSE
route), ``auth`` (the token middleware), ``app`` (``App``: the endpoints and their route
table) and ``server`` (``create_app``, the socket, uvicorn). Only ``app``, ``encoding`` and
``auth`` import the web packages (the ``serve`` extra), and only when the app is made.
"""

from __future__ import annotations

from obsflow.flows.serve.config import TOKEN_ENV, ServeConfig, is_loopback, read_token
from obsflow.flows.serve.errors import ERRORS, NotFoundError
from obsflow.flows.serve.feeds import (
    QUEUE_BYTES,
    QUEUE_EVENTS,
    SEND_TIMEOUT,
    Feed,
    Subscriber,
    ViewCommit,
)
from obsflow.flows.serve.filters import MAX_LIMIT, Filters
from obsflow.flows.serve.server import create_app, listening_socket, serve

__all__ = [
    "ERRORS",
    "MAX_LIMIT",
    "QUEUE_BYTES",
    "QUEUE_EVENTS",
    "SEND_TIMEOUT",
    "TOKEN_ENV",
    "Feed",
    "Filters",
    "NotFoundError",
    "ServeConfig",
    "Subscriber",
    "ViewCommit",
    "create_app",
    "is_loopback",
    "listening_socket",
    "read_token",
    "serve",
]
