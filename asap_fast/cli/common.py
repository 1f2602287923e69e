"""What several subcommands share: argument types, option groups, and the typed configs built from
them. The only layer that knows argparse is this package."""

from __future__ import annotations

import argparse
import sys

PATH_HELP = "a .jsonl, .jsonl.gz or .parquet file, or any other path as a datasets save_to_disk directory"


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (a fraction of each thinking's tokens), got {text}")
    return value


def shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    index, sep, count = str(text).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"a shard is i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return i, n


def subparser(subparsers, name: str, *, help: str, description: str, example: str) -> argparse.ArgumentParser:
    """A subcommand parser whose --help ends with a short example."""
    return subparsers.add_parser(name, help=help, description=description,
                                 epilog="example:\n  " + example.strip().replace("\n", "\n  "),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def add_io(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN", help=PATH_HELP)
    p.add_argument("output", metavar="OUT", help=PATH_HELP + "; re-running with the same OUT resumes")


def add_run_options(p: argparse.ArgumentParser, *, batch: int | None, batch_help: str) -> argparse._ArgumentGroup:
    g = p.add_argument_group("run")
    g.add_argument("--batch", type=positive_int, default=batch, metavar="N", help=batch_help)
    g.add_argument("--commit-seconds", type=float, default=2.0, metavar="S",
                   help="finished rows are made durable at most this often, and at the end (default: 2)")
    g.add_argument("--overwrite", action="store_true",
                   help="start OUT afresh (deleting it, its rejects, progress and manifest) instead of "
                        "resuming; needed when the input or an option that changes the output differs")
    g.add_argument("--quiet", action="store_true", help="print only errors")
    return g


def run_options(args, batch: int | None = None):
    from asap_fast.pipeline.engine import RunOptions

    return RunOptions(batch=batch or args.batch, commit_seconds=args.commit_seconds, quiet=args.quiet,
                      overwrite=args.overwrite)


def add_shard_option(g) -> None:
    g.add_argument("--shard", type=shard, metavar="I/N",
                   help="process only shard I of N (0-based): the contiguous input rows [I*rows//N, "
                        "(I+1)*rows//N). Each shard writes its own OUT and resumes on its own; `asap merge` "
                        "concatenates the finished shards into the unsharded output")


def add_ray_options(g) -> None:
    g.add_argument("--ray", action="store_true",
                   help="score through Ray Data: one scorer actor per GPU of the Ray cluster ($RAY_ADDRESS, "
                        "else a local runtime), or --ray-actors CPU actors. Output and resume are those of a "
                        "run without Ray (needs the 'ray' extra)")
    g.add_argument("--ray-actors", type=int, metavar="N",
                   help="with --ray: N scorer actors on CPU (default: one per GPU; 1 on CPU)")
    g.add_argument("--ray-chunk", type=int, default=4096, metavar="N",
                   help="with --ray: rows per Ray Data execution; each is committed when done, and its "
                        "actors load the scorer once (default: 4096)")


def ray_process(args, make) -> tuple:
    """(process, rows per engine batch) for run_corpus: the stage ``make()`` builds, on Ray Data actors
    with --ray (``make`` is pickled to them), else in this process."""
    if not args.ray:
        return make().process, args.batch
    from asap_fast.pipeline.ray import RayProcessor

    if args.ray_chunk < 1:
        raise ValueError(f"--ray-chunk must be >= 1, got {args.ray_chunk}")
    return RayProcessor(make, actors=args.ray_actors, batch=args.batch, device=args.device), args.ray_chunk


def add_stage2_options(p: argparse.ArgumentParser) -> None:
    """The scorer and pruning options shared by `asap fine` and `asap compress`."""
    from asap_fast.stage2.fine import DTYPES, MODES, TASKS, THINK_FIELDS

    g = p.add_argument_group("stage 2 (surprisal refining)")
    g.add_argument("--model", metavar="PATH",
                   help="causal LM that scores first tokens (local directory or hub id; the paper uses "
                        "DeepSeek-R1-Distill-Qwen-7B). Default: the small demo scorer bundled with the package")
    budget = g.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=positive_int, default=4096, metavar="N",
                        help="token budget of the pruned thinking, >= 1 (default: 4096, the paper's)")
    budget.add_argument("--ratio", type=ratio, metavar="R",
                        help="budget as a fraction in (0, 1] of each thinking's own tokens, int(R * tokens)")
    g.add_argument("--mode", choices=MODES, default="global",
                   help="global: score once and drop the least surprising steps (the reference); "
                        "iterative: re-score the steps after each removal (default: global)")
    g.add_argument("--steps-per-round", type=positive_int, default=1, metavar="K",
                   help="iterative mode: steps removed per re-scoring (1 = exact definition; more is "
                        "faster and approximate) (default: 1)")
    g.add_argument("--think-field", choices=THINK_FIELDS, default="auto",
                   help="what to prune: auto = coarse_think when a row has it, else the generation's "
                        "thinking (default: auto)")
    g.add_argument("--task", choices=TASKS, default="auto",
                   help="code rows need a python block (```python, ```Python or a plain ```, closed) after </think>; "
                        "auto reads each row's 'kind' "
                        "(default: auto)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    g.add_argument("--dtype", choices=DTYPES, help="model dtype (default: bfloat16 on CUDA, float32 on CPU)")
    g.add_argument("--max-length", type=positive_int, metavar="N",
                   help="longest trace in tokens; longer ones are rejected (default: the model's context)")


def prune_config(args, *, think_field: str | None = None):
    from asap_fast.stage2.fine import PruneConfig

    return PruneConfig(budget=None if args.ratio is not None else args.budget, ratio=args.ratio, mode=args.mode,
                       steps_per_round=args.steps_per_round, think_field=think_field or args.think_field,
                       task=args.task)


def scorer_spec(args):
    from asap_fast.stage2.fine import ScorerSpec

    return ScorerSpec(model=args.model, device=args.device, dtype=args.dtype, max_length=args.max_length)


def print_summary(summary, quiet: bool) -> None:
    if not quiet:
        for line in summary.lines():
            print(line, file=sys.stderr)


def report_complete(stage: str, output, rows: int) -> None:
    """What a re-run of a finished run says instead of loading a model or starting a backend."""
    print(f"asap {stage}: {output} is already complete: {rows} rows (nothing to do; --overwrite starts afresh)",
          file=sys.stderr)
