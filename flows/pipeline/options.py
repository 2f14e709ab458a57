"""One home for an ingest's options as people give them — the ``obsflow ingest`` command
and ``Explorer.ingest`` — with their defaults, and how they become an ``IngestConfig``.

The CLI takes its defaults from ``DEFAULTS``; ``Explorer.ingest`` takes the same keywords
(a test holds both to the fields here), so an option added here is added everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from obsflow.connectors.algorithms.dedup import DEFAULT_HORIZON
from obsflow.connectors.batch import DEFAULT_BATCH_ROWS
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.payloads.format import INLINE_LIMIT

if TYPE_CHECKING:  # (the command's parser reads the defaults: no Bytewax at start-up)
    from obsflow.flows.kernels.viewdef import ViewDef
    from obsflow.flows.pipeline.ingest import IngestConfig

    ViewsLike = str | ViewDef | Sequence[ViewDef]


@dataclass(frozen=True)
class IngestOptions:
    """An ingest as a person asks for it: durations as text ("10m"), lists as the command
    line writes them ("a,b") or as Python sequences."""

    capture: str = "default"
    views: ViewsLike | None = None  # a TOML file path, TOML text, ViewDef objects
    map: str | None = None  # "source=source_id,time=event_time"
    time_unit: str = "auto"
    channels: str | Sequence[str] | None = None  # a wide input's channel columns
    delimiter: str | None = None  # CSV
    max_record_size: int | str = "1MiB"  # a longer line (JSON lines, CSV) or message is malformed
    decimal: str = "."  # the decimal mark of numbers written as text: "," reads 21,5
    partitions: int | None = None  # a new capture's (default 4)
    lateness: str | None = None  # overrides the views' lateness
    dedup_horizon: str = f"{DEFAULT_HORIZON // (60 * 10**9)}m"
    inline_limit: int = INLINE_LIMIT  # payload bytes kept in the capture
    features: str | Sequence[str] = ()  # "mean,max" or ["mean", "max"]
    format: str | None = None  # "bluesky": every input a Bluesky document stream
    root_map: Mapping[str, str] | Sequence[str] = ()  # {OLD: NEW} or ["OLD=NEW", ...]
    external_roots: Sequence[str] = ()  # Bluesky external files only from under these
    external_wait: str = "10s"  # how long a missing external file is waited for
    batch_rows: int = DEFAULT_BATCH_ROWS

    def config(self, inputs: Iterable[str], store: str, *, progress: bool) -> IngestConfig:
        """The run these options ask for, of ``inputs`` (duplicates dropped) into ``store``."""
        from obsflow.connectors.formats.parsing import parse_duration_ns
        from obsflow.connectors.formats.schema import InputSpec
        from obsflow.flows.pipeline.ingest import IngestConfig

        return IngestConfig(
            inputs=tuple(dict.fromkeys(inputs)),
            store=store,
            capture=self.capture,
            spec=InputSpec.parse_map(
                self.map,
                self.time_unit,
                channels=self.channels,
                delimiter=self.delimiter,
                max_record_size=self.max_record_size,
                decimal=self.decimal,
            ),
            partitions=self.partitions,
            batch_rows=self.batch_rows,
            progress=progress,
            views=None if self.views is None else view_defs(self.views),
            lateness=None if self.lateness is None else parse_duration_ns(self.lateness),
            dedup_horizon=parse_duration_ns(self.dedup_horizon),
            inline_limit=self.inline_limit,
            features=_listed(self.features),
            # (json and arrow name message bodies: a file's format is its extension)
            format="bluesky" if self.format == "bluesky" else None,
            root_map=root_map(self.root_map),
            external_wait=parse_duration_ns(self.external_wait) / 1e9,
            external_roots=tuple(self.external_roots),
        )


DEFAULTS = IngestOptions()


def view_defs(views: ViewsLike) -> tuple[ViewDef, ...]:
    """View definitions from a ``ViewDef``, a sequence of them, TOML text or a TOML file path."""
    from obsflow.flows.kernels.viewdef import ViewDef, load_views, parse_views

    if isinstance(views, ViewDef):
        return (views,)
    if isinstance(views, str):
        return parse_views(views, origin="views text") if "[[view]]" in views else load_views(views)
    defs = tuple(views)
    if not all(isinstance(v, ViewDef) for v in defs):
        raise ConfigError("views must be ViewDef objects, TOML text or a TOML file path")
    return defs


def root_map(value: Mapping[str, str] | Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``--root-map OLD=NEW`` entries (or a mapping) as pairs."""
    if isinstance(value, Mapping):
        return tuple(value.items())
    pairs = []
    for entry in value:
        old, sep, new = entry.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise ConfigError(f"--root-map {entry!r} is not OLD=NEW")
        pairs.append((old.strip(), new.strip()))
    return tuple(pairs)


def _listed(value: str | Sequence[str]) -> tuple[str, ...]:
    items: Any = value.split(",") if isinstance(value, str) else value
    return tuple(str(f) for f in items if f)
