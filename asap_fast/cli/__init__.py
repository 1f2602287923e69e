"""The ``asap`` command line: one entry point, a module per subcommand.

This package is the only place argparse lives: each subcommand module has ``add(subparsers)``,
which registers its parser, and ``run(args)``, which turns the options into the library's typed
configs and calls it. Every failure reaches the user as one line; ``--debug`` (or ASAP_DEBUG=1)
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys

from asap_fast import __version__
from asap_fast.cli import (
    bench,
    coarse,
    compress,
    direct,
    eval,
    experiment,
    fine,
    merge,
    report,
    sft,
    split,
)

COMMANDS = (split, direct, coarse, fine, compress, merge, report, sft, eval, experiment, bench)
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asap",
        description="ASAP chain-of-thought compression (anchor-guided, surprisal-based pruning).",
    )
    parser.add_argument("--version", action="version", version=f"asap-fast {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of one line (also ASAP_DEBUG=1)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("ASAP_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except BaseException as e:  # noqa: BLE001 - every failure becomes one line (or a traceback with --debug)
        if debug or isinstance(e, SystemExit):
            raise
        if isinstance(e, BrokenPipeError):  # `asap ... | head`: the reader left; not an error of ours
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 141
        message, code = describe(e)
        print(f"asap {args.command}: {message}", file=sys.stderr)
        return code


def describe(e: BaseException) -> tuple[str, int]:
    """(one line for the user, exit status) of an error that ended a command."""
    from asap_fast.pipeline.engine import Interrupted, OutputError
    from asap_fast.pipeline.records import InputDamaged

    if isinstance(e, Interrupted):
        return str(e), EXIT_INTERRUPTED
    if isinstance(e, KeyboardInterrupt):
        return "interrupted before any row was committed; run the same command again to start", EXIT_INTERRUPTED
    from asap_fast.stage1.llm import LLMError

    if isinstance(e, LLMError):
        return f"error: {_one_line(e)}", 1
    if isinstance(e, InputDamaged):
        return f"error: {e}; the rows before the damage were written", 1
    if isinstance(e, OutputError):
        return f"error: {e}", 1
    if isinstance(e, (FileNotFoundError, ValueError, ImportError)):
        return f"error: {_one_line(e)}", 2
    if isinstance(e, OSError):
        where = f" {e.filename}" if e.filename else ""
        return f"error: cannot use{where}: {e.strerror or _one_line(e)}", 1
    if isinstance(e, MemoryError):
        return "error: out of memory", 1
    return f"error: {type(e).__name__}: {_one_line(e)} (run with --debug for the traceback)", 1


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__
