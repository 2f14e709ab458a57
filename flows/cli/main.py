"""The ``obsflow`` command: the friendly front door to the dataflows.

It only parses arguments and prints. Each command (or group of actions) registers its arguments
in a module of its own (``flows.cli.ingest``, ``views``, ``capture``, ...: ``add_parser``), with
a handler imported only when it runs: those that run something call the job layer
(``flows.pipeline.jobs``, through ``flows.cli.commands``), those that read call
``connectors.datasets.reads`` (through ``flows.cli.show``). Errors in what the user asked for
exit with status 2 and a one-line message saying what to do; bad *records* never stop a run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence

from obsflow.connectors.errors import ObsflowError, cause_of
from obsflow.flows.cli import (
    bluesky,
    capture,
    deadletters,
    demo,
    ingest,
    late,
    lineage,
    payload,
    serve,
    sql,
    store,
    views,
)

# The command modules, in the order `obsflow --help` lists their commands.
COMMANDS = (
    ingest,
    views,
    capture,
    late,
    deadletters,
    bluesky,
    payload,
    demo,
    serve,
    store,
    lineage,
    sql,
)

# Examples shown by each command's --help (and checked by tests/cli/test_help.py).
COMMAND_EXAMPLES = {name: h.examples for module in COMMANDS for name, h in module.HELP.items()}

EXAMPLES = """examples:
  obsflow demo                                   simulate 4 instruments into ./data/store
  obsflow ingest hour0.csv --capture buoy        long format: source, time, value [, channel]
  obsflow ingest wx.csv --capture wx --map source=station,time=timestamp,value=temp_c
  obsflow views show buoy_1m --source b01 --from 2026-01-01
  obsflow replay --capture buoy --views views.toml --lateness 10m
  obsflow deadletters list                       what was rejected, by run and reason
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="obsflow",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return p


INTERRUPTED = (
    "obsflow: interrupted: what the command had not committed is not in the store (a commit it "
    "had begun, the next command completes) — run the same command again"
)


def internal_error(exc: BaseException) -> int:
    """An error obsflow did not expect (a bug): one line naming it and a file holding the
    traceback to report, not the traceback itself (``OBSFLOW_TRACEBACK=1`` prints it)."""
    if os.environ.get("OBSFLOW_TRACEBACK"):
        traceback.print_exception(exc)
    with tempfile.NamedTemporaryFile(
        "w", prefix="obsflow-traceback-", suffix=".txt", delete=False
    ) as f:
        traceback.print_exception(exc, file=f)
    what = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    print(
        f"obsflow: internal error: {what} — a bug in obsflow: please report it with {f.name}",
        file=sys.stderr,
    )
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if str(getattr(args, "store", "") or "").startswith("s3://"):
            from obsflow.connectors.storage.store import Store

            Store(args.store).check_bucket()  # said once, up front, not by the first request
        code: int = args.func(args)
    except ObsflowError as exc:
        if os.environ.get("OBSFLOW_TRACEBACK"):  # (for obsflow's developers)
            traceback.print_exc()
        print(f"obsflow: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # (`obsflow capture info X | head`): the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        # Errors inside a running dataflow come back wrapped by Bytewax: report our own (and
        # Ctrl-C, which Bytewax wraps too).
        cause = cause_of(exc, (ObsflowError, KeyboardInterrupt))
        if cause is None:
            return internal_error(exc)
        if isinstance(cause, KeyboardInterrupt):
            print(INTERRUPTED, file=sys.stderr)
            return 130
        print(f"obsflow: error: {cause}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
