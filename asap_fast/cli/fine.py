"""``asap fine``."""

from __future__ import annotations

import functools

from asap_fast.cli.common import (
    add_io,
    add_ray_options,
    add_run_options,
    add_shard_option,
    add_stage2_options,
    print_summary,
    prune_config,
    ray_process,
    report_complete,
    run_options,
    scorer_spec,
    subparser,
)


def add(subparsers) -> None:
    p = subparser(
        subparsers, "fine",
        help="stage 2: drop the least surprising steps until each thinking fits the budget",
        description=(
            "Read IN (rows with 'prompt' and 'generation', and 'coarse_think' after `asap coarse`), score the "
            "first token of every step with a causal LM in one pass over prompt + '\\n<think>\\n' + the steps, "
            "and drop steps in ascending surprisal until the thinking fits the budget. Writes OUT with every "
            "input field plus pruned_think, step_surprisal (nats; null where nothing precedes a step), "
            "kept_steps, tokens_before, tokens_after and messages (the SFT conversation). Bad rows, and rows "
            "whose budget would remove every step, go to the rejects file with a reason. Re-running with the "
            "same OUT resumes after the last committed row when the input and every option that changes the "
            "output are the same (OUT.manifest.json records them); --overwrite starts afresh."
        ),
        example="asap fine traces.jsonl out/fine.jsonl --model deepseek-ai/DeepSeek-R1-Distill-Qwen-7B --budget 4096",
    )
    add_io(p)
    add_stage2_options(p)
    g = add_run_options(p, batch=8, batch_help="rows per scoring call; each trace is scored in its own forward "
                                               "pass, so this changes no score (default: 8)")
    add_shard_option(g)
    add_ray_options(g)
    p.set_defaults(func=run)


def run(args) -> int:
    from asap_fast.pipeline.engine import check_resumable, run_corpus
    from asap_fast.pipeline.records import check_input
    from asap_fast.pipeline.shards import shard_plan
    from asap_fast.stage2.fine import make_fine_stage

    check_input(args.input)  # before the model loads
    config, spec = prune_config(args), scorer_spec(args)
    rows, meta = shard_plan(args.input, args.shard)
    manifest = {"scorer": spec.manifest(), "prune": config.manifest()}
    done = check_resumable(args.input, args.output, stage="fine", manifest_options=manifest, shard=args.shard,
                           overwrite=args.overwrite)  # before the model loads
    if done is not None:
        report_complete("fine", args.output, done)
        return 0
    process, batch = ray_process(args, functools.partial(make_fine_stage, spec, config, args.quiet))
    summary = run_corpus(args.input, args.output, stage="fine", process=process, options=run_options(args, batch),
                         manifest_options=manifest, required=("prompt", "generation"), rows=rows,
                         shard=args.shard, meta=meta)
    print_summary(summary, args.quiet)
    return 0
