"""``asap coarse`` (stage 1b)."""

from __future__ import annotations

from dataclasses import asdict

from asap_fast.cli.common import add_io, add_run_options, subparser
from asap_fast.cli.llm_options import (
    add_backend_options,
    add_decoding_options,
    add_validation_options,
    run_llm_stage,
    sampling,
    template_manifest,
)


def add(subparsers) -> None:
    from asap_fast.stage1.stages import COARSE_PARAMS

    p = subparser(
        subparsers, "coarse",
        help="stage 1b: compress each row's thinking with an LLM, guided by its direct thought",
        description=(
            "Read IN (rows with 'generation' and the 'direct_thought' of `asap direct`), ask the LLM to compress "
            "the thinking using the direct thought as the anchor (the paper's prompt; temperature 1, top_p 1, "
            "max_tokens 16384), strip ``` fences from the reply and accept it only when its blank-line sections "
            "match, in order, original sections (align_steps: similarity >= --threshold). Rejected replies are "
            "re-requested up to --max-attempts times. Writes OUT with every input field plus 'coarse_think', "
            "'coarse_alignment' (the original section index of each kept section) and 'coarse_attempts'; rows "
            "without a valid compression go to OUT.rejects.jsonl with the reason. Resumes like `asap direct`."
        ),
        example="asap coarse out/direct.jsonl out/coarse.jsonl --llm openai:deepseek-chat --api-base http://localhost:8000/v1",
    )
    add_io(p)
    add_backend_options(p)
    add_decoding_options(p, COARSE_PARAMS, coarse=True)
    g = p.add_argument_group("prompt")
    g.add_argument("--template", metavar="FILE",
                   help="custom prompt template with the placeholders {anchor} (the row's direct_thought) and "
                   "{think} (the thinking to compress)")
    add_validation_options(p.add_argument_group("validation"))
    add_run_options(p, batch=None, batch_help="rows per corpus batch: their requests run together and are committed "
                    "together (default: max(64, 4 x concurrency) for openai:, 4 x gen-batch for hf:, 1024 for vllm:)")
    p.set_defaults(func=run)


def coarse_manifest(args, params, template_path) -> dict:
    return {"sampling": asdict(params),
            "template": template_manifest(template_path), "threshold": args.threshold, "metric": args.metric,
            "max_attempts": args.max_attempts, "snap_to_original": args.snap_to_original}


def run(args) -> int:
    from asap_fast.pipeline.records import check_input
    from asap_fast.stage1.prompts import load_template
    from asap_fast.stage1.stages import CoarseStage

    check_input(args.input)
    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold}")
    template = load_template(args.template, "coarse") if args.template else None
    params = sampling(args)

    def make_stage(backend):
        return CoarseStage(backend, params, template, args.reject_failed, threshold=args.threshold,
                           metric=args.metric, max_attempts=args.max_attempts, snap=args.snap_to_original)

    return run_llm_stage(args, "coarse", make_stage, ("generation",), coarse_manifest(args, params, args.template))
