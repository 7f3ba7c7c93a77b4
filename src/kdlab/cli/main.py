"""The ``kdlab`` command line: train, distill, eval, export, list, bench, quickstart, compare,
analyze, cache-teacher, profile, tune.

Each subcommand lives in :mod:`kdlab.cli.commands` and exposes ``add_parser(subparsers)`` and
``run(args) -> int``. Mistakes a user can make (:class:`~kdlab.errors.UserError`, argparse
misuse) end with one line ``kdlab: error: ...`` on stderr and exit status 2, and so do the
machine's failures that :mod:`kdlab.cli.commands.failures` knows (a full disk, a read-only or
missing folder, out of memory, a non-UTF-8 file, a dead torchrun peer); Ctrl-C exits with
130. Any other exception keeps its traceback: it is a bug to report.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from kdlab.cli.commands import (
    analyze,
    bench,
    cache_teacher,
    compare,
    evaluate,
    export,
    failures,
    listing,
    profile,
    quickstart,
    training,
    tune,
)
from kdlab.core import plugins
from kdlab.core.version import __version__
from kdlab.errors import UserError

COMMANDS = (training, evaluate, export, listing, bench, quickstart, compare, analyze,
            cache_teacher, profile, tune)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="kdlab",
        description="Knowledge distillation for vision models, built around FCFD.",
    )
    parser.add_argument("--version", action="version", version=f"kdlab {__version__}")
    parser.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="import a plugin module that registers methods, models or datasets (repeatable; "
             "a run records it for eval, export and --resume)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error, 130 Ctrl-C)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse prints "kdlab: error: ..." itself
        return int(e.code) if isinstance(e.code, int) else 2
    args.argv = argv
    failures.watch_launcher()
    try:
        args.plugins = plugins.startup(args.imports)
        return int(args.run(args) or 0)
    except UserError as e:
        message = " ".join(str(e).split())  # always one line
        print(f"kdlab: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `kdlab list models | head`: the reader left; not an error
        # Point stdout at /dev/null so that the interpreter's final flush does not fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # a full disk, a read-only folder, no memory, ...: by kind
        message = failures.describe(e, getattr(args, "memory_hint", None))
        if message is None:
            raise  # a bug: keep the traceback
        print(f"kdlab: error: {' '.join(message.split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
