"""``asap direct`` (stage 1a)."""

from __future__ import annotations

from dataclasses import asdict

from asap_fast.cli.common import add_io, add_run_options, subparser
from asap_fast.cli.llm_options import (
    add_backend_options,
    add_decoding_options,
    run_llm_stage,
    sampling,
    template_manifest,
)


def add(subparsers) -> None:
    from asap_fast.stage1.prompts import PROMPT_CHOICES
    from asap_fast.stage1.stages import DIRECT_PARAMS

    p = subparser(
        subparsers, "direct",
        help="stage 1a: write each row's direct thought (the anchor) with an LLM",
        description=(
            "Read IN (rows with 'prompt' and 'generation'), ask the LLM for a short step-by-step derivation of "
            "the row's known answer (the paper's 'direct thought': temperature 0, top_p 1, max_tokens 16384), "
            "and write OUT with every input field plus 'direct_thought'. Rows that cannot be processed go to "
            "OUT.rejects.jsonl with their id, stage and a one-line error. Re-running with the same OUT resumes "
            "after the last committed row; replies already received are replayed from OUT's reply cache, not "
            "requested again."
        ),
        example="asap direct traces.jsonl out/direct.jsonl --llm openai:deepseek-chat --api-base http://localhost:8000/v1",
    )
    add_io(p)
    add_backend_options(p)
    add_decoding_options(p, DIRECT_PARAMS, coarse=False)
    g = p.add_argument_group("prompt")
    g.add_argument("--prompt", choices=PROMPT_CHOICES, default="auto",
                   help="which of the paper's prompts: code, math, or auto = each row's 'kind' field, code when "
                   "absent (default: auto). Code rows anchor on the first python block after </think>, as captured; math "
                   "rows on the text after </think>, or the row's 'answer' field when nothing follows it")
    g.add_argument("--template", metavar="FILE",
                   help="custom prompt template for every row, with the placeholders {question} and {answer_code} "
                   "or {answer} (both stand for the row's answer)")
    add_run_options(p, batch=None, batch_help="rows per corpus batch: their requests run together and are committed "
                    "together (default: max(64, 4 x concurrency) for openai:, 4 x gen-batch for hf:, 1024 for vllm:)")
    p.set_defaults(func=run)


def run(args) -> int:
    from asap_fast.pipeline.records import check_input
    from asap_fast.stage1.prompts import load_template
    from asap_fast.stage1.stages import DirectStage

    check_input(args.input)
    template = load_template(args.template, "direct") if args.template else None
    params = sampling(args)
    manifest = {"sampling": asdict(params), "prompt": args.prompt, "template": template_manifest(args.template)}
    return run_llm_stage(args, "direct",
                         lambda backend: DirectStage(backend, params, template, args.reject_failed, prompt=args.prompt),
                         ("prompt", "generation"), manifest)
