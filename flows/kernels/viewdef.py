"""View definitions: what to compute over which windows, read from a TOML file.

```toml
[[view]]
name = "stats_1m"          # [A-Za-z0-9_-]+
kind = "tumbling"          # tumbling | hopping | session
size = "1m"                # tumbling/hopping length
step = "10s"               # hopping only
gap = "30s"                # session only
lateness = "0s"            # default 0s; part of the definition (and of its hash)
aggregates = ["count", "mean", "min", "max", "std"]
```
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from obsflow.connectors.datasets.views import list_views
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.parsing import parse_duration_ns
from obsflow.connectors.ids import NAME_PATTERN
from obsflow.connectors.storage.store import Store

KINDS = ("tumbling", "hopping", "session")
SIMPLE_AGGREGATES = ("count", "sum", "mean", "min", "max", "std", "var", "first", "last")
_QUANTILE_RE = re.compile(r"^p(\d{1,2}(\.\d+)?)$")
MAX_WINDOWS_PER_READING = 1000  # hopping: size/step, capped so one reading cannot fan out
_KEYS = {"name", "kind", "size", "step", "gap", "lateness", "aggregates"}


def quantile_of(aggregate: str) -> float | None:
    """``"p90"`` -> 0.9, ``"p99.9"`` -> 0.999; None for a non-quantile aggregate."""
    m = _QUANTILE_RE.match(aggregate)
    return float(m.group(1)) / 100 if m else None


def _ns(view: str, key: str, text: object) -> int:
    if not isinstance(text, str | int | float):
        raise ConfigError(f"view {view!r}: {key} must be a duration like '10s', not {text!r}")
    try:
        return parse_duration_ns(str(text))
    except ConfigError as exc:
        raise ConfigError(f"view {view!r}: {key}: {exc}") from None


@dataclass(frozen=True)
class ViewDef:
    """One validated view definition; durations in nanoseconds."""

    name: str
    kind: str
    size: int = 0
    step: int = 0
    gap: int = 0
    lateness: int = 0
    aggregates: tuple[str, ...] = ("count", "mean", "min", "max", "std")

    @property
    def quantiles(self) -> dict[str, float]:
        return {a: q for a in self.aggregates if (q := quantile_of(a)) is not None}

    @property
    def definition(self) -> dict[str, Any]:
        d = asdict(self)
        d["aggregates"] = list(self.aggregates)
        return d

    @property
    def hash(self) -> str:
        """Short stable hash of everything that shapes the view's rows (not its name)."""
        d = self.definition
        d.pop("name")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_definition(cls, d: dict[str, Any]) -> ViewDef:
        """The inverse of ``definition`` (durations in ns), e.g. from a view's document."""
        return cls(**{**d, "aggregates": tuple(d["aggregates"])})

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ViewDef:
        name = raw.get("name")
        if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
            raise ConfigError(f"view name {name!r} — use [A-Za-z0-9_-]{{1,64}}")
        unknown = sorted(set(raw) - _KEYS)
        if unknown:
            raise ConfigError(
                f"view {name!r}: unknown field(s) {unknown}; fields are {sorted(_KEYS)}"
            )
        kind = raw.get("kind", "tumbling")
        if kind not in KINDS:
            raise ConfigError(f"view {name!r}: kind {kind!r} — use one of {', '.join(KINDS)}")
        size = step = gap = 0
        if kind in ("tumbling", "hopping"):
            if "size" not in raw:
                raise ConfigError(f'view {name!r}: a {kind} view needs size, e.g. size = "1m"')
            size = _ns(name, "size", raw["size"])
            if size <= 0:
                raise ConfigError(f"view {name!r}: size must be positive")
        if kind == "hopping":
            if "step" not in raw:
                raise ConfigError(f'view {name!r}: a hopping view needs step, e.g. step = "10s"')
            step = _ns(name, "step", raw["step"])
            if step <= 0 or size % step:
                raise ConfigError(f"view {name!r}: step must be positive and divide size")
            if size // step > MAX_WINDOWS_PER_READING:
                raise ConfigError(
                    f"view {name!r}: size/step is {size // step}; "
                    f"at most {MAX_WINDOWS_PER_READING} windows per reading"
                )
        elif "step" in raw:
            raise ConfigError(f"view {name!r}: step is only for hopping views")
        if kind == "session":
            if "gap" not in raw:
                raise ConfigError(f'view {name!r}: a session view needs gap, e.g. gap = "30s"')
            gap = _ns(name, "gap", raw["gap"])
            if gap <= 0:
                raise ConfigError(f"view {name!r}: gap must be positive")
        elif "gap" in raw:
            raise ConfigError(f"view {name!r}: gap is only for session views")
        if kind == "session" and "size" in raw:
            raise ConfigError(f"view {name!r}: size is not used by session views; use gap")
        lateness = _ns(name, "lateness", raw.get("lateness", "0s"))
        aggs = raw.get("aggregates", list(cls.aggregates))
        if not isinstance(aggs, list) or not aggs or not all(isinstance(a, str) for a in aggs):
            raise ConfigError(f"view {name!r}: aggregates must be a non-empty list of names")
        for a in aggs:
            if a not in SIMPLE_AGGREGATES and quantile_of(a) is None:
                raise ConfigError(
                    f"view {name!r}: unknown aggregate {a!r}; use "
                    f"{', '.join(SIMPLE_AGGREGATES)} or pNN (p50, p90, p99)"
                )
        if len(set(aggs)) != len(aggs):
            raise ConfigError(f"view {name!r}: an aggregate is listed twice")
        return cls(name, kind, size, step, gap, lateness, tuple(aggs))


