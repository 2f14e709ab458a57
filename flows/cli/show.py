"""The ``obsflow`` sub-commands that read a store: views, captures, late readings, dead letters
and payloads. They never change the store."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.datasets.capture import capture_info, list_captures, open_capture
from obsflow.connectors.datasets.reads import (
    count_by,
    deadletter_captures,
    drop_resolved,
    read_capture,
    read_deadletters,
    read_late,
    read_resolved,
    read_view,
)
from obsflow.connectors.datasets.views import list_views
from obsflow.connectors.errors import ObsflowError
from obsflow.connectors.formats.registry import encoder, format_of, write_table
from obsflow.connectors.ids import check_name
from obsflow.connectors.payloads.format import PAYLOAD_SCHEMA, check_sha256
from obsflow.connectors.payloads.offload import PayloadStore
from obsflow.connectors.sources.bluesky import io as bluesky_io
from obsflow.connectors.storage import layout
from obsflow.connectors.storage.commits import parse_as_of
from obsflow.connectors.storage.migrate import check_layout
from obsflow.connectors.storage.store import Store
from obsflow.flows.kernels.viewdef import duration_text

T = TypeVar("T")


def say(text: str) -> None:
    print(text, file=sys.stderr)


def opened(args: argparse.Namespace) -> Store:
    store = Store(args.store)
    check_layout(store)
    return store


def filters(args: argparse.Namespace) -> dict[str, Any]:
    """A command's --source, --channel, --from, --until and --as-of, as
    ``connectors.datasets.reads`` takes them."""
    return {
        "sources": args.source,
        "channels": args.channel,
        "start": args.start,
        "until": args.until,
        "as_of": parse_as_of(getattr(args, "as_of", None)),
    }


def print_frame(frame: pd.DataFrame, limit: int, width: int = 200) -> None:
    shown = frame if limit <= 0 else frame.head(limit)
    with pd.option_context(
        "display.width", width, "display.max_columns", 50, "display.max_colwidth", 80
    ):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    if len(shown) < len(frame):
        say(f"... {len(frame) - len(shown):,} more rows (--limit 0 shows all)")


def listed(items: Sequence[T], what: str) -> Sequence[T]:
    """``items``; when there are none, a line saying so (``no {what}``)."""
    if not items:
        say(f"no {what}")
    return items


def cmd_views(args: argparse.Namespace) -> int:
    store = opened(args)
    if args.action == "list":
        for m in listed(list_views(store), f"views in {store.uri()}"):
            d = m["definition"]
            shape = {
                "tumbling": f"size {duration_text(d['size'])}",
                "hopping": f"size {duration_text(d['size'])} step {duration_text(d['step'])}",
                "session": f"gap {duration_text(d['gap'])}",
            }[d["kind"]]
            print(
                f"{m['name']:<20} {d['kind']:<9} {shape:<20} "
                f"lateness {duration_text(d['lateness']):<6}"
                f" {','.join(d['aggregates']):<40} capture {m['capture']}  hash {m['hash']}"
            )
        return 0
    table = read_view(store, args.name, **filters(args), final_only=args.final)
    if args.out:
        return export(table, args.out, f"view {args.name!r}")
    frame = table.drop(["run", "capture", "view_hash", "first_seq", "last_seq"]).to_pandas()
    if frame.empty:
        say(f"view {args.name!r}: no rows match")
        return 0
    final = frame.pop("final").to_numpy(dtype=bool)
    frame.insert(4, "state", np.where(final, "final", "open"))
    print_frame(frame, args.limit)
    if not final.all():
        n = int((~final).sum())
        say(
            f"{n:,} rows are provisional: their windows are still open"
            if n != 1
            else "1 row is provisional: its window is still open"
        )
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    store = opened(args)
    if args.action == "list":
        for name in listed(list_captures(store), f"captures in {store.uri()}"):
            print(name)
        return 0
    if args.action == "verify":
        return verify(store, args.name)
    if args.action == "show":
        table = read_capture(store, args.name, **filters(args), payloads=True)
        if args.out:
            if not format_of(args.out, "write").binary:  # text formats get references
                table = table.drop_columns(["payload_inline"])
            return export(table, args.out, f"capture {args.name!r}")
        if table.num_rows == 0:
            say(f"capture {args.name!r}: no readings match")
            return 0
        print_frame(table.to_pandas().dropna(axis="columns", how="all"), args.limit)
        return 0
    info = capture_info(store, args.name, as_of=parse_as_of(args.as_of))
    if args.json:
        print(json.dumps(info.__dict__, indent=2))
    else:
        width = max(len(k) for k in info.__dict__)
        for key, value in info.__dict__.items():
            shown = f"{value:,}" if isinstance(value, int) else value
            print(f"{key:<{width}}  {shown}")
        print(f"{'path':<{width}}  {store.uri(layout.capture_dir(info.name))}")
    return 0


def export(table: pa.Table, out: str, what: str) -> int:
    """Write rows to a local file (format from its extension) and say so."""
    write_table(table, out)
    say(f"{what}: wrote {table.num_rows:,} rows to {out}")
    return 0


def verify(store: Store, name: str) -> int:
    table = read_capture(store, name, columns=[f.name for f in PAYLOAD_SCHEMA]).filter(
        pc.is_valid(pc.field("payload_sha256"))
    )
    pstore = PayloadStore(store)
    seen: set[str] = set()
    problems = 0
    for row in table.to_pylist():  # one per payload reference, not per reading
        if row["payload_sha256"] in seen:
            continue
        seen.add(row["payload_sha256"])
        problem = pstore.verify(row)
        if problem:
            problems += 1
            print(f"{row['payload_sha256']}: {problem}")
    say(f"capture {name!r}: {len(seen):,} payloads checked, {problems:,} dangling or corrupt")
    return 1 if problems else 0


def cmd_deadletters(args: argparse.Namespace) -> int:
    store = opened(args)
    owners = deadletter_captures(store)
    if args.capture is not None and args.capture not in owners.values():
        open_capture(store, args.capture)  # (a name that is no capture: say which are)
    every = read_deadletters(store, run=args.run, reason=args.reason, capture=args.capture)
    table = every if args.all else drop_resolved(store, every)
    # Which capture each is (its run's): the capture to retry it into.
    runs = table.column("run").to_pylist()
    table = table.add_column(
        0, "capture", pa.array([owners.get(r, "(unknown)") for r in runs], pa.string())
    )
    keys = ["capture", "run", "reason"]
    if args.all and table.num_rows:
        done = read_resolved(store)
        table = table.join(done, ["run", "origin", "row"], join_type="left outer")
        table = table.sort_by([("run", "ascending"), ("origin", "ascending"), ("row", "ascending")])
        open_ = pc.fill_null(table.column("resolved_by"), "(open)")
        table = table.set_column(table.schema.get_field_index("resolved_by"), "resolved_by", open_)
        keys.append("resolved_by")
    elif not args.all:
        hidden = every.num_rows - table.num_rows
        if hidden:
            say(f"({hidden:,} dead letters a retry resolved are hidden: --all shows them)")
    if table.num_rows == 0:
        asked = [
            f"{what} {value}"
            for what, value in (
                ("capture", None if args.capture is None else repr(args.capture)),
                ("run", args.run),
                ("reason", args.reason),
            )
            if value is not None
        ]
        of = f" of {', '.join(asked)}" if asked else ""
        kind = "dead letters" if args.all else "open dead letters"
        say(f"no {kind}{of} in {store.uri('deadletter')}")
        others = read_deadletters(store, unresolved=not args.all).num_rows if asked else 0
        if others:
            say(f"  {others:,} other {kind} (obsflow deadletters list)")
        return 0
    if args.action == "list":
        print(count_by(table, keys).to_pandas().to_string(index=False))
        return 0
    # Malformed text has no record index: a nullable column keeps the others integers.
    rows = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    print_frame(rows, args.limit, width=250)
    return 0


def cmd_late(args: argparse.Namespace) -> int:
    store = opened(args)
    if args.action == "list":
        names = [m["name"] for m in list_views(store)]
        tables = [read_late(store, v) for v in names]
        rows = [t for t in tables if t.num_rows]
        if not rows:
            say(f"no late readings in {store.uri('late')}")
            return 0
        print(
            count_by(pa.concat_tables(rows), ["view", "run"], "late")
            .to_pandas()
            .to_string(index=False)
        )
        return 0
    table = read_late(store, args.view, run=args.run)
    if table.num_rows == 0:
        say(f"no late readings of view {args.view!r}")
        return 0
    print_frame(table.to_pandas(), args.limit)
    return 0


def cmd_payload(args: argparse.Namespace) -> int:
    store = opened(args)
    sha = check_sha256(args.sha256)
    captures = [args.capture] if args.capture else list_captures(store)
    for name in captures:
        rows = (
            read_capture(store, name, payloads=True, filter=pc.field("payload_sha256") == sha)
            .slice(0, 1)
            .to_pylist()
        )
        if rows:
            array = PayloadStore(store).fetch(rows[0])  # bounded read, size and sha256 verified
            np.save(args.out, array, allow_pickle=False)
            say(f"{sha}: {array.dtype} {array.shape} (from capture {name!r}) -> {args.out}")
            return 0
    raise ObsflowError(
        f"no reading in {', '.join(captures) or 'any capture'} refers to payload {sha}"
    )


def cmd_bluesky(args: argparse.Namespace) -> int:
    store = opened(args)
    table = bluesky_io.runs(store, check_name(args.capture, kind="capture name"))
    if table.num_rows == 0:
        say(f"no Bluesky runs in capture {args.capture!r}")
        return 0
    print_frame(table.to_pandas(), args.limit)
    return 0


_SQL_FORMATS = {"csv": "csv", "json": "jsonl", "parquet": "parquet"}


def cmd_sql(args: argparse.Namespace) -> int:
    from obsflow.connectors.datasets import sql

    store = opened(args)
    if args.query is None:
        for name, columns in sql.describe(store, as_of=parse_as_of(args.as_of)).items():
            print(f"{name}: {', '.join(columns)}")
        return 0
    if args.out and args.format == "table":
        raise ObsflowError("--format table prints; -o FILE takes csv, json or parquet")
    if not args.out and args.format == "parquet":
        raise ObsflowError("--format parquet needs -o FILE")
    table = sql.query(store, args.query, as_of=parse_as_of(args.as_of))
    fmt = _SQL_FORMATS.get(args.format or "")
    if args.out:
        write_table(table, args.out, fmt)
        say(f"query: wrote {table.num_rows:,} rows to {args.out}")
    elif fmt:
        sys.stdout.buffer.write(encoder(fmt)(table))
    elif table.num_rows:
        print_frame(table.to_pandas(), args.limit)
    elif table.num_columns:
        say(f"no rows (columns: {', '.join(table.column_names)})")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from obsflow.connectors.formats.parsing import parse_time
    from obsflow.flows.explore.lineage import lineage

    store = opened(args)
    at = parse_time(args.at, "--at")
    if at is None:
        raise ObsflowError("--at needs a time: the start of the window (or a time inside it)")
    found = lineage(store, args.name, args.source, args.channel, at)
    row = found.row
    state = "final" if row.get("final") else "provisional (its window is still open)"
    say(
        f"view {found.view}: {args.source}/{args.channel} window [{row['window_start']}, "
        f"{row['window_end']}), {state}"
    )
    aggregates = [a for a in found.definition.get("aggregates", []) if a in row]
    say("  row: " + ", ".join(f"{a} {row[a]:.10g}" for a in aggregates if row[a] is not None))
    say(
        f"  view definition (hash {row.get('view_hash')}): "
        + json.dumps(found.definition, sort_keys=True)
    )
    readings = found.readings
    say(
        f"  readings summarized: {readings.num_rows:,} of capture {found.capture!r}, seq "
        f"{row.get('first_seq')}..{row.get('last_seq')}"
    )
    for run, inputs in found.inputs.items():
        say(f"  captured by run {run}" + (f" from {', '.join(inputs)}" if inputs else ""))
    if args.out:
        return export(readings, args.out, "lineage")
    print_frame(readings.to_pandas(), args.limit)
    return 0
