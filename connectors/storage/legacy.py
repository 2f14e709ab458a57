"""Store layout 2, as far as ``store migrate`` reads it: plain Parquet data folders and a
home-made commit log under ``_obsflow/`` (obsflow before captures and views became tables).

Read-only but for what the first layout's migration writes (``migrate._to_layout_2``)::

    captures/<c>/part-0003/<run>-<chunk>.parquet         readings (time as ns timestamps)
    views/<v>/part-0003/<segment>.parquet                view rows, one object per segment
    late/<v>/<run>/part-0003-<chunk>.parquet              late readings
    deadletter/<run>/part-0000-<chunk>.parquet            dead letters
    documents/<c>/<run>/part-0000-<chunk>.parquet         Bluesky documents
    _obsflow/captures/<c>/capture.json                    partition count, created
    _obsflow/captures/<c>/commits/0000000001.json         the commit log
    _obsflow/captures/<c>/state/part-0003.json            next seq, dedup memory (+ .parquet)
    _obsflow/views/<v>/view.json                          definition
    _obsflow/views/<v>/state/part-0003.<table>.parquet    window state
    _obsflow/deadletter-resolved/<run>.parquet            dead letters a retry captured
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from obsflow.connectors.ids import check_name
from obsflow.connectors.storage.layout import CAPTURE_NAME, RUN_ID, VIEW_NAME, named
from obsflow.connectors.storage.store import Store

LAYOUT = 2
META = "_obsflow"
CAPTURE_OBJECT_RE = re.compile(r"^(?P<run>[A-Za-z0-9_-]+)-(?P<chunk>\d{6})\.parquet$")
PART_DIR_RE = re.compile(r"^part-(?P<part>\d{4})$")


# The paths below are layout 2's, frozen: they do not follow layout 3's (``layout``), whose
# helper ``named`` they only share to check the names in them.


def capture_part_dir(capture: str, part: int) -> str:
    return f"{named('captures', capture, CAPTURE_NAME)}/part-{part:04d}"


def capture_meta_dir(capture: str) -> str:
    return named(f"{META}/captures", capture, CAPTURE_NAME)


def capture_doc(capture: str) -> str:
    return f"{capture_meta_dir(capture)}/capture.json"


def commits_dir(capture: str) -> str:
    return f"{capture_meta_dir(capture)}/commits"


def commit_doc(capture: str, n: int) -> str:
    return f"{commits_dir(capture)}/{n:010d}.json"


def capture_state(capture: str, part: int, suffix: str) -> str:
    return f"{capture_meta_dir(capture)}/state/part-{part:04d}{suffix}"


def inputs_dir(capture: str) -> str:
    return f"{capture_meta_dir(capture)}/inputs"


def view_meta_dir(view: str) -> str:
    return named(f"{META}/views", view, VIEW_NAME)


def view_doc(view: str) -> str:
    return f"{view_meta_dir(view)}/view.json"


def view_state(view: str, part: int, table: str) -> str:
    return f"{view_meta_dir(view)}/state/part-{part:04d}.{table}.parquet"


def view_segment(view: str, part: int, name: str) -> str:
    return f"{named('views', view, VIEW_NAME)}/part-{part:04d}/{name}"


@dataclass(frozen=True)
class Commit:
    """One entry of a layout-2 commit log."""

    n: int
    run: str
    kind: str  # ingest | replay | close | migrate | compact | archive
    objects: tuple[str, ...] = ()
    end_of_run: bool = True
    close: tuple[dict[str, Any], ...] = ()
    replaced_views: tuple[str, ...] = ()
    rows: int = 0
    created: str = ""
    replaces: dict[str, tuple[str, ...]] = field(default_factory=dict)
    archived: dict[str, str] = field(default_factory=dict)

    def parts(self, capture: str) -> dict[int, list[str]]:
        """The capture objects of this commit per partition, in the order they were written."""
        out: dict[int, list[str]] = {}
        prefix = f"captures/{capture}/"
        for rel in self.objects:
            if rel.startswith(prefix):
                folder, _, name = rel[len(prefix) :].partition("/")
                m = PART_DIR_RE.match(folder)
                if m and CAPTURE_OBJECT_RE.match(name):
                    out.setdefault(int(m["part"]), []).append(rel)
        for rels in out.values():
            rels.sort(key=lambda r: r.rsplit("-", 1)[-1])
        return out

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["objects"], doc["close"] = list(self.objects), list(self.close)
        doc["replaced_views"] = list(self.replaced_views)
        doc["replaces"] = {k: list(v) for k, v in self.replaces.items()}
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Commit:
        return cls(
            n=int(doc["n"]),
            run=check_name(doc["run"], kind=RUN_ID),
            kind=str(doc["kind"]),
            objects=tuple(doc.get("objects", ())),
            end_of_run=bool(doc.get("end_of_run", True)),
            close=tuple(doc.get("close", ())),
            replaced_views=tuple(doc.get("replaced_views", ())),
            rows=int(doc.get("rows", 0)),
            created=str(doc.get("created", "")),
            replaces={str(k): tuple(v) for k, v in doc.get("replaces", {}).items()},
            archived={str(k): str(v) for k, v in doc.get("archived", {}).items()},
        )


def read_log(store: Store, capture: str) -> list[Commit]:
    """A layout-2 capture's commits, in order."""
    folder = commits_dir(capture)
    numbers = sorted(
        int(n[:10])
        for n in store.listdir(folder)
        if n.endswith(".json") and n[:10].isdigit() and len(n) == 15
    )
    return [Commit.from_json(store.read_json(commit_doc(capture, n))) for n in numbers]


def head(store: Store, capture: str) -> int:
    log = read_log(store, capture)
    return log[-1].n if log else 0


def located(log: Iterable[Commit]) -> dict[str, tuple[str, int]]:
    """Where each compacted object's readings are: ``old -> (new object, row group)``."""
    return {
        old: (new, group)
        for entry in log
        for new, olds in entry.replaces.items()
        for group, old in enumerate(olds)
    }
