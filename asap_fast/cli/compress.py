"""``asap compress`` (stages 1a + 1b + 2 in one run)."""

from __future__ import annotations

import sys
from dataclasses import asdict

from asap_fast.cli.common import (
    add_io,
    add_run_options,
    add_shard_option,
    add_stage2_options,
    positive_int,
    print_summary,
    prune_config,
    run_options,
    scorer_spec,
    subparser,
)
from asap_fast.cli.llm_options import (
    add_backend_options,
    add_validation_options,
    backend_manifest,
    make_backend,
)


def add(subparsers) -> None:
    from asap_fast.stage1.prompts import PROMPT_CHOICES
    from asap_fast.stage1.stages import COARSE_PARAMS, DIRECT_PARAMS

    p = subparser(
        subparsers, "compress",
        help="stages 1a + 1b + 2 in one run: anchor, coarse LLM pruning, surprisal refining",
        description=(
            "Read IN (rows with 'prompt' and 'generation'); for each batch write the direct thought (1a), "
            "compress the thinking with the LLM anchored on it and validate the reply with align_steps (1b), "
            "then drop the least surprising steps of the coarse thinking until it fits the budget (2). Writes "
            "OUT with every input field plus the fields of `asap direct`, `asap coarse` and `asap fine`. A row "
            "rejected by any stage goes to the rejects file with that stage's name. --skip-coarse runs stage 2 "
            "alone on the original thinking (the paper's 'without coarse pruning' ablation; no LLM needed). "
            "Re-running with the same OUT and options resumes; LLM replies already received are replayed from "
            "OUT's reply cache."
        ),
        example="asap compress traces.jsonl out/asap.jsonl --llm openai:deepseek-chat --api-base http://localhost:8000/v1",
    )
    add_io(p)
    p.add_argument("--skip-coarse", action="store_true",
                   help="skip stage 1 (no LLM): prune the generation's original thinking with stage 2 only")
    add_backend_options(p, required=False)
    g = p.add_argument_group("stage 1 decoding, prompts and validation")
    g.add_argument("--direct-temperature", type=float, default=DIRECT_PARAMS.temperature, metavar="T",
                   help=f"stage 1a temperature (default: {DIRECT_PARAMS.temperature:g}, the paper's)")
    g.add_argument("--coarse-temperature", type=float, default=COARSE_PARAMS.temperature, metavar="T",
                   help=f"stage 1b temperature (default: {COARSE_PARAMS.temperature:g}, the paper's)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (default: 1)")
    g.add_argument("--max-tokens", type=positive_int, default=DIRECT_PARAMS.max_tokens, metavar="N",
                   help=f"completion tokens per request at most (default: {DIRECT_PARAMS.max_tokens})")
    g.add_argument("--seed", type=int, default=None, metavar="N", help="sampling seed passed to the backend")
    g.add_argument("--prompt", choices=PROMPT_CHOICES, default="auto",
                   help="stage 1a prompt: code, math, or auto = each row's 'kind' (default: auto)")
    g.add_argument("--direct-template", metavar="FILE", help="custom stage 1a template ({question}, {answer_code}/{answer})")
    g.add_argument("--coarse-template", metavar="FILE", help="custom stage 1b template ({anchor}, {think})")
    add_validation_options(g)
    add_stage2_options(p)
    r = add_run_options(p, batch=64, batch_help="rows per batch through all three stages (default: 64)")
    add_shard_option(r)
    p.set_defaults(func=run)


def run(args) -> int:
    from asap_fast.cli.llm_options import template_manifest
    from asap_fast.pipeline.compress import CompressStage
    from asap_fast.pipeline.engine import check_resumable, run_corpus
    from asap_fast.pipeline.records import check_input
    from asap_fast.pipeline.shards import shard_plan
    from asap_fast.stage1.llm import LLMError, SamplingParams
    from asap_fast.stage1.prompts import load_template
    from asap_fast.stage1.stages import CoarseStage, DirectStage
    from asap_fast.stage2.fine import FineStage

    check_input(args.input)
    if not args.skip_coarse and not args.llm:
        raise ValueError("--llm is required (or --skip-coarse to run stage 2 alone)")
    # the ablation prunes the original thinking, whatever the row holds
    config = prune_config(args, think_field="think" if args.skip_coarse else None)
    spec = scorer_spec(args)
    rows, meta = shard_plan(args.input, args.shard)
    manifest = {"skip_coarse": args.skip_coarse}
    backend = direct = coarse = None
    if not args.skip_coarse:
        if not 0.0 <= args.threshold <= 1.0:
            raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}")
        direct_template = load_template(args.direct_template, "direct") if args.direct_template else None
        coarse_template = load_template(args.coarse_template, "coarse") if args.coarse_template else None
        common = dict(top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed)
        direct_params = SamplingParams(temperature=args.direct_temperature, **common)
        coarse_params = SamplingParams(temperature=args.coarse_temperature, **common)
        manifest.update(backend_manifest(args), direct_sampling=asdict(direct_params),
                        coarse_sampling=asdict(coarse_params), prompt=args.prompt,
                        direct_template=template_manifest(args.direct_template),
                        coarse_template=template_manifest(args.coarse_template), threshold=args.threshold,
                        metric=args.metric, max_attempts=args.max_attempts, snap_to_original=args.snap_to_original)
    manifest.update(scorer=spec.manifest(), prune=config.manifest())
    check_resumable(args.input, args.output, stage="compress", manifest_options=manifest, shard=args.shard,
                    overwrite=args.overwrite)  # before the LLM and the scorer load
    if not args.skip_coarse:
        backend = make_backend(args, args.output)
        direct = DirectStage(backend, direct_params, direct_template, args.reject_failed, prompt=args.prompt)
        coarse = CoarseStage(backend, coarse_params, coarse_template, args.reject_failed, threshold=args.threshold,
                             metric=args.metric, max_attempts=args.max_attempts, snap=args.snap_to_original)
    try:
        fine = FineStage(spec.load(quiet=args.quiet, stage="compress"), config)
        stage = CompressStage(fine, direct, coarse)
        summary = run_corpus(args.input, args.output, stage="compress", process=stage.process,
                             options=run_options(args), manifest_options=manifest,
                             required=("prompt", "generation"), rows=rows, shard=args.shard, meta=meta)
    except LLMError as e:
        print(f"asap compress: error: {e}", file=sys.stderr)
        if not args.quiet:
            print("  rows finished before the error are kept; re-run the same command to resume", file=sys.stderr)
        return 1
    finally:
        if backend is not None:
            backend.close()
    print_summary(summary, args.quiet)
    if not args.quiet and backend is not None:
        print(f"  {backend.stats.line(backend.name)}", file=sys.stderr)
    return 0
