"""The ``asap`` command line: one entry point, a subcommand per stage.

Each subcommand lives in a function ``add_<name>(subparsers)`` that registers its parser and sets
``func``; later stages add theirs the same way.
"""

from __future__ import annotations

import argparse
import sys

from asap_fast import __version__
from asap_fast.pipeline.compress import add_compress
from asap_fast.pipeline.engine import RowError, run_corpus
from asap_fast.cli.eval import add_eval
from asap_fast.report.html import add_report
from asap_fast.pipeline.scale import add_merge
from asap_fast.sft.train import add_sft
from asap_fast.stage1.stages import add_coarse, add_direct
from asap_fast.stage2.fine import add_fine
from asap_fast.core.traces import TraceError, parse_trace, split_steps_batch

PATH_HELP = "a .jsonl, .jsonl.gz or .parquet file, or any other path as a datasets save_to_disk directory"


def add_split(subparsers) -> None:
    p = subparsers.add_parser(
        "split",
        help="parse traces and split their thinking into steps (the C++ core over a corpus)",
        description=(
            "Read IN (rows with a 'generation' field), parse each generation into "
            "think / solution / code and split the thinking into the paper's steps. Writes OUT with "
            "every input field plus think, solution (the text after </think>), code, steps and "
            "n_steps; rows that cannot be parsed go to OUT.rejects.jsonl with their id, stage and a "
            "one-line error. Re-running with the same OUT resumes after the last committed row."
        ),
    )
    p.add_argument("input", metavar="IN", help=PATH_HELP)
    p.add_argument("output", metavar="OUT", help=PATH_HELP)
    p.add_argument(
        "--task",
        choices=("auto", "code", "math"),
        default="auto",
        help="code traces need a ```python block after </think>; 'auto' reads each row's 'kind' "
        "field and treats rows without one as code (default: auto)",
    )
    p.add_argument("--workers", type=int, default=0, help="C++ threads for splitting; 0 = all cores (default)")
    p.add_argument("--batch", type=int, default=256, help="rows split per C++ call (default: 256)")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    p.set_defaults(func=run_split)


def run_split(args) -> int:
    def process(rows):
        results, thinks = [], []
        for row in rows:
            kind = row.record.get("kind", "code") if args.task == "auto" else args.task
            try:
                trace = parse_trace(row.record["generation"], require_code=kind == "code")
            except TraceError as e:
                results.append(RowError(str(e)))
                continue
            results.append({**row.record, "think": trace.think, "solution": trace.answer, "code": trace.code})
            thinks.append(trace.think)
        steps = iter(split_steps_batch(thinks, workers=args.workers))
        for result in results:
            if isinstance(result, dict):
                result["steps"] = next(steps)
                result["n_steps"] = len(result["steps"])
        return results

    summary = run_corpus(args.input, args.output, stage="split", process=process, batch_size=args.batch,
                         quiet=args.quiet)
    report(summary, args)
    return 0


def report(summary, args) -> None:
    """The final summary line (and reject reasons) on stderr."""
    if args.quiet:
        return
    print(summary.line(), file=sys.stderr)
    for reason, count in summary.reasons.most_common():
        print(f"  rejected {count}: {reason}", file=sys.stderr)
    from asap_fast.pipeline.records import rejects_path

    print(f"  output: {args.output}  rejects: {rejects_path(args.output)}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asap",
        description="ASAP chain-of-thought compression (anchor-guided, surprisal-based pruning).",
    )
    parser.add_argument("--version", action="version", version=f"asap-fast {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_split(subparsers)
    add_direct(subparsers)
    add_coarse(subparsers)
    add_fine(subparsers)
    add_compress(subparsers)
    add_merge(subparsers)
    add_report(subparsers)
    add_sft(subparsers)
    add_eval(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"asap {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
