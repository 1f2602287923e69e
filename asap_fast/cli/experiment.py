"""``asap experiment``."""

from __future__ import annotations

import contextlib
import io
import sys

from asap_fast.cli.common import subparser


def add(subparsers) -> None:
    p = subparser(
        subparsers, "experiment",
        help="the paper's experiment in one command: compress with each method, fine-tune, evaluate, one table",
        description=(
            "Read CONFIG (YAML: the traces, the scorer, the methods with their options and budgets, the SFT "
            "recipe, the benchmarks and the evaluation backend; see configs/experiments/) and run its plan: "
            "compress the traces with each method (asap compress), fine-tune the student on each result "
            "(asap sft, under accelerate launch when the config names an accelerate file), evaluate the "
            "untrained student and every fine-tuned model on each benchmark (asap eval), then write "
            "DIR/results.md, DIR/results.csv and DIR/results.html. Each step runs in its own process and "
            "leaves its outputs, log and manifest in DIR/<step>/. A re-run reuses every finished step whose "
            "command and inputs are unchanged and says why it runs the others; a failed step stops the run "
            "with one line naming the step and its log."
        ),
        example="asap experiment configs/experiments/cpu-smoke.yaml --out runs/smoke\n"
                "asap experiment configs/experiments/cpu-smoke.yaml --out runs/smoke --dry-run",
    )
    p.add_argument("config", metavar="CONFIG", help="the experiment's YAML file")
    p.add_argument("--out", required=True, metavar="DIR", help="directory of the steps' artifacts and the results")
    p.add_argument("--dry-run", action="store_true", help="print the plan (each step, whether it runs and why, "
                                                          "its command) and exit")
    p.add_argument("--only", metavar="STEP", help="run this step alone (e.g. compress/asap, eval/base/eval-mini, "
                                                  "results); the steps it reads must be finished")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    p.set_defaults(func=run)


def validate_step(step) -> None:
    """Check a step's command against the subcommand's own parser before anything runs, so that a
    misspelled option fails at once, naming the config key's step, not after an hour of compression."""
    if step.kind not in ("compress", "sft", "eval"):
        return
    from asap_fast.cli import build_parser

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            build_parser().parse_args(step.command())
    except SystemExit:
        lines = [ln for ln in stderr.getvalue().splitlines() if ln.strip()]
        detail = lines[-1].split(": error: ", 1)[-1] if lines else "invalid options"
        raise ValueError(f"step {step.name}: asap {step.command()[0]} refuses its options: {detail}") from None


def run(args) -> int:
    from asap_fast.experiment import StepFailed, load_experiment, run_experiment
    from asap_fast.experiment.runner import StepInterrupted

    exp = load_experiment(args.config)
    try:
        run_experiment(exp, args.out, only=args.only, dry_run=args.dry_run, quiet=args.quiet, validate=validate_step)
    except StepFailed as e:
        print(f"asap experiment: {e}", file=sys.stderr)
        return 1
    except StepInterrupted as e:
        print(f"asap experiment: {e}", file=sys.stderr)
        return 130
    return 0
