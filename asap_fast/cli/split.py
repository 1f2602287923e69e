"""``asap split``."""

from __future__ import annotations

from asap_fast.cli.common import (
    add_io,
    add_run_options,
    print_summary,
    run_options,
    subparser,
)


def add(subparsers) -> None:
    p = subparser(
        subparsers, "split",
        help="parse traces and split their thinking into steps (the C++ core over a corpus)",
        description=(
            "Read IN (rows with a 'generation' field), parse each generation into think / solution / code "
            "and split the thinking into the paper's steps. Writes OUT with every input field plus think, "
            "solution (the text after </think>), code, steps and n_steps; rows that cannot be parsed go to "
            "OUT.rejects.jsonl with their id, stage and a one-line error. Re-running with the same OUT "
            "resumes after the last committed row."
        ),
        example="asap split traces.jsonl out/steps.jsonl --task code",
    )
    add_io(p)
    p.add_argument("--task", choices=("auto", "code", "math"), default="auto",
                   help="code traces need a python block (```python, ```Python or a plain ```, closed) after </think>; "
                        "'auto' reads each row's 'kind' "
                        "field and treats rows without one as code (default: auto)")
    p.add_argument("--workers", type=int, default=0, help="C++ threads for splitting; 0 = all cores (default)")
    add_run_options(p, batch=256, batch_help="rows split per C++ call (default: 256)")
    p.set_defaults(func=run)


def run(args) -> int:
    from asap_fast.pipeline.engine import run_corpus
    from asap_fast.pipeline.split import SplitStage

    stage = SplitStage(task=args.task, workers=args.workers)
    summary = run_corpus(args.input, args.output, stage="split", process=stage.process, options=run_options(args),
                         manifest_options=stage.manifest())
    print_summary(summary, args.quiet)
    return 0
