"""A request's filters (``source``, ``channel``, ``from``, ``until``, ``limit``, ``trace_id``):
checked once, pushed down to the reads, and applied to a live commit's rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.datasets.reads import Selection
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.json_records import json_array
from obsflow.connectors.formats.parsing import to_utc

DEFAULT_LIMIT = 10_000  # rows of a response that names no limit
MAX_LIMIT = 1_000_000  # rows of one response at most (more: follow its next link)


@dataclass(frozen=True)
class Filters:
    sources: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    start: str | None = None
    until: str | None = None
    limit: int | None = None
    traces: tuple[str, ...] = ()  # trace_id=... (captures, late readings, dead letters)

    @classmethod
    def of(cls, query: Any) -> Filters:
        limit = query.get("limit")
        try:
            n = None if limit in (None, "") else int(limit)
        except ValueError:
            raise ConfigError(f"limit={limit!r} is not a whole number") from None
        if n is not None and not 0 <= n <= MAX_LIMIT:
            raise ConfigError(
                f"limit={n} is too many: at most {MAX_LIMIT:,} rows a response — follow its "
                "next link for more"
                if n > MAX_LIMIT
                else "limit must be 0 or more"
            )
        for key in ("from", "until"):
            value = query.get(key)
            if value:
                to_utc(value, key)  # (a ConfigError is a 400 saying why)
        return cls(
            sources=tuple(query.getlist("source")),
            channels=tuple(query.getlist("channel")),
            start=query.get("from") or None,
            until=query.get("until") or None,
            limit=n,
            traces=tuple(query.getlist("trace_id")),
        )

    @property
    def trace_ids(self) -> list[str] | None:
        return list(self.traces) or None

    @property
    def selection(self) -> Selection:
        """The rows these filters pick, as the reads take them."""
        return Selection(
            sources=list(self.sources) or None,
            channels=list(self.channels) or None,
            start=self.start,
            until=self.until,
        )

    def rows_json(self, rows: pa.Table, texts: pa.LargeStringArray) -> str:
        """The JSON array of the rows of ``rows`` (a commit's; ``texts`` its rows' JSON) that
        this subscription shows."""
        mask = None
        for column, values in (("source", self.sources), ("channel", self.channels)):
            if values and column in rows.column_names:
                m = pc.is_in(rows.column(column), value_set=pa.array(values, pa.string()))
                mask = m if mask is None else pc.and_(mask, m)
        if mask is None:
            return json_array(texts)
        if isinstance(mask, pa.ChunkedArray):  # (a commit's rows come from several objects)
            mask = mask.combine_chunks()
        return json_array(texts.filter(mask))
