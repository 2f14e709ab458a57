"""What a run did, in words: the summary lines an ingest, replay or retry prints, and why a run
that accepted nothing did (its top reasons, and a ``--map`` built from the input's columns)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from obsflow.connectors.storage.store import Store

if TYPE_CHECKING:
    from obsflow.flows.pipeline import jobs


def say(text: str) -> None:
    print(text, file=sys.stderr)


def print_result(result: jobs.RunResult, store: Store, args: argparse.Namespace) -> int:
    """Print what a job did (unless quiet), copy its summary to ``--summary``; exit status."""
    quiet = getattr(args, "quiet", False)
    for url, run in result.skipped:
        say(
            f"skipping {url}: the same content is already in the capture"
            f" (run {run}; --force reads it again)"
        )
    for note in result.notes:
        say(f"obsflow: {note}")
    summary = result.summary
    if getattr(args, "summary", None):
        Path(args.summary).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if result.run is None:
        say("nothing to ingest")
        return 0
    if not quiet:
        say(format_summary(summary, store))
    nothing = not summary["accepted"] and not summary["duplicates"]  # (all known: not nothing)
    if summary.get("mode") == "ingest" and summary["rejected"] and nothing:
        say(nothing_accepted(store, summary))
        return 1
    return 0 if result.balanced else 1


def nothing_accepted(store: Store, summary: dict[str, Any]) -> str:
    """Why a run accepted nothing: its top reasons, and a ``--map`` built from the columns the
    input really has. (Its inputs are not recorded as captured: the fixed command reads them.)"""
    reasons = sorted(summary["rejected_by_reason"].items(), key=lambda kv: -kv[1])
    from obsflow.connectors.datasets.reads import first_deadletters  # (pandas, via pyarrow.dataset)

    sample = first_deadletters(store, summary["run"])
    lines = [f"obsflow: nothing was accepted: all {summary['rejected']:,} records were rejected"]
    for reason, n in reasons[:3]:
        mask = pc.equal(sample.column("reason"), reason)
        example = sample.filter(mask).column("message")
        lines.append(f"  {reason} ({n:,}): {example[0] if len(example) else ''}")
    raw = sample.column("raw").to_pylist()
    try:
        first = json.loads(raw[0]) if raw and raw[0] else None
    except ValueError:
        first = None
    if summary.get("format") == "bluesky":
        lines.append(
            "  these are no Bluesky documents ([name, doc] or {name, doc} per line, or msgpack); "
            "a file of readings is read without --format"
        )
    elif looks_like_a_document(first):
        lines.append("  these look like Bluesky documents: add --format bluesky")
    if decimal_comma(sample):
        lines.append("  the values are written with a decimal comma (21,5): add --decimal ,")
    columns = [str(c) for c in first] if isinstance(first, dict) else []
    hint = suggest_map(columns)
    if columns:
        tip = f"; try --map {hint}" if hint else ""
        lines.append(f"  columns are {', '.join(columns)}{tip}")
    lines.append(f"  dead letters: obsflow deadletters show --run {summary['run']}")
    return "\n".join(lines)


DECIMAL_HINT = "(written with a decimal comma: --decimal , reads it)"  # (checks._bad_value)


def decimal_comma(sample: pa.Table) -> bool:
    """Whether every ``bad_value`` among a run's first dead letters is a number written with a
    decimal comma (its message says so)."""
    values = sample.filter(pc.equal(sample.column("reason"), "bad_value")).column("message")
    said = pc.ends_with(values, DECIMAL_HINT)
    return len(values) > 0 and bool(pc.all(said).as_py())


def looks_like_a_document(record: Any) -> bool:
    """A Bluesky ``[name, doc]`` pair or ``{"name", "doc"}`` object, read as a reading."""
    if isinstance(record, list):
        return len(record) == 2 and isinstance(record[0], str) and isinstance(record[1], dict)
    return isinstance(record, dict) and set(record) == {"name", "doc"}


_GUESSES = {
    "source": ("source", "station", "sensor", "instrument", "device", "site", "id", "source_id"),
    "time": ("time", "timestamp", "datetime", "date", "event_time", "ts", "time_utc"),
    "value": ("value", "reading", "measurement", "val"),
}


def suggest_map(columns: list[str]) -> str | None:
    """A ``--map`` for the fields an input does not name as obsflow does, from its columns
    (``value``: a named guess, else the one column left over)."""
    lower = {c.lower(): c for c in columns}
    picked: dict[str, str] = {}
    for field, names in _GUESSES.items():
        hit = next((lower[n] for n in names if n in lower), None)
        if hit is not None:
            picked[field] = hit
    left = [c for c in columns if c not in picked.values() and c.lower() != "channel"]
    if "value" not in picked and len(left) == 1:
        picked["value"] = left[0]
    # Without a value column the input is wide: each other numeric column is a channel.
    mapping = [f"{f}={c}" for f, c in picked.items() if c != f]
    return ",".join(mapping) if mapping and {"source", "time"} <= picked.keys() else None


def format_summary(summary: dict[str, Any], store: Store) -> str:
    ok = "adds up" if summary["balanced"] else "DOES NOT ADD UP"
    run = summary["run"]
    lines = [
        f"run {run}: {summary['input']:,} input = {summary['accepted']:,} accepted"
        f" + {summary['rejected']:,} rejected + {summary['duplicates']:,} duplicates ({ok})",
        # (no wall time in the summary a cluster's other processes read: process 0 adds it)
        (
            f"  {summary['seconds']:.2f} s, {summary.get('readings_per_s') or 0:,} readings/s — "
            if "seconds" in summary
            else "  "
        )
        + (
            f"commit #{summary['commit']} of capture {summary.get('capture')!r}"
            if summary.get("commit") is not None
            else f"capture {summary.get('capture')!r} was not created: no reading was accepted"
        ),
    ]
    records = summary.get("records") or summary["input"]
    if summary.get("derived") or records != summary["input"]:
        lines.append(
            f"  input counts readings: {records:,} records read"
            + (" (a wide record holds one per numeric cell)" if records != summary["input"] else "")
            + (
                f", {summary['derived']:,} readings derived from payloads (--features)"
                if summary.get("derived")
                else ""
            )
        )
    samples = examples(store, summary)
    for reason, n in summary.get("rejected_by_reason", {}).items():
        lines.append(f"  rejected {reason}: {n:,}")
        if reason in samples:
            lines.append(f"    e.g. {samples[reason]}")
    units = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
    for unit in summary.get("epoch_units", {}):
        lines.append(
            f"  epoch-number times read as {units[unit]} since 1970-01-01 UTC (from their "
            "magnitude; --time-unit sets it)"
        )
    for view, v in summary.get("views", {}).items():
        late = summary.get("late", {}).get(view, 0)
        lines.append(
            f"  view {view}: {plural(v['rows'], 'final row')}, {v.get('provisional', 0):,} "
            f"provisional (windows still open), {plural(late, 'late reading')} -> "
            f"{store.uri('views/' + view)}"
        )
    if any(summary.get("late", {}).values()):
        lines.append(
            "  late readings arrived after their windows were final; they are kept in the "
            f"capture (obsflow late list). To include them: obsflow replay --capture "
            f"{summary.get('capture')} --lateness DURATION"
        )
    if summary["rejected"]:
        lines.append(f"  dead letters: {store.uri('deadletter/' + run)}")
    if summary.get("documents"):
        folder = store.uri(f"documents/{summary.get('capture')}/{run}")
        lines.append(
            f"  Bluesky documents kept: {summary['documents']:,} -> {folder} (obsflow bluesky runs)"
        )
    lines.append(f"  summary: {store.uri('runs/' + run + '.json')}")
    return "\n".join(lines)


SAMPLED = ("bad_time", "bad_value", "bad_id")
"""Reasons whose first dead letter a summary shows: their messages name the value and what
would be read."""


def examples(store: Store, summary: dict[str, Any]) -> dict[str, str]:
    """The first dead letter of each ``SAMPLED`` reason a run has, as ``record R of FILE:
    message`` (from the run's first dead-letter file)."""
    if not set(SAMPLED) & set(summary.get("rejected_by_reason", {})):
        return {}
    from obsflow.connectors.datasets.reads import first_deadletters  # (pandas, via pyarrow.dataset)

    out: dict[str, str] = {}
    for letter in first_deadletters(store, summary["run"]).to_pylist():
        reason = letter["reason"]
        if reason in SAMPLED and reason not in out:
            where = Path(str(letter["origin"])).name
            if letter["row"] is not None:
                where = f"record {letter['row']:,} of {where}"
            out[reason] = f"{where}: {letter['message']}"
    return out


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")