CAPTURE_NAME = "{capture}"
"""In a view's name in a views file: the capture's name, so that one file serves every capture
(view names are the store's: a view is built from one capture)."""


def parse_views(
    text: str, *, origin: str = "views file", capture: str | None = None
) -> tuple[ViewDef, ...]:
    """Parse a TOML document with ``[[view]]`` tables (``{capture}`` in a name: ``capture``)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin} is not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"view"})
    if unknown:
        raise ConfigError(f"{origin}: unknown table(s) {unknown}; define views as [[view]]")
    raw = doc.get("view", [])
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{origin} defines no [[view]]")
    views = tuple(ViewDef.from_dict(_named(v, capture, origin)) for v in raw)
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise ConfigError(f"{origin}: view names must be unique, got {names}")
    return views


def _named(raw: Any, capture: str | None, origin: str) -> Any:
    """A view's table with ``{capture}`` in its name replaced by the capture's name."""
    name = raw.get("name") if isinstance(raw, dict) else None
    if not isinstance(name, str) or CAPTURE_NAME not in name:
        return raw
    if capture is None:
        raise ConfigError(f"{origin}: view {name!r} names {CAPTURE_NAME}, but no capture is given")
    return {**raw, "name": name.replace(CAPTURE_NAME, capture)}


def load_views(path: str | Path, *, capture: str | None = None) -> tuple[ViewDef, ...]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"views file {str(p)!r} does not exist")
    return parse_views(p.read_text(), origin=str(p), capture=capture)


def views_option(value: object, capture: str | None = None) -> tuple[ViewDef, ...] | None:
    """Views given to ``build_flow``: a TOML path, definitions (dicts, as ``ViewDef.definition``
    gives them) or ``ViewDef`` objects; None stays None."""
    if value is None:
        return None
    if isinstance(value, str | Path):
        return load_views(value, capture=capture)
    if not isinstance(value, list | tuple):
        raise ConfigError(f"views must be a TOML path or a list of definitions, not {value!r}")
    return tuple(v if isinstance(v, ViewDef) else ViewDef.from_definition(v) for v in value)


def default_views(capture: str) -> tuple[ViewDef, ...]:
    """What ingest builds without ``--views``: per-minute statistics of every series, in a
    view named after the capture (``<capture>_1m``) so captures do not share it."""
    return (
        ViewDef(
            f"{capture}_1m"[-64:],
            "tumbling",
            size=60 * 10**9,
            aggregates=("count", "mean", "min", "max", "std", "first", "last"),
        ),
    )


def stored_views(store: Store, capture: str) -> tuple[ViewDef, ...]:
    """The definitions of the views built from the whole of ``capture``: the views its runs
    keep current (a slice built by ``replay --as`` is not one of them)."""
    return tuple(
        ViewDef.from_definition(m["definition"])
        for m in list_views(store)
        if m.get("capture") == capture and not m.get("slice")
    )


def duration_text(ns: int) -> str:
    """A duration as a definition writes it: ``90s``, ``1h``, ``250ms``; ``0`` for none."""
    if ns == 0:
        return "0"
    for unit, size in (
        ("d", 86_400 * 10**9),
        ("h", 3_600 * 10**9),
        ("m", 60 * 10**9),
        ("s", 10**9),
        ("ms", 10**6),
    ):
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"


def definition_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two definitions (``ViewDef.definition``), in words:
    ``["lateness 0 -> 3h"]``."""
    out = []
    for key in ("kind", "size", "step", "gap", "lateness", "aggregates"):
        was, now = old.get(key), new.get(key)
        if was == now:
            continue
        if key == "aggregates":
            out.append(f"aggregates {','.join(was or [])} -> {','.join(now or [])}")
        elif key == "kind":
            out.append(f"kind {was} -> {now}")
        else:
            out.append(f"{key} {duration_text(int(was or 0))} -> {duration_text(int(now or 0))}")
    return out


def with_lateness(views: tuple[ViewDef, ...], lateness: int | None) -> tuple[ViewDef, ...]:
    """``views`` with their lateness (ns) replaced, as ``--lateness`` asks; None keeps it."""
    if lateness is None:
        return views
    return tuple(replace(v, lateness=lateness) for v in views)
