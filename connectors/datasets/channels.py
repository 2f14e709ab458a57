"""What a live session learns besides readings, kept per capture: channel metadata (units,
display limits, enum labels: ``channels.json``) and the gaps of each session (disconnects,
and the time no session ran: ``gaps/<session>.json``), under
``_obsflow/captures/<capture>/``. Small JSON documents: views and the page read them."""

from __future__ import annotations

from typing import Any

import numpy as np

from obsflow.connectors.ids import check_name
from obsflow.connectors.storage.layout import META
from obsflow.connectors.storage.store import Store


def _dir(capture: str) -> str:
    return f"{META}/captures/{check_name(capture, kind='capture')}"


def iso(ns: int | None) -> str | None:
    """ns since the epoch as ISO 8601 UTC (to the nanosecond)."""
    return None if ns is None else str(np.datetime64(int(ns), "ns")) + "Z"


def read_channels(store: Store, capture: str) -> dict[str, dict[str, Any]]:
    """Per channel: the metadata a live source recorded (``{}`` without)."""
    rel = f"{_dir(capture)}/channels.json"
    doc = store.read_json(rel) if store.exists(rel) else {}
    return dict(doc.get("channels", {}))


def record_channels(store: Store, capture: str, channels: dict[str, dict[str, Any]]) -> None:
    """Merge ``channels`` into the capture's channel metadata (a later description wins)."""
    merged = read_channels(store, capture) | channels
    store.write_json(f"{_dir(capture)}/channels.json", {"channels": merged})


def record_gaps(store: Store, capture: str, session: str, gaps: list[dict[str, Any]]) -> None:
    """The gaps of ``session`` so far (the whole list: the document is rewritten)."""
    check_name(session, kind="session")
    store.write_json(f"{_dir(capture)}/gaps/{session}.json", {"session": session, "gaps": gaps})


def read_gaps(store: Store, capture: str, *, limit: int | None = None) -> list[dict[str, Any]]:
    """The recorded gaps of the capture's sessions, by start time: all, or the newest
    ``limit`` (reading the newest sessions' documents only: session ids sort by time)."""
    rel = f"{_dir(capture)}/gaps"
    names = sorted((n for n in store.listdir(rel) if n.endswith(".json")), reverse=True)
    out: list[dict[str, Any]] = []
    for name in names:
        if limit is not None and len(out) >= limit:
            break
        doc = store.read_json(f"{rel}/{name}")
        out += [{**g, "session": doc["session"]} for g in doc.get("gaps", [])]
    out.sort(key=lambda g: str(g.get("since")))
    return out if limit is None else out[len(out) - limit :]


def display(channels: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What a chart of these channels can use: ``units`` (channel -> unit, where one is
    given) and ``limits`` (channel -> ``[low, high]`` display limits, where set: EPICS's
    0..0 means none), each only when some channel has it."""
    units = {c: str(m["units"]) for c, m in channels.items() if m.get("units")}
    limits = {}
    for c, m in channels.items():
        low, high = m.get("display_low"), m.get("display_high")
        if isinstance(low, int | float) and isinstance(high, int | float) and low < high:
            limits[c] = [float(low), float(high)]
    return {k: v for k, v in (("units", units), ("limits", limits)) if v}
