"""``obsflow sql``: the store in SQL (``show.cmd_sql``)."""

from __future__ import annotations

from obsflow.flows.cli.options import (
    Help,
    Subparsers,
    add_as_of,
    add_limit,
    command,
    lazy,
)

HELP = {
    "sql": Help(
        "ask the store in SQL (DuckDB): captures, views, late readings, dead letters, runs",
        """\
  obsflow sql                                        (the tables and their columns)
  obsflow sql "select source, count(*), avg(value) from capture_buoy group by source"
  obsflow sql "select * from view_buoy_1m where final and mean > 20" -o warm.csv
  obsflow sql "select reason, count(*) from deadletters group by reason" --store s3://b/obs
  obsflow sql "select * from runs order by finished" -o runs.parquet""",
        description="ask the store in SQL (DuckDB)\n\n"
        "Tables: capture_<name>, view_<name> (with final), late_<view>, deadletters, runs.\n"
        'Quote a name holding a dash: "capture_my-buoy". Without a query: the tables and\n'
        "their columns. Times are TIMESTAMP_NS in UTC, exact to the nanosecond: compare them\n"
        "with TIMESTAMP '2026-01-01 00:00:00' or a string. Needs DuckDB (pip install\n"
        "'obsflow[sql]').",
    ),
}


def add_parser(sub: Subparsers) -> None:
    sp = command(sub, "sql", HELP["sql"], lazy("show", "cmd_sql"))
    sp.add_argument("query", nargs="?", metavar="QUERY", help="one SQL query")
    add_as_of(sp)
    sp.add_argument(
        "--format",
        choices=["table", "csv", "json", "parquet"],
        help="output format (default: table on the terminal, else from -o's extension)",
    )
    sp.add_argument(
        "-o", "--out", metavar="FILE", help="write the result to FILE instead of printing"
    )
    add_limit(sp)
